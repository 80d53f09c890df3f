// Unit tests of the Application tabs' series store and helpers (node --test, no browser).
import { test } from "node:test";
import assert from "node:assert/strict";

import { SeriesStore, meanOf, measurementValue } from "../../src/dashboard/assets/series.js";

test("an update replaces the points from its start on and keeps the older ones", () => {
  const s = new SeriesStore();
  s.merge(100, { v: [[100, 1], [101, 2], [102, 3]] });
  s.merge(102, { v: [[102, 30], [103, 40]] });
  assert.deepEqual(s.points("v"), [[100, 1], [101, 2], [102, 30], [103, 40]]);
  // Points the update no longer has are gone: the server's window is the truth.
  s.merge(101, { v: [[101, 20]] });
  assert.deepEqual(s.points("v"), [[100, 1], [101, 20]]);
});

test("pruning drops old points and empty series", () => {
  const s = new SeriesStore();
  s.merge(0, { a: [[1, 1], [5, 5]], b: [[2, 2]] });
  s.prune(3);
  assert.deepEqual(s.points("a"), [[5, 5]]);
  assert.deepEqual(s.keys(), ["a"]);
  assert.deepEqual(s.points("missing"), []);
  s.clear();
  assert.deepEqual(s.keys(), []);
});

test("points come back sorted by second whatever the arrival order", () => {
  const s = new SeriesStore();
  s.merge(0, { v: [[3, 3], [1, 1], [2, 2]] });
  assert.deepEqual(s.points("v").map(([t]) => t), [1, 2, 3]);
});

test("the mean of sparse series counts only the series with a value at that second", () => {
  assert.deepEqual(meanOf([[[1, 10], [2, 20]], [[2, 40], [3, 6]]]), [[1, 10], [2, 30], [3, 6]]);
  assert.deepEqual(meanOf([]), []);
});

test("a declared measurement's value: single, per phase or component, or absent", () => {
  const payload = {
    measurements: {
      frequency: { value: 59.9, unit: "Hz" },
      voltage: { phase_a: 117.2, phase_b: "n/a" },
      temperature: 21.5,
    },
  };
  assert.equal(measurementValue(payload, { measurement: "frequency" }), 59.9);
  assert.equal(measurementValue(payload, { measurement: "voltage", part: "phase_a" }), 117.2);
  assert.equal(measurementValue(payload, { measurement: "voltage", part: "phase_b" }), null);
  assert.equal(measurementValue(payload, { measurement: "temperature" }), 21.5);
  assert.equal(measurementValue(payload, { measurement: "humidity" }), null);
  assert.equal(measurementValue(null, { measurement: "frequency" }), null);
});
