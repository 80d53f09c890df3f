// Unit tests of the dashboard's text formatting (node --test, no browser).
import { test } from "node:test";
import assert from "node:assert/strict";

import {
  fieldLabel, fmtAgo, fmtDeviceTime, fmtInt, fmtNum, fmtRate, rangeText, withUnit,
} from "../../src/dashboard/assets/widgets.js";

test("missing values show a dash, never 'undefined' or 'NaN'", () => {
  for (const v of [fmtInt(null), fmtNum(undefined), fmtNum(NaN), fmtAgo(null, 0), fmtDeviceTime("")]) {
    assert.equal(v, "–");
  }
  assert.equal(fmtRate(null), "–/s");
  assert.equal(withUnit("–", "V"), "–");
});

test("rates: whole numbers from 100/s, one decimal below", () => {
  assert.equal(fmtRate(3.14159), "3.1/s");
  assert.match(fmtRate(12345.6), /^12.?346\/s$/);
});

test("ages in seconds, minutes, hours", () => {
  const now = 10_000_000;
  assert.equal(fmtAgo(now - 4_400, now), "4 s ago");
  assert.equal(fmtAgo(now + 5_000, now), "0 s ago", "a clock ahead is not negative");
  assert.equal(fmtAgo(now - 125_000, now), "2 min ago");
  assert.equal(fmtAgo(now - 7_300_000, now), "2 h ago");
});

test("an unparsable device timestamp is shown as sent", () => {
  assert.equal(fmtDeviceTime("yesterday"), "yesterday");
});

test("ranges and field labels", () => {
  assert.equal(rangeText({}), "–");
  assert.equal(rangeText({ min: 0, unit: "V" }), "≥ 0 V");
  assert.equal(rangeText({ max: 5 }), "≤ 5");
  assert.match(rangeText({ min: 20, max: 80, unit: "°C" }), /^20 – 80 °C$/);
  assert.equal(fieldLabel({ measurement: "voltage", part: "phase_a" }), "Voltage · phase A");
  assert.equal(fieldLabel({ measurement: "power", part: "apparent_power" }), "Power · apparent power");
  assert.equal(fieldLabel({ measurement: "ground_fault_current" }), "Ground fault current");
});
