// Building blocks of the views: DOM construction, formatting, cards, panels, tables and the
// recent-message lists. Data from devices is only ever put into the page as text (textContent /
// text nodes): never parsed as HTML, never put in an attribute that loads or runs anything.
// An ES module (strict by default), loaded by index.html through app.js.

// ---- DOM and formatting helpers -------------------------------------------------------------

// h("div", {class: "x"}, "text", child): strings become text nodes, never markup.
function h(tag, props, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(props || {})) {
    if (v == null || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = String(v);
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c == null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const nf = new Intl.NumberFormat();
const fmtInt = (n) => (n == null ? "–" : nf.format(n));
const fmtRate = (r) => (r == null ? "–" : r >= 100 ? nf.format(Math.round(r)) : r.toFixed(1)) + "/s";
function fmtNum(v, digits) {
  if (v == null || !isFinite(v)) return "–";
  const a = Math.abs(v);
  const d = digits != null ? digits : a >= 1000 ? 0 : a >= 100 ? 1 : a >= 1 ? 2 : 3;
  return v.toLocaleString(undefined, { maximumFractionDigits: d, minimumFractionDigits: 0 });
}
const fmtTime = (ms) =>
  ms == null ? "–" : new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
const fmtDateTime = (ms) => (ms == null ? "" : new Date(ms).toLocaleString());
function fmtAgo(ms, now) {
  if (ms == null) return "–";
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return `${Math.floor(s / 3600)} h ago`;
}
// A device's RFC 3339 timestamp in the browser's time zone (the text as sent if unparsable).
function fmtDeviceTime(text) {
  if (!text) return "–";
  const t = Date.parse(text);
  return isNaN(t) ? text : fmtTime(t);
}
const withUnit = (v, unit) => (v === "–" || !unit ? v : `${v} ${unit}`);
function rangeText(f) {
  if (f.min == null && f.max == null) return "–";
  if (f.max == null) return withUnit(`≥ ${fmtNum(f.min)}`, f.unit);
  if (f.min == null) return withUnit(`≤ ${fmtNum(f.max)}`, f.unit);
  return withUnit(`${fmtNum(f.min)} – ${fmtNum(f.max)}`, f.unit);
}
function fieldLabel(f) {
  const name = (s) => s.replace(/_/g, " ");
  const m = name(f.measurement);
  if (!f.part) return m[0].toUpperCase() + m.slice(1);
  const part = f.part.startsWith("phase_") ? `phase ${f.part.slice(6).toUpperCase()}` : name(f.part);
  return `${m[0].toUpperCase() + m.slice(1)} · ${part}`;
}

const PALETTE = ["#4f46e5", "#0891b2", "#16a34a", "#ea580c", "#db2777", "#9333ea", "#ca8a04", "#64748b"];

function card(label, opts) {
  const value = h("div", { class: "card-value", text: "–" });
  const sub = h("div", { class: "card-sub", text: "" });
  const el = h("div", { class: `card ${opts && opts.tone ? "tone-" + opts.tone : ""}`, "data-card": opts && opts.id },
    h("div", { class: "card-label", text: label }), value, sub);
  return { el, set(v, s) { value.textContent = v; sub.textContent = s || ""; } };
}

function panel(title, extraClass) {
  const body = h("div", { class: "panel-body" });
  const note = h("span", { class: "panel-note" });
  const el = h("section", { class: `panel ${extraClass || ""}` },
    h("header", { class: "panel-head" }, h("h2", { text: title }), note), body);
  return { el, body, note };
}

function statePill(online) {
  if (online === true) return h("span", { class: "pill pill-on", text: "online" });
  if (online === false) return h("span", { class: "pill pill-off", text: "offline" });
  return h("span", { class: "pill pill-unknown", text: "unknown" });
}

// Headers ending in "#" are numeric columns (right-aligned); the "#" is not shown.
function table(headers, name) {
  const tbody = h("tbody");
  const el = h("table", { class: "table", "data-table": name },
    h("thead", {}, h("tr", {}, headers.map((t) =>
      t.endsWith("#") ? h("th", { class: "num", text: t.slice(0, -1) }) : h("th", { text: t })))), tbody);
  return { el, tbody };
}

function emptyRow(cols, text) {
  return h("tr", { class: "empty" }, h("td", { colspan: cols, text }));
}

// ---- Recent-message lists: newest first, expandable JSON rendered as text --------------------

// The device's own fields first, then what the enrichment added. A null-prototype object, so
// that a "__proto__" key in a payload stays an ordinary key.
const FIRST_KEYS = ["device_id", "device_type", "timestamp", "event_type", "seq", "measurements", "trends", "status"];
function ordered(payload) {
  if (!payload || typeof payload !== "object" || Array.isArray(payload)) return payload;
  const out = Object.create(null);
  for (const k of FIRST_KEYS) if (Object.prototype.hasOwnProperty.call(payload, k)) out[k] = payload[k];
  for (const k of Object.keys(payload)) if (!(k in out)) out[k] = payload[k];
  return out;
}

class MessageList {
  constructor(parent, opts) {
    this.opts = opts;
    this.rows = new Map();
    this.lastSeq = 0;
    this.el = h("div", { class: "msg-list", "data-list": opts.name });
    this.empty = h("div", { class: "msg-empty", text: opts.emptyText || "No messages yet." });
    this.el.append(this.empty);
    parent.append(this.el);
  }

  reset(entries) {
    for (const row of this.rows.values()) row.remove();
    this.rows.clear();
    this.lastSeq = 0;
    this.add(entries);
  }

  // entries newest first; those already shown are skipped.
  add(entries) {
    const fresh = (entries || []).filter((e) => e.seq > this.lastSeq).reverse();
    for (const e of fresh) {
      const row = this.row(e);
      this.rows.set(e.seq, row);
      this.el.insertBefore(row, this.el.firstChild);
      this.lastSeq = Math.max(this.lastSeq, e.seq);
    }
    // Beyond the limit the oldest rows go, except those the user has opened: a message being
    // read must not vanish under the reader at high message rates.
    const seqs = [...this.rows.keys()].sort((a, b) => b - a);
    for (const s of seqs.slice(this.opts.limit)) {
      if (this.rows.get(s).open) continue;
      this.rows.get(s).remove();
      this.rows.delete(s);
    }
    this.empty.hidden = this.rows.size > 0;
  }

  row(e) {
    const pre = h("pre", { class: "json" });
    const details = h("details", { class: "msg", "data-seq": e.seq },
      h("summary", {}, this.opts.summary(e)), pre);
    details.addEventListener("toggle", () => {
      if (details.open && !pre.textContent) {
        // Text only: a payload with "<script>" shows as those characters.
        pre.textContent = e.payload !== undefined
          ? JSON.stringify(ordered(e.payload), null, 2)
          : (e.payload_text || "") + (e.truncated ? "\n… (cut)" : "");
      }
    });
    return details;
  }
}

function eventTag(e) {
  const t = e.event_type || "?";
  return h("span", { class: `tag tag-${["telemetry", "trends", "status"].includes(t) ? t : "other"}`, text: t });
}


// Rows of a devices table (Overview and application tabs).
function deviceRows(list) {
  if (!list.length) return [emptyRow(5, "No devices seen since the dashboard started.")];
  return list.map((x) => h("tr", {},
    h("td", { class: "mono strong", text: x.id }),
    h("td", { class: "muted", text: x.device_type }),
    h("td", {}, statePill(x.online), x.reason ? h("span", { class: "muted small", text: ` ${x.reason}` }) : ""),
    h("td", { class: "muted", title: fmtDateTime(x.last_seen), "data-ago": x.last_seen, text: fmtAgo(x.last_seen, Date.now()) }),
    h("td", { class: "num", text: fmtInt(x.messages) })));
}


export {
  h, fmtInt, fmtRate, fmtNum, fmtTime, fmtDateTime, fmtAgo, fmtDeviceTime, withUnit, rangeText,
  fieldLabel, PALETTE, card, panel, statePill, table, emptyRow, MessageList, eventTag, deviceRows,
};
