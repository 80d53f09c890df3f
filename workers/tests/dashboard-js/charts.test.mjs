// Unit tests of the dashboard's pure chart helpers (node --test, no browser).
import { test } from "node:test";
import assert from "node:assert/strict";

import { niceTicks, tickFormat } from "../../src/dashboard/assets/charts.js";

test("ticks are round numbers covering the range", () => {
  assert.deepEqual(niceTicks(0, 100, 5), { ticks: [0, 20, 40, 60, 80, 100], step: 20 });
  const { ticks, step } = niceTicks(217.3, 242.9, 4);
  assert.equal(step, 10);
  assert.deepEqual(ticks, [220, 230, 240]);
  for (const t of ticks) assert.ok(t >= 217.3 && t <= 242.9);
});

test("a negative-to-positive range has an exact zero tick", () => {
  const { ticks } = niceTicks(-0.3, 0.3, 6);
  assert.ok(ticks.includes(0), JSON.stringify(ticks));
  assert.ok(!ticks.some((t) => Object.is(t, -0)));
});

test("an empty or inverted range gives one tick instead of looping", () => {
  assert.deepEqual(niceTicks(5, 5, 4), { ticks: [5], step: 1 });
  assert.deepEqual(niceTicks(7, 3, 4), { ticks: [7], step: 1 });
});

test("labels have as many decimals as the step needs", () => {
  const plain = (s) => s.replace(/[^\d.-]/g, "");
  assert.equal(plain(tickFormat(20, 20)), "20");
  assert.equal(plain(tickFormat(0.5, 0.5)), "0.5");
  assert.equal(plain(tickFormat(0.25, 0.05)), "0.25");
});
