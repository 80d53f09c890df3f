// Hand-drawn SVG line charts over a sliding time window (no library, no CDN). Every label is set
// with textContent; nothing from the data is ever parsed as markup.
// An ES module (strict by default), loaded by index.html through app.js.

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

// Round tick values covering [min, max], about `count` of them, and their step.
function niceTicks(min, max, count) {
  if (!(max > min)) return { ticks: [min], step: 1 };
  const raw = (max - min) / Math.max(1, count);
  const mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw * 0.999) || 10 * mag;
  const ticks = [];
  for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + step * 1e-9; v += step) {
    ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  }
  return { ticks, step };
}

// A tick label with as many decimals as the step needs.
function tickFormat(v, step) {
  const digits = Math.max(0, Math.min(4, -Math.floor(Math.log10(step) + 1e-9)));
  return v.toLocaleString(undefined, { minimumFractionDigits: digits, maximumFractionDigits: digits });
}

function timeLabel(sec, withSeconds) {
  const opts = withSeconds
    ? { hour: "2-digit", minute: "2-digit", second: "2-digit" }
    : { hour: "2-digit", minute: "2-digit" };
  return new Date(sec * 1000).toLocaleTimeString([], opts);
}

// A line chart over the last `windowSeconds`. setData(nowSec, series) with
// series = [{key, label, color, points: [[unixSecond, value], ...], value: legend text}].
class LineChart {
  constructor(parent, options) {
    this.opts = Object.assign(
      { height: 220, windowSeconds: 300, zeroBased: false, yLabel: "", format: null, markers: true },
      options || {}
    );
    this.root = document.createElement("div");
    this.root.className = "chart";
    this.svg = svg("svg", { role: "img", "aria-label": this.opts.title || "chart" });
    this.svg.classList.add("chart-svg");
    this.legend = document.createElement("div");
    this.legend.className = "chart-legend";
    this.legendKey = "";
    this.root.append(this.svg, this.legend);
    parent.append(this.root);
    this.data = null;
    if (typeof ResizeObserver !== "undefined") {
      let lastWidth = 0;
      new ResizeObserver(() => {
        const w = this.svg.clientWidth;
        if (w && w !== lastWidth) {
          lastWidth = w;
          this.draw();
        }
      }).observe(this.svg);
    }
  }

  setData(now, series) {
    this.data = { now, series };
    this.drawLegend(series);
    this.draw();
  }

  drawLegend(series) {
    const key = series.map((s) => `${s.key}|${s.label}|${s.color}`).join(";");
    if (key !== this.legendKey) {
      this.legendKey = key;
      this.legendValues = new Map();
      this.legend.replaceChildren(...series.map((s) => {
        const item = document.createElement("span");
        item.className = "legend-item";
        const sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = s.color;
        const label = document.createElement("span");
        label.textContent = s.label;
        const value = document.createElement("span");
        value.className = "legend-value";
        this.legendValues.set(s.key, value);
        item.append(sw, label, value);
        return item;
      }));
    }
    for (const s of series) this.legendValues.get(s.key).textContent = s.value || "";
  }

  draw() {
    const d = this.data;
    const width = this.svg.clientWidth || 600;
    const height = this.opts.height;
    const m = { left: 56, right: 14, top: 12, bottom: 26 };
    const el = this.svg;
    el.setAttribute("viewBox", `0 0 ${width} ${height}`);
    el.setAttribute("height", String(height));
    el.replaceChildren();
    if (!d) return;
    const t1 = d.now;
    const t0 = t1 - this.opts.windowSeconds + 1;
    const visible = d.series.map((s) => s.points.filter((p) => p[0] >= t0 && p[0] <= t1 && p[1] != null));
    let lo = Infinity;
    let hi = -Infinity;
    for (const pts of visible) for (const [, v] of pts) { lo = Math.min(lo, v); hi = Math.max(hi, v); }
    const empty = lo === Infinity;
    if (this.opts.yDomain) {
      [lo, hi] = this.opts.yDomain;
    } else if (empty) {
      lo = 0;
      hi = 1;
    } else {
      if (this.opts.zeroBased) lo = Math.min(0, lo);
      const pad = hi === lo ? Math.abs(hi) * 0.05 || 1 : (hi - lo) * 0.08;
      hi += pad;
      if (!(this.opts.zeroBased && lo >= 0)) lo -= pad;
    }
    const { ticks, step } = niceTicks(lo, hi, 4);
    lo = Math.min(lo, ticks[0]);
    hi = Math.max(hi, ticks[ticks.length - 1]);
    const fmt = this.opts.format || ((v) => tickFormat(v, step));
    const x = (t) => m.left + ((t - t0) / (t1 - t0)) * (width - m.left - m.right);
    const y = (v) => m.top + (1 - (v - lo) / (hi - lo)) * (height - m.top - m.bottom);

    const grid = svg("g", { class: "grid" });
    for (const v of ticks) {
      grid.append(svg("line", { x1: m.left, x2: width - m.right, y1: y(v), y2: y(v) }));
      const label = svg("text", { x: m.left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis-label" });
      label.textContent = fmt(v);
      grid.append(label);
    }
    const span = t1 - t0;
    const tstep = span > 240 ? 60 : span > 120 ? 30 : 15;
    for (let t = Math.ceil(t0 / tstep) * tstep; t <= t1; t += tstep) {
      const label = svg("text", { x: x(t), y: height - 8, "text-anchor": "middle", class: "axis-label" });
      label.textContent = timeLabel(t, tstep < 60);
      grid.append(label, svg("line", { x1: x(t), x2: x(t), y1: height - m.bottom, y2: height - m.bottom + 4 }));
    }
    el.append(grid);
    for (const ref of this.opts.refLines || []) {
      if (ref < lo || ref > hi) continue;
      el.append(svg("line", { x1: m.left, x2: width - m.right, y1: y(ref), y2: y(ref), class: "ref-line" }));
    }
    if (this.opts.yLabel) {
      const cy = m.top + (height - m.top - m.bottom) / 2;
      const yl = svg("text", { x: 12, y: cy, class: "axis-title", transform: `rotate(-90 12 ${cy})`, "text-anchor": "middle" });
      yl.textContent = this.opts.yLabel;
      el.append(yl);
    }
    if (empty) {
      const t = svg("text", { x: (m.left + width - m.right) / 2, y: height / 2, "text-anchor": "middle", class: "chart-empty" });
      t.textContent = this.opts.emptyText || "Waiting for data…";
      el.append(t);
    }
    d.series.forEach((s, i) => {
      const pts = visible[i].slice().sort((a, b) => a[0] - b[0]);
      if (!pts.length) return;
      // Consecutive values are joined; devices report every few seconds or minutes.
      const path = pts.map((p, j) => `${j ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join("");
      el.append(svg("path", { d: path, fill: "none", stroke: s.color, "stroke-width": s.width || 2,
        "stroke-linejoin": "round", "stroke-linecap": "round", class: s.dashed ? "dashed" : "" }));
      if (this.opts.markers && pts.length <= 60) {
        for (const p of pts) el.append(svg("circle", { cx: x(p[0]), cy: y(p[1]), r: 2.6, fill: s.color }));
      }
    });
  }
}

export { LineChart, niceTicks, tickFormat };
