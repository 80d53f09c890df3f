// The IoT Overview tab: the whole pipeline, every device type.
// An ES module (strict by default), loaded by index.html through app.js.

import {
  h, fmtInt, fmtRate, fmtNum, fmtTime, fmtDateTime, fmtAgo, fmtDeviceTime, withUnit, rangeText,
  fieldLabel, PALETTE, card, panel, statePill, table, emptyRow, MessageList, eventTag, deviceRows,
} from "./widgets.js";
import { LineChart } from "./charts.js";

// ---- Overview --------------------------------------------------------------------------------

class OverviewView {
  constructor(root) {
    this.root = root;
    this.flow = new Map();
    this.registry = null;
    this.now = Date.now();
    const cards = h("div", { class: "cards" });
    this.cards = {
      enriched: card("Enriched", { id: "enriched", tone: "indigo" }),
      raw: card("Raw (bridge)", { id: "raw", tone: "cyan" }),
      dead: card("Dead letters", { id: "deadletter", tone: "red" }),
      devices: card("Devices online", { id: "devices", tone: "green" }),
      apps: card("Applications", { id: "apps", tone: "slate" }),
    };
    cards.append(...Object.values(this.cards).map((c) => c.el));

    const flow = panel("Message flow · last 5 minutes", "wide");
    this.flowChart = new LineChart(flow.body, {
      title: "Messages per second by stage",
      height: 230,
      zeroBased: true,
      markers: false,
      yLabel: "messages / s",
    });

    const types = panel("Device types");
    this.typesTable = table(["Device type", "Raw#", "Enriched#", "Total enriched#", "Devices online#", "Out of range#", "Applications"]);
    types.body.append(this.typesTable.el);

    const dead = panel("Dead letters by reason");
    this.reasons = h("div", { class: "bars", "data-list": "reasons" });
    dead.body.append(this.reasons);

    const devices = panel("Devices");
    this.devicesNote = devices.note;
    this.devicesTable = table(["Device", "Type", "State", "Last seen", "Messages#"], "devices");
    devices.body.append(h("div", { class: "scroll" }, this.devicesTable.el));

    const registry = panel("Registry");
    this.registryBody = registry.body;

    const recent = panel("Recent messages · newest first", "wide");
    this.messages = new MessageList(recent.body, {
      name: "recent-messages",
      limit: 50,
      emptyText: "No enriched messages since the dashboard started.",
      summary: (e) => [
        h("span", { class: "mono muted", text: fmtTime(e.received_at) }),
        eventTag(e),
        h("span", { class: "mono strong device", text: e.device_id || "(no device id)" }),
        h("span", { class: "muted", text: e.device_type || "" }),
        e.within_ranges === false ? h("span", { class: "tag tag-warn", text: "out of range" }) : "",
        h("span", { class: "mono muted right", text: `p${e.partition}@${e.offset}` }),
      ],
    });

    const deadList = panel("Recent dead letters · newest first", "wide");
    this.deadletters = new MessageList(deadList.body, {
      name: "recent-deadletters",
      limit: 30,
      emptyText: "No dead letters since the dashboard started.",
      summary: (e) => [
        h("span", { class: "mono muted", text: fmtTime(e.received_at) }),
        h("span", { class: "tag tag-warn", text: e.reason }),
        h("span", { class: "muted", text: e.stage || "" }),
        h("span", { class: "mono strong device", text: e.key || "" }),
        h("span", { class: "muted ellipsis", text: e.detail || "" }),
      ],
    });

    root.append(
      cards,
      flow.el,
      h("div", { class: "grid-2-1" }, types.el, dead.el),
      h("div", { class: "grid2" }, devices.el, registry.el),
      recent.el,
      deadList.el
    );
  }

  setRegistry(reg) {
    this.registry = reg;
    const apps = reg.applications || [];
    this.cards.apps.set(String(apps.length), `${reg.device_types.length} device types registered`);
    const body = this.registryBody;
    body.replaceChildren();
    if (reg.status && reg.status.error) body.append(h("p", { class: "notice", text: reg.status.error }));
    if (reg.status && reg.status.warning) body.append(h("p", { class: "notice", text: reg.status.warning }));
    const dts = table(["Device type", "Measurements", "Update frequency"]);
    for (const dt of reg.device_types) {
      const measurements = [...new Set(dt.fields.map((f) => f.measurement))].join(", ");
      dts.tbody.append(h("tr", {},
        h("td", {}, h("div", { class: "strong", text: dt.display_name }), h("div", { class: "mono muted", text: dt.id })),
        h("td", { class: "muted", text: measurements || "–" }),
        h("td", { class: "muted", text: (dt.update_frequency || "–").replace(/_/g, " ") })));
    }
    if (!reg.device_types.length) dts.tbody.append(emptyRow(3, "No device types registered."));
    const appTable = table(["Application", "Developer", "Platform", "Device types"]);
    for (const a of apps) {
      appTable.tbody.append(h("tr", {},
        h("td", {}, h("a", { href: `#/app/${a.id}`, class: "strong", text: a.display_name }),
          h("div", { class: "mono muted", text: `${a.id} · v${a.version}` })),
        h("td", { class: "muted", text: a.developer }),
        h("td", {}, h("span", { class: "tag", text: a.platform })),
        h("td", { class: "mono muted", text: a.device_types.map((t) => t.id).join(", ") })));
    }
    if (!apps.length) appTable.tbody.append(emptyRow(4, "No active applications."));
    body.append(h("h3", { text: "Device types" }), dts.el, h("h3", { text: "Active applications" }), appTable.el);
  }

  snapshot(d) {
    this.flow.clear();
    this.messages.reset(d.messages);
    this.deadletters.reset(d.deadletters);
    this.apply(d);
  }

  update(d) {
    this.messages.add(d.messages);
    this.deadletters.add(d.deadletters);
    this.apply(d);
  }

  apply(d) {
    this.now = d.now;
    const s = d.stages;
    this.cards.enriched.set(fmtRate(s.enriched.rate), `${fmtInt(s.enriched.total)} since ${fmtTime(d.started_at)}`);
    this.cards.raw.set(fmtRate(s.raw.rate), `${fmtInt(s.raw.total)} since ${fmtTime(d.started_at)}`);
    this.cards.dead.set(fmtRate(s.deadletter.rate), `${fmtInt(s.deadletter.total)} since ${fmtTime(d.started_at)}`);
    const dv = d.devices;
    this.cards.devices.set(`${fmtInt(dv.online)} / ${fmtInt(dv.total)}`,
      dv.offline ? `${fmtInt(dv.offline)} offline` : dv.total ? "none offline" : "no devices seen yet");

    const f = d.flow;
    f.raw.forEach((_, i) => this.flow.set(f.from + i, [f.raw[i], f.enriched[i], f.deadletter[i]]));
    const nowSec = Math.floor(d.now / 1000);
    const startSec = Math.floor(d.started_at / 1000);
    for (const k of this.flow.keys()) if (k < nowSec - 299) this.flow.delete(k);
    // Nothing is known before the dashboard started: no line there rather than a false zero.
    const pts = (i) => [...this.flow.entries()].filter(([t]) => t >= startSec).map(([t, v]) => [t, v[i]]);
    this.flowChart.setData(nowSec, [
      { key: "raw", label: "Raw (bridge)", color: "#0891b2", points: pts(0), value: fmtRate(s.raw.rate), width: 3.5 },
      { key: "enriched", label: "Enriched", color: "#4f46e5", points: pts(1), value: fmtRate(s.enriched.rate), width: 1.6 },
      { key: "deadletter", label: "Dead letters", color: "#dc2626", points: pts(2), value: fmtRate(s.deadletter.rate) },
    ]);

    const names = new Map(((this.registry && this.registry.device_types) || []).map((t) => [t.id, t]));
    const rows = [];
    const ids = new Set([...names.keys(), ...Object.keys(d.device_types)]);
    for (const id of [...ids].sort()) {
      const t = d.device_types[id];
      const info = names.get(id);
      const appNames = new Map(((this.registry && this.registry.applications) || []).map((a) => [a.id, a.display_name]));
      const apps = info ? info.applications.map((a) => h("span", { class: "tag tag-app", text: appNames.get(a) || a })) : [];
      rows.push(h("tr", { "data-type": id },
        h("td", {}, h("div", { class: "strong", text: info ? info.display_name : id }), h("div", { class: "mono muted", text: id })),
        h("td", { class: "num", text: t ? fmtRate(t.raw.rate) : "–" }),
        h("td", { class: "num", text: t ? fmtRate(t.enriched.rate) : "–" }),
        h("td", { class: "num", "data-total": id, text: t ? fmtInt(t.enriched.total) : "0" }),
        h("td", { class: "num", text: t ? `${fmtInt(t.devices.online)} / ${fmtInt(t.devices.total)}` : "–" }),
        h("td", { class: "num", text: t ? fmtInt(t.out_of_range) : "–" }),
        h("td", { class: "apps" }, info ? (apps.length ? apps : h("span", { class: "muted", text: "none" })) : h("span", { class: "muted", text: "not registered" }))));
    }
    if (!rows.length) rows.push(emptyRow(7, "No device types registered or seen."));
    this.typesTable.tbody.replaceChildren(...rows);

    const reasons = Object.entries(d.deadletter_reasons).sort((a, b) => b[1] - a[1]);
    const max = Math.max(1, ...reasons.map((r) => r[1]));
    this.reasons.replaceChildren(...(reasons.length
      ? reasons.map(([reason, n]) => {
        const bar = h("span", { class: "bar-fill" });
        bar.style.width = `${(100 * n) / max}%`;
        return h("div", { class: "bar-row", "data-reason": reason },
          h("span", { class: "bar-label mono", text: reason }), h("span", { class: "bar" }, bar),
          h("span", { class: "bar-value num", text: fmtInt(n) }));
      })
      : [h("div", { class: "msg-empty", text: "No dead letters since the dashboard started." })]));

    this.devicesNote.textContent = dv.total > d.device_list.length
      ? `${d.device_list.length} most recently seen of ${fmtInt(dv.total)}` : "";
    this.devicesTable.tbody.replaceChildren(...deviceRows(d.device_list));
  }
}


export { OverviewView };
