// The tab of one Application: its own device types only, the Smart Grid view for smart breakers
// and a generic view (charts and ranges of the declared measurements) for the others.
// An ES module (strict by default), loaded by index.html through app.js.

import {
  h, fmtInt, fmtRate, fmtNum, fmtTime, fmtDateTime, fmtAgo, fmtDeviceTime, withUnit, rangeText,
  fieldLabel, PALETTE, card, panel, statePill, table, emptyRow, MessageList, eventTag, deviceRows,
} from "./widgets.js";
import { LineChart } from "./charts.js";
import { SeriesStore, meanOf, measurementValue } from "./series.js";

// ---- Application tabs ------------------------------------------------------------------------

function fieldsOf(spec, keys) {
  return keys.map((k) => spec.fields.find((f) => f.key === k)).filter(Boolean);
}

function rangeRows(spec, stats, keys) {
  return fieldsOf(spec, keys).map((f) => {
    const s = (stats.fields && stats.fields[f.key]) || {};
    const out = s.last != null && ((f.min != null && s.last < f.min) || (f.max != null && s.last > f.max));
    return h("tr", { "data-field": f.key },
      h("td", { text: fieldLabel(f) }),
      h("td", { class: `num strong ${out ? "warn" : ""}`, text: withUnit(fmtNum(s.last), f.unit) }),
      h("td", { class: "num", text: withUnit(fmtNum(s.min), f.unit) }),
      h("td", { class: "num", text: withUnit(fmtNum(s.mean), f.unit) }),
      h("td", { class: "num", text: withUnit(fmtNum(s.max), f.unit) }),
      h("td", { class: "num muted", text: rangeText(f) }));
  });
}

const BREAKER_RANGES = ["voltage.phase_a", "voltage.phase_b", "voltage.phase_c", "current.phase_a",
  "current.phase_b", "current.phase_c", "power.active", "power.factor", "temperature", "frequency"];

// The seed's Smart Grid view for smart breakers: one chart of voltage, current, active power and
// temperature (each as % of its declared range, so that they share an axis) and their ranges.
class BreakerSection {
  constructor(parent, spec) {
    this.spec = spec;
    this.store = new SeriesStore();
    const chartPanel = panel(`${spec.display_name} · voltage, current, power, temperature`, "wide");
    chartPanel.note.textContent = "mean over all breakers, as % of each declared range (dashed: range limits)";
    const group = (label, color, keys) => {
      const f = fieldsOf(spec, keys)[0] || {};
      return { label, color, keys, min: f.min, max: f.max, unit: f.unit };
    };
    this.groups = [
      group("Voltage (mean of phases)", PALETTE[0], ["voltage.phase_a", "voltage.phase_b", "voltage.phase_c"]),
      group("Current (mean of phases)", PALETTE[1], ["current.phase_a", "current.phase_b", "current.phase_c"]),
      group("Active power", PALETTE[3], ["power.active"]),
      group("Temperature", PALETTE[4], ["temperature"]),
    ];
    this.chart = new LineChart(chartPanel.body, {
      title: "Smart breaker measurements over time",
      height: 250,
      yDomain: [-5, 105],
      refLines: [0, 100],
      yLabel: "% of declared range",
      format: (v) => `${Math.round(v)}%`,
    });
    const ranges = panel(`${spec.display_name} · ranges since the dashboard started`, "wide");
    this.ranges = table(["Measurement", "Latest#", "Min#", "Mean#", "Max#", "Declared range#"]);
    ranges.body.append(this.ranges.el);
    parent.append(chartPanel.el, ranges.el);
  }

  snapshot(from, now, stats) { this.store.clear(); this.update(from, now, stats); }

  update(from, now, stats) {
    this.store.merge(from, stats.series);
    const nowSec = Math.floor(now / 1000);
    this.store.prune(nowSec - 299);
    const series = this.groups.map((g) => {
      const raw = meanOf(g.keys.map((k) => this.store.points(k)));
      const span = g.max != null && g.min != null && g.max > g.min ? g.max - g.min : null;
      const last = raw.length ? raw[raw.length - 1][1] : null;
      return {
        key: g.label,
        label: g.label,
        color: g.color,
        points: span == null ? [] : raw.map(([t, v]) => [t, Math.max(-5, Math.min(105, (100 * (v - g.min)) / span))]),
        value: last == null ? "" : withUnit(fmtNum(last), g.unit),
      };
    });
    this.chart.setData(nowSec, series);
    this.ranges.tbody.replaceChildren(...rangeRows(this.spec, stats, BREAKER_RANGES));
  }

  summaryCells(e) {
    if (e.event_type !== "telemetry") return [];
    const p = e.payload;
    const get = (k) => { const f = this.spec.fields.find((x) => x.key === k); return f ? measurementValue(p, f) : null; };
    const avg = (ks) => { const vs = ks.map(get).filter((v) => v != null); return vs.length ? vs.reduce((a, b) => a + b) / vs.length : null; };
    const w = get("power.active");
    return [
      h("span", { class: "cell num", title: "mean voltage of the phases", text: withUnit(fmtNum(avg(["voltage.phase_a", "voltage.phase_b", "voltage.phase_c"]), 1), "V") }),
      h("span", { class: "cell num", title: "mean current of the phases", text: withUnit(fmtNum(avg(["current.phase_a", "current.phase_b", "current.phase_c"]), 1), "A") }),
      h("span", { class: "cell num", title: "active power", text: w == null ? "–" : withUnit(fmtNum(w / 1000, 2), "kW") }),
      h("span", { class: "cell num", title: "temperature", text: withUnit(fmtNum(get("temperature"), 1), "°C") }),
    ];
  }
}

// Any device type: one chart per declared numeric field with a line per device (at most a few),
// the declared range as dashed lines, and the observed ranges.
class GenericSection {
  constructor(parent, spec) {
    this.spec = spec;
    this.store = new SeriesStore();
    this.colors = new Map();
    const grid = h("div", { class: "grid-charts" });
    this.charts = spec.fields.map((f) => {
      const p = panel(`${fieldLabel(f)}${f.unit ? ` (${f.unit})` : ""}`, "chart-panel");
      p.note.textContent = `declared ${rangeText(f)}`;
      const refLines = [f.min, f.max].filter((v) => v != null);
      const chart = new LineChart(p.body, { title: `${spec.display_name}: ${fieldLabel(f)}`, height: 170, refLines });
      grid.append(p.el);
      return { chart, field: f, note: p.note };
    });
    if (!spec.fields.length) grid.append(h("p", { class: "muted", text: "This device type declares no numeric measurements." }));
    const ranges = panel(`${spec.display_name} · ranges since the dashboard started`, "wide");
    this.ranges = table(["Measurement", "Latest#", "Min#", "Mean#", "Max#", "Declared range#"]);
    ranges.body.append(this.ranges.el);
    parent.append(grid, ranges.el);
  }

  color(device) {
    if (!this.colors.has(device)) this.colors.set(device, PALETTE[this.colors.size % PALETTE.length]);
    return this.colors.get(device);
  }

  snapshot(from, now, stats) { this.store.clear(); this.update(from, now, stats); }

  update(from, now, stats) {
    // Keys are "device\u0000field" so one store holds every device's series.
    const flat = {};
    for (const [device, fields] of Object.entries(stats.device_series || {})) {
      for (const [field, pts] of Object.entries(fields)) flat[`${device}\u0000${field}`] = pts;
    }
    this.store.merge(from, flat);
    const nowSec = Math.floor(now / 1000);
    this.store.prune(nowSec - 299);
    const devices = [...new Set(this.store.keys().map((k) => k.split("\u0000")[0]))].sort();
    for (const { chart, field } of this.charts) {
      const series = devices
        .map((dev) => ({ dev, points: this.store.points(`${dev}\u0000${field.key}`) }))
        .filter((s) => s.points.length)
        .map(({ dev, points }) => ({
          key: dev, label: dev, color: this.color(dev), points,
          value: withUnit(fmtNum(points[points.length - 1][1]), field.unit),
        }));
      chart.setData(nowSec, series);
    }
    const total = stats.devices.total;
    const shown = devices.length;
    for (const c of this.charts) {
      c.note.textContent = `declared ${rangeText(c.field)}${total > shown ? ` · ${shown} of ${total} devices charted` : ""}`;
    }
    this.ranges.tbody.replaceChildren(...rangeRows(this.spec, stats, this.spec.fields.map((f) => f.key)));
  }

  summaryCells(e) {
    if (e.event_type !== "telemetry") return [];
    return this.spec.fields.slice(0, 3).map((f) =>
      h("span", { class: "cell num", title: fieldLabel(f), text: withUnit(fmtNum(measurementValue(e.payload, f)), f.unit) }));
  }
}

class AppView {
  constructor(root, spec) {
    this.spec = spec;
    this.root = root;
    const header = h("section", { class: "app-header" },
      h("div", {},
        h("h1", { text: spec.display_name }),
        h("div", { class: "muted", text: [spec.developer, spec.platform, `v${spec.version}`, spec.category].filter(Boolean).join(" · ") })),
      h("div", { class: "app-topics" },
        h("div", { class: "card-label", text: "Reads only" }),
        spec.device_types.map((t) => h("div", { class: "mono topic", text: t.topic }))));
    const cards = h("div", { class: "cards" });
    this.cards = {
      messages: card("Messages", { id: "app-messages", tone: "indigo" }),
      devices: card("Devices online", { id: "app-devices", tone: "green" }),
      quality: card("Out of range", { id: "app-out-of-range", tone: "amber" }),
      last: card("Last message", { id: "app-last", tone: "slate" }),
    };
    cards.append(...Object.values(this.cards).map((c) => c.el));
    root.append(header, cards);
    this.sections = new Map();
    for (const t of spec.device_types) {
      const wrap = h("div", { class: "type-section", "data-device-type": t.id });
      if (spec.device_types.length > 1) wrap.append(h("h2", { class: "section-title", text: t.display_name }));
      const section = t.view === "smart_breaker" ? new BreakerSection(wrap, t) : new GenericSection(wrap, t);
      this.sections.set(t.id, section);
      root.append(wrap);
    }
    const latest = panel("Latest messages · newest first", "wide");
    this.latest = new MessageList(latest.body, {
      name: "app-latest",
      limit: 10,
      emptyText: "No messages for this application since the dashboard started.",
      summary: (e) => {
        const s = this.sections.get(e.device_type);
        return [
          h("span", { class: "mono muted", title: e.timestamp ? `device time ${fmtDeviceTime(e.timestamp)}` : null, text: fmtTime(e.received_at) }),
          eventTag(e),
          h("span", { class: "mono strong device", text: e.device_id || "" }),
          ...(s ? s.summaryCells(e) : []),
          e.within_ranges === false ? h("span", { class: "tag tag-warn", text: "out of range" }) : "",
        ];
      },
    });
    const devices = panel("Devices");
    this.devicesTable = table(["Device", "Type", "State", "Last seen", "Messages#"], "app-devices");
    devices.body.append(h("div", { class: "scroll" }, this.devicesTable.el));
    root.append(latest.el, devices.el);
  }

  snapshot(d) {
    this.latest.reset(d.latest);
    for (const [id, s] of this.sections) {
      const stats = d.device_types[id];
      if (stats) s.snapshot(d.series_from, d.now, stats);
    }
    this.apply(d);
  }

  update(d) {
    this.latest.add(d.latest);
    for (const [id, s] of this.sections) {
      const stats = d.device_types[id];
      if (stats) s.update(d.series_from, d.now, stats);
    }
    this.apply(d);
  }

  apply(d) {
    this.lastMessageAt = d.latest.length ? d.latest[0].received_at : this.lastMessageAt;
    const types = Object.values(d.device_types);
    const out = types.reduce((n, t) => n + t.out_of_range, 0);
    this.cards.messages.set(fmtRate(d.messages.rate), `${fmtInt(d.messages.total)} since ${fmtTime(d.started_at)}`);
    this.cards.devices.set(`${fmtInt(d.devices.online)} / ${fmtInt(d.devices.total)}`,
      d.devices.offline ? `${fmtInt(d.devices.offline)} offline` : d.devices.total ? "none offline" : "no devices seen yet");
    this.cards.quality.set(fmtInt(out), "messages flagged by the enrichment");
    this.cards.last.set(this.lastMessageAt ? fmtTime(this.lastMessageAt) : "–",
      this.lastMessageAt ? fmtAgo(this.lastMessageAt, Date.now()) : "waiting for data");
    this.devicesTable.tbody.replaceChildren(...deviceRows(d.device_list));
  }
}


export { AppView };
