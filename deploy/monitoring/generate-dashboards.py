#!/usr/bin/env python3
"""Writes the Grafana dashboards of IoT Cloud (dashboards/*.json) from the panel definitions below.

    python3 deploy/monitoring/generate-dashboards.py deploy/monitoring/dashboards

Edit the panels here, not the JSON: deploy/packaging-test.sh fails when the JSON differs from what
this program writes, and copies it into the chart (charts/iot-cloud/files/dashboards/) with
`deploy/packaging-test.sh sync`. Only the standard library is used.
"""
import json
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
NS = 'namespace=~"$namespace"'

class Dash:
    def __init__(self, uid, title, desc, ns_metric):
        self.uid, self.title, self.desc, self.ns_metric = uid, title, desc, ns_metric
        self.panels, self.y, self.x, self.rowh, self.id = [], 0, 0, 0, 0
    def nid(self):
        self.id += 1; return self.id
    def row(self, title):
        if self.x: self.y += self.rowh; self.x = 0; self.rowh = 0
        self.panels.append({"type": "row", "title": title, "id": self.nid(), "collapsed": False,
                            "gridPos": {"h": 1, "w": 24, "x": 0, "y": self.y}, "panels": []})
        self.y += 1
    def place(self, w, h):
        if self.x + w > 24: self.y += self.rowh; self.x = 0; self.rowh = 0
        g = {"h": h, "w": w, "x": self.x, "y": self.y}
        self.x += w; self.rowh = max(self.rowh, h)
        return g
    def ts(self, title, desc, targets, unit="short", w=12, h=8, stack=False):
        self.panels.append({
            "type": "timeseries", "title": title, "description": desc, "id": self.nid(),
            "datasource": DS, "gridPos": self.place(w, h),
            "fieldConfig": {"defaults": {"unit": unit, "custom": {"drawStyle": "line", "lineWidth": 1,
                "fillOpacity": 10, "showPoints": "never",
                "stacking": {"mode": "normal" if stack else "none", "group": "A"}}}, "overrides": []},
            "options": {"legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull", "max"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}},
            "targets": [{"datasource": DS, "refId": chr(65 + i), "expr": e, "legendFormat": l}
                        for i, (e, l) in enumerate(targets)]})
    def stat(self, title, desc, expr, unit="short", w=6, h=4, decimals=None):
        d = {"unit": unit, "color": {"mode": "thresholds"},
             "thresholds": {"mode": "absolute", "steps": [{"color": "green", "value": None}]}}
        if decimals is not None: d["decimals"] = decimals
        self.panels.append({
            "type": "stat", "title": title, "description": desc, "id": self.nid(), "datasource": DS,
            "gridPos": self.place(w, h), "fieldConfig": {"defaults": d, "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "justifyMode": "auto", "textMode": "auto"},
            "targets": [{"datasource": DS, "refId": "A", "expr": expr, "instant": False}]})
    def json(self):
        return {
            "uid": self.uid, "title": self.title, "description": self.desc,
            "tags": ["iot-cloud"], "timezone": "utc", "editable": True, "graphTooltip": 1,
            "schemaVersion": 39, "version": 1, "refresh": "30s",
            "time": {"from": "now-1h", "to": "now"}, "fiscalYearStartMonth": 0, "liveNow": False,
            "annotations": {"list": []}, "links": [{"title": "IoT Cloud", "type": "dashboards",
                "tags": ["iot-cloud"], "asDropdown": True, "includeVars": True, "keepTime": True}],
            "templating": {"list": [
                {"name": "datasource", "label": "Data source", "type": "datasource", "query": "prometheus",
                 "current": {}, "hide": 0, "refresh": 1, "regex": "", "options": []},
                {"name": "namespace", "label": "Namespace", "type": "query", "datasource": DS,
                 "query": {"query": f"label_values({self.ns_metric}, namespace)", "refId": "ns"},
                 "definition": f"label_values({self.ns_metric}, namespace)",
                 "includeAll": True, "multi": True, "allValue": ".*", "current": {}, "hide": 0,
                 "refresh": 2, "sort": 1, "regex": "", "options": []}]},
            "panels": self.panels}

def rate(m, by=None, extra=""):
    sel = "{" + NS + extra + "}"
    s = f"rate({m}{sel}[$__rate_interval])"
    return f"sum by ({by}) ({s})" if by else f"sum({s})"

def quantile(q, m, by=None):
    b = f"{by}, le" if by else "le"
    return f"histogram_quantile({q}, sum by ({b}) (rate({m}_bucket{{{NS}}}[$__rate_interval])))"

# ---------------------------------------------------------------------------------------------
p = Dash("iot-cloud-pipeline", "IoT Cloud / Pipeline",
         "Messages through the IoT Cloud pipeline: rates per stage, lag and replicas per device type, dead letters by reason, end-to-end latency, worker health.",
         "iot_operator_reconciles_total")
p.row("Overview")
p.stat("Messages in /s", "MQTT messages the bridge took in.", rate("iot_bridge_messages_received_total"), "reqps", decimals=1)
p.stat("Enriched /s", "Messages the enrichment wrote to the enriched topics (per destination topic).", rate("iot_enrichment_messages_produced_total"), "reqps", decimals=1)
p.stat("Dead letters /s", "Messages sent to the dead-letter topic by the bridge and the enrichment.",
       f'{rate("iot_bridge_messages_deadlettered_total")} + {rate("iot_enrichment_messages_deadlettered_total")}', "reqps", decimals=2)
p.stat("End-to-end latency p95", "From the device timestamp to Kafka acknowledging the enriched message.",
       quantile(0.95, "iot_enrichment_end_to_end_latency_seconds"), "s", decimals=3)
p.row("Rates per stage")
p.ts("Messages per stage", "Each stage of the pipeline, in messages per second.", [
    (rate("iot_simulator_messages_published_total"), "simulator published"),
    (rate("iot_bridge_messages_received_total"), "bridge received"),
    (rate("iot_bridge_messages_produced_total"), "bridge produced (raw)"),
    (rate("iot_enrichment_messages_received_total"), "enrichment received"),
    (rate("iot_enrichment_messages_produced_total"), "enrichment produced"),
    (f'{rate("iot_bridge_messages_deadlettered_total")} + {rate("iot_enrichment_messages_deadlettered_total")}', "dead-lettered"),
], "reqps", w=24)
p.ts("Raw messages per device type", "Messages the bridge wrote to {prefix}.{device_type}.raw.",
     [(rate("iot_bridge_messages_produced_total", "device_type"), "{{device_type}}")], "reqps", stack=True)
p.ts("Enriched messages per device type", "Messages the enrichment wrote, by device type and destination kind.",
     [(rate("iot_enrichment_messages_produced_total", "device_type, kind"), "{{device_type}} {{kind}}")], "reqps")
p.row("MQTT broker")
p.ts("Messages dropped by the broker", "Publishes the MQTT broker dropped because a session's queue or in-flight window was full (its $SYS counter, read by the bridge). Any drop is a loss.",
     [(f'max(increase(iot_mqtt_broker_dropped_messages_total{{{NS}}}[$__rate_interval]))', "dropped")], "short", w=12)
p.ts("Messages held by the broker", "Messages the broker holds (queued for offline or slow sessions, in flight, retained) and their payload bytes.", [
    (f'max(iot_mqtt_broker_stored_messages{{{NS}}})', "messages"),
    (f'max(iot_mqtt_broker_stored_bytes{{{NS}}})', "bytes"),
], "short", w=12)
p.row("Lag and scaling")
p.ts("Consumer lag per device type", "Raw messages the enrichment of each device type has still to process (read by the operator).",
     [(f'max by (device_type) (iot_operator_consumer_lag{{{NS}}})', "{{device_type}}")], "short")
p.ts("Enrichment replicas wanted per device type", "Replicas the operator's scaling policy asks for (fixed or lag-based, capped by the partitions).",
     [(f'max by (device_type) (iot_operator_desired_replicas{{{NS}}})', "{{device_type}}")], "short")
p.row("Dead letters")
p.ts("Dead letters by reason", "Messages sent to {prefix}.deadletter, by stage and reason header.", [
    (rate("iot_bridge_messages_deadlettered_total", "reason"), "bridge {{reason}}"),
    (rate("iot_enrichment_messages_deadlettered_total", "reason"), "enrichment {{reason}}"),
], "reqps", w=24, stack=True)
p.row("Latency")
p.ts("End-to-end latency (device to enriched topic)", "Quantiles of the time from the device timestamp to Kafka acknowledging the enriched message.", [
    (quantile(0.5, "iot_enrichment_end_to_end_latency_seconds"), "p50"),
    (quantile(0.95, "iot_enrichment_end_to_end_latency_seconds"), "p95"),
    (quantile(0.99, "iot_enrichment_end_to_end_latency_seconds"), "p99"),
], "s")
p.ts("Latency device to raw topic (bridge)", "Quantiles of the time from the device timestamp to Kafka acknowledging the bridge's produce.", [
    (quantile(0.5, "iot_bridge_end_to_end_latency_seconds"), "p50"),
    (quantile(0.95, "iot_bridge_end_to_end_latency_seconds"), "p95"),
    (quantile(0.99, "iot_bridge_end_to_end_latency_seconds"), "p99"),
], "s")
p.row("Worker health")
p.ts("In-flight messages", "Messages taken in and not yet acknowledged by Kafka.", [
    (f'sum by (pod) (iot_bridge_in_flight_messages{{{NS}}})', "bridge {{pod}}"),
    (f'sum by (pod) (iot_enrichment_in_flight_messages{{{NS}}})', "enrichment {{pod}}"),
], "short", w=8)
p.ts("Produce retries /s", "Kafka produces that failed and were tried again.", [
    (rate("iot_bridge_produce_retries_total"), "bridge"),
    (rate("iot_enrichment_produce_retries_total"), "enrichment"),
], "reqps", w=8)
p.ts("Connected to brokers / stalled", "Connected: 1 when a worker pod is connected to its brokers. Stalled: 1 while a bridge holds messages and finishes none (IOT_BRIDGE_STALL_SECONDS).", [
    (f'min by (pod) (iot_bridge_connected{{{NS}}})', "bridge {{pod}}"),
    (f'min by (pod) (iot_enrichment_connected{{{NS}}})', "enrichment {{pod}}"),
    (f'max by (pod) (iot_bridge_stalled{{{NS}}})', "stalled {{pod}}"),
], "short", w=8)
p.ts("Registry reloads", "Reloads of the registry file (ConfigMap iot-registry) by result.", [
    (f'sum by (result) (increase(iot_bridge_registry_reloads_total{{{NS}}}[$__rate_interval]))', "bridge {{result}}"),
    (f'sum by (result) (increase(iot_enrichment_registry_reloads_total{{{NS}}}[$__rate_interval]))', "enrichment {{result}}"),
], "short", w=8)
p.ts("Devices online / offline", "Devices by state as the dashboard sees them (status messages and MQTT last wills).", [
    (f'max by (device_type, state) (iot_dashboard_devices{{{NS}}})', "{{device_type}} {{state}}"),
], "short", w=8)
p.ts("Simulator", "Simulated devices connected to MQTT, and MQTT connection errors per second.", [
    (f'sum(iot_simulator_devices_connected{{{NS}}})', "devices connected"),
    (rate("iot_simulator_publish_errors_total"), "connection errors /s"),
], "short", w=8)

# ---------------------------------------------------------------------------------------------
o = Dash("iot-cloud-operator", "IoT Cloud / Operator",
         "The IoT Cloud operator: reconciles of DeviceTypes and Applications, errors by category, durations, registry writes.",
         "iot_operator_reconciles_total")
o.row("Reconciles")
o.stat("Reconciles /s", "All reconciles.", rate("iot_operator_reconciles_total"), "reqps", decimals=2)
o.stat("Reconcile errors (1h)", "Reconcile errors in the last hour.",
       f'sum(increase(iot_operator_reconcile_errors_total{{{NS}}}[1h]))', "short", decimals=0)
o.stat("Reconcile p95", "95th percentile of the reconcile duration.", quantile(0.95, "iot_operator_reconcile_duration_seconds"), "s", decimals=3)
o.stat("Registry writes (1h)", "Writes of the registry ConfigMap in the last hour.",
       f'sum(increase(iot_operator_registry_updates_total{{{NS}}}[1h]))', "short", decimals=0)
o.ts("Reconciles by kind and result", "ok, error (retried with backoff), invalid (waits for a spec change).",
     [(rate("iot_operator_reconciles_total", "kind, result"), "{{kind}} {{result}}")], "reqps")
o.ts("Reconcile errors by kind and category", "Errors by stage category (kube API, Kafka, internal).",
     [(rate("iot_operator_reconcile_errors_total", "kind, category"), "{{kind}} {{category}}")], "reqps")
o.ts("Reconcile duration", "Quantiles of one reconcile's duration, by kind.", [
    (quantile(0.5, "iot_operator_reconcile_duration_seconds", "kind"), "p50 {{kind}}"),
    (quantile(0.95, "iot_operator_reconcile_duration_seconds", "kind"), "p95 {{kind}}"),
    (quantile(0.99, "iot_operator_reconcile_duration_seconds", "kind"), "p99 {{kind}}"),
], "s")
o.ts("Registry ConfigMap writes", "Writes of ConfigMap iot-registry by result.",
     [(f'sum by (result) (increase(iot_operator_registry_updates_total{{{NS}}}[$__rate_interval]))', "{{result}}")], "short")
o.row("Scaling")
o.ts("Consumer lag per device type", "Unprocessed raw messages per device type.",
     [(f'max by (device_type) (iot_operator_consumer_lag{{{NS}}})', "{{device_type}}")], "short")
o.ts("Enrichment replicas wanted", "Replicas the scaling policy asks for, per device type.",
     [(f'max by (device_type) (iot_operator_desired_replicas{{{NS}}})', "{{device_type}}")], "short")

out = sys.argv[1] if len(sys.argv) > 1 else "deploy/monitoring/dashboards"
for d, name in ((p, "iot-cloud-pipeline.json"), (o, "iot-cloud-operator.json")):
    with open(f"{out}/{name}", "w") as f:
        json.dump(d.json(), f, indent=2, ensure_ascii=False)
        f.write("\n")
