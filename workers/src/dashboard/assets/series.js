// Per-second series of the Application tabs, without the DOM: the store that merges snapshots
// and updates, the mean of several series, and a declared measurement's value in a payload.
// An ES module, unit-tested by workers/tests/dashboard-js/ (node --test).

// Sparse per-second series ([[second, value], ...]) by key, merged from snapshot and updates:
// an update replaces the values from its `series_from` on.
class SeriesStore {
  constructor() { this.map = new Map(); }
  clear() { this.map.clear(); }
  merge(from, series) {
    for (const [key, points] of Object.entries(series || {})) {
      let m = this.map.get(key);
      if (!m) this.map.set(key, (m = new Map()));
      for (const t of [...m.keys()]) if (t >= from) m.delete(t);
      for (const [t, v] of points) m.set(t, v);
    }
  }
  prune(from) {
    for (const [key, m] of this.map) {
      for (const t of [...m.keys()]) if (t < from) m.delete(t);
      if (!m.size) this.map.delete(key);
    }
  }
  points(key) {
    const m = this.map.get(key);
    return m ? [...m.entries()].sort((a, b) => a[0] - b[0]) : [];
  }
  keys() { return [...this.map.keys()]; }
}

// Mean of several sparse series at each second where any has a value.
function meanOf(seriesList) {
  const sums = new Map();
  for (const pts of seriesList) {
    for (const [t, v] of pts) {
      const s = sums.get(t) || [0, 0];
      sums.set(t, [s[0] + v, s[1] + 1]);
    }
  }
  return [...sums.entries()].sort((a, b) => a[0] - b[0]).map(([t, [sum, n]]) => [t, sum / n]);
}

function measurementValue(payload, f) {
  const m = payload && payload.measurements && payload.measurements[f.measurement];
  if (m == null) return null;
  const v = f.part ? m[f.part] : typeof m === "object" ? m.value : m;
  return typeof v === "number" ? v : null;
}

export { SeriesStore, meanOf, measurementValue };
