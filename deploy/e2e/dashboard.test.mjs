// Browser end-to-end test of the IoT Cloud dashboard: headless Chromium (Debian's package, driven
// by playwright-core through executablePath) against the running pipeline that deploy/e2e/run.sh
// starts (simulator -> Mosquitto -> bridge -> Kafka -> enrichment). This script starts the
// dashboard binary itself, so that it can restart it to test reconnection.
//
// Environment (set by run.sh): DASHBOARD_BIN, CHROMIUM, ARTIFACTS, REGISTRY_FILE, IOT_MQTT_URL,
// IOT_MQTT_TOPIC_ROOT, IOT_TOPIC_PREFIX, IOT_KAFKA_BOOTSTRAP. Prints one line per check and, last,
// "N passed, M failed"; exits non-zero when a check failed.
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, renameSync, readFileSync, rmSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set (run deploy/e2e/run.sh)`);
  return v;
};
const ARTIFACTS = env("ARTIFACTS");
const PREFIX = env("IOT_TOPIC_PREFIX");
const MQTT_ROOT = env("IOT_MQTT_TOPIC_ROOT");
const REGISTRY_FILE = env("REGISTRY_FILE");
const TIME_ZONE = "Asia/Kolkata"; // not the machine's: proves times follow the browser
const GRID = "default/smart-grid-monitor";
const WAIT_MS = 60_000;

const results = [];
async function check(name, fn) {
  const started = Date.now();
  try {
    await fn();
    results.push({ name, ok: true });
    console.log(`ok    ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push({ name, ok: false });
    console.log(`FAIL  ${name}: ${e && e.message ? e.message : e}`);
  }
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

async function waitFor(what, fn, timeout = WAIT_MS) {
  const deadline = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeout / 1000} s (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 250));
  }
}

// ---- the dashboard process ---------------------------------------------------------------------

let dashboard = null;
let logIndex = 0;

async function startDashboard(addr) {
  const logPath = join(ARTIFACTS, `dashboard.${logIndex++}.log`);
  const proc = spawn(env("DASHBOARD_BIN"), ["dashboard"], {
    env: { ...process.env, IOT_DASHBOARD_ADDR: addr, NO_COLOR: "1" },
    stdio: ["ignore", "ignore", openSync(logPath, "w")],
  });
  const exited = new Promise((resolve) => proc.on("exit", resolve));
  const url = await waitFor("the dashboard's listening line", () => {
    if (proc.exitCode !== null) throw new Error(`dashboard exited: ${readFileSync(logPath, "utf8").slice(-2000)}`);
    const text = readFileSync(logPath, "utf8").replace(/\x1b\[[0-9;]*m/g, "");
    const m = text.match(/dashboard listening\s+addr=(\S+)/);
    return m ? `http://${m[1]}` : null;
  }, 30_000);
  await waitFor("/readyz", async () => (await fetch(`${url}/readyz`)).status === 200, 30_000);
  dashboard = { proc, url, exited, logPath };
  return dashboard;
}

async function stopDashboard() {
  if (!dashboard) return;
  const { proc, exited } = dashboard;
  if (proc.exitCode === null) proc.kill("SIGTERM");
  await Promise.race([exited, new Promise((r) => setTimeout(r, 15_000))]);
  if (proc.exitCode === null) proc.kill("SIGKILL");
  dashboard = null;
}

// ---- MQTT (the devices' side) ------------------------------------------------------------------

// As the simulator's identity on the broker's service listener (TLS when the URL is mqtts://).
function publish(deviceId, kind, payload) {
  const u = new URL(env("IOT_MQTT_URL"));
  const tls = u.protocol === "mqtts:";
  const identity = ["-u", "iot-simulator", "-P",
    readFileSync(env("IOT_TESTENV_MQTT_SIMULATOR_PASSWORD_FILE"), "utf8").trim()];
  execFileSync("mosquitto_pub", ["-h", u.hostname, "-p", u.port || (tls ? "8883" : "1883"),
    ...(tls ? ["--cafile", env("IOT_MQTT_CA_FILE")] : []), ...identity, "-q", "1",
    "-t", `${MQTT_ROOT}/${deviceId}/${kind}`, "-m", payload]);
}

function breakerTelemetry(deviceId, extra) {
  return JSON.stringify({
    device_id: deviceId,
    device_type: "smart_breaker",
    timestamp: new Date().toISOString(),
    event_type: "telemetry",
    measurements: {
      voltage: { phase_a: 119.5, phase_b: 120.5, phase_c: 121.5, unit: "V" },
      current: { phase_a: 40.0, phase_b: 41.0, phase_c: 42.0, unit: "A" },
      power: { active: 6400.0, reactive: 1200.0, apparent: 6600.0, factor: 0.95, unit: "W" },
      temperature: { value: 36.6, unit: "°C" },
    },
    ...extra,
  });
}

function writeRegistry(edit) {
  const registry = JSON.parse(readFileSync(REGISTRY_FILE, "utf8"));
  edit(registry);
  const tmp = `${REGISTRY_FILE}.tmp`;
  writeFileSync(tmp, JSON.stringify(registry, null, 2));
  renameSync(tmp, REGISTRY_FILE); // atomic, as Kubernetes swaps a mounted ConfigMap
}

// ---- page helpers ------------------------------------------------------------------------------

const XSS_NOTE = '<script>window.__xss=1</script><img src=x onerror="window.__xss=2">';
const XSS_DEVICE = "<img src=x onerror=window.__xss=3>";
const XSS_RAW = "<script>window.__xss=4</script>";

const connState = (page) => page.getAttribute("#conn", "data-state");
const waitLive = (page) => waitFor("the connection indicator to say Live", async () => (await connState(page)) === "live");

// Clicks a tab and waits until its view is built and its stream is live (the view changes on the
// asynchronous hashchange event).
async function openTab(page, key, heading) {
  await page.click(`[data-tab="${key}"]`);
  await waitFor(`the ${key} tab`, async () =>
    (await page.getAttribute(`[data-tab="${key}"]`, "aria-selected")) === "true" &&
    (heading ? (await page.textContent(".app-header h1").catch(() => "")) === heading
      : !!(await page.$('[data-card="enriched"]'))));
  await waitLive(page);
}

async function enrichedTotal(page) {
  const text = await page.textContent('[data-card="enriched"] .card-sub');
  return Number((text || "").split(" since")[0].replace(/[^0-9]/g, "")) || 0;
}

async function expand(page, list, text) {
  const newest = page.locator(`[data-list="${list}"] details`).filter({ hasText: text }).first();
  await newest.waitFor({ timeout: WAIT_MS });
  // Pin that one row by its sequence number: new messages keep arriving on top, and `first()`
  // would otherwise point at a newer, closed row on every look.
  const seq = await newest.getAttribute("data-seq");
  const row = page.locator(`[data-list="${list}"] details[data-seq="${seq}"]`);
  if (!(await row.evaluate((d) => d.open))) await row.locator("summary").click();
  // The JSON is rendered on the (asynchronous) toggle event.
  return waitFor(`the expanded ${text} row`, () => row.locator("pre").textContent());
}

async function noInjectedElements(page) {
  const injected = await page.evaluate(() => ({
    flag: window.__xss,
    elements: document.querySelectorAll("#view script, #view img, #view iframe").length,
  }));
  assert(injected.flag === undefined, `a payload ran as code: window.__xss = ${injected.flag}`);
  assert(injected.elements === 0, `${injected.elements} script/img/iframe elements made from data`);
}

async function screenshot(page, name) {
  await page.evaluate(() => window.scrollTo(0, 0)); // the sticky top bar stays on top
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

// ---- the test ----------------------------------------------------------------------------------

const userDataDir = mkdtempSync(join(tmpdir(), "iot-e2e-chromium-"));
let context;
const pageErrors = [];
try {
  let url;
  await check("the dashboard starts and is ready", async () => {
    ({ url } = await startDashboard("127.0.0.1:0"));
  });
  if (!url) throw new Error("no dashboard");

  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: env("CHROMIUM"),
    headless: true,
    args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
    timezoneId: TIME_ZONE,
    locale: "en-US",
    viewport: { width: 1440, height: 900 },
  });
  const page = context.pages()[0] || (await context.newPage());
  page.on("pageerror", (e) => pageErrors.push(e.message));
  page.on("console", (m) => { if (m.type() === "error") pageErrors.push(`console: ${m.text()}`); });
  await page.goto(`${url}/#/overview`);

  await check("the Overview connects and says Live", () => waitLive(page));

  await check("times are shown in the browser's time zone", async () => {
    const tz = await page.textContent("#tz");
    // ICU may name the zone by its older alias.
    assert(/Asia\/(Kolkata|Calcutta) \(UTC\+05:30\)/.test(tz), `footer says ${tz}`);
    const overview = await (await fetch(`${url}/api/overview`)).json();
    const expected = new Date(overview.started_at).toLocaleTimeString("en-US",
      { timeZone: TIME_ZONE, hour: "2-digit", minute: "2-digit", second: "2-digit" });
    await waitFor(`"since ${expected}" on the Enriched card`, async () =>
      (await page.textContent('[data-card="enriched"] .card-sub')).includes(`since ${expected}`));
  });

  await check("the Overview shows live counts that increase", async () => {
    const first = await waitFor("enriched messages counted", async () => (await enrichedTotal(page)) || null);
    await waitFor(`the enriched count to rise above ${first}`, async () => (await enrichedTotal(page)) > first);
  });

  await check("the Overview lists the three device types with messages and their devices online", async () => {
    for (const t of ["smart_breaker", "smart_meter", "environmental_sensor"]) {
      await waitFor(`${t} messages`, async () => {
        const text = await page.textContent(`[data-type="${t}"] [data-total]`).catch(() => "0");
        return Number(text.replace(/[^0-9]/g, "")) > 0;
      });
    }
    await waitFor("6 simulated devices online", async () => {
      const v = await page.textContent('[data-card="devices"] .card-value');
      return Number(v.split("/")[0].replace(/[^0-9]/g, "")) >= 6;
    });
  });

  await check("the tabs are the Overview and one per active Application", async () => {
    const tabs = await page.$$eval("#tabs [data-tab]", (els) => els.map((e) => e.textContent));
    assert(JSON.stringify(tabs) === JSON.stringify(["IoT Overview", "Energy Analytics", "Environmental Tracker", "Smart Grid Monitor"]),
      `tabs: ${tabs}`);
  });

  publish("xss-breaker", "raw", breakerTelemetry("xss-breaker", { note: XSS_NOTE }));
  publish(XSS_DEVICE, "raw", breakerTelemetry(XSS_DEVICE));
  publish("xss-raw", "raw", XSS_RAW);

  await check("payloads containing <script> are shown as text, never run", async () => {
    const json = await expand(page, "recent-messages", "xss-breaker");
    assert(JSON.parse(json).note === XSS_NOTE, `expanded JSON lacks the note as text: ${json.slice(0, 400)}`);
    assert(json.includes("<script>window.__xss=1</script><img src=x onerror="), "the markup is not shown verbatim");
    assert(await page.getByText("<script>window.__xss=1</script>", { exact: false }).first().isVisible(),
      "the <script> text is not visible");
    await page.locator('[data-list="recent-messages"] summary').filter({ hasText: XSS_DEVICE }).first()
      .waitFor({ timeout: WAIT_MS });
    const dead = await expand(page, "recent-deadletters", "not_json");
    assert(dead.includes(XSS_RAW), `dead letter payload not shown as text: ${dead}`);
    await noInjectedElements(page);
  });

  await check("dead letters are counted by reason", async () => {
    await page.locator('[data-reason="not_json"]').waitFor({ timeout: WAIT_MS });
  });

  await screenshot(page, "overview");

  await check("the Smart Grid Monitor tab shows only smart-breaker data", async () => {
    await openTab(page, `app:${GRID}`, "Smart Grid Monitor");
    // Every device id that ever enters the list, from now on.
    await page.evaluate(() => {
      window.__seenDevices = new Set();
      const list = document.querySelector('[data-list="app-latest"]');
      const note = () => list.querySelectorAll(".device").forEach((d) => window.__seenDevices.add(d.textContent));
      new MutationObserver(note).observe(list, { childList: true, subtree: true });
      note();
    });
    const topic = await page.textContent(".app-topics .topic");
    assert(topic === `${PREFIX}.smart_breaker.enriched`, `reads ${topic}`);
    await waitFor("8 latest messages", async () => (await page.$$('[data-list="app-latest"] details')).length >= 8);
    await waitFor("the voltage range", async () =>
      !(await page.textContent('[data-field="voltage.phase_a"] td:nth-child(2)')).includes("–"));
    await waitFor("a drawn chart", async () => (await page.$$(".type-section svg path")).length >= 4);
    // Keep watching while all three device types flow.
    await new Promise((r) => setTimeout(r, 8000));
    const seen = await page.evaluate(() => [...window.__seenDevices]);
    const foreign = seen.filter((d) => !/^breaker-\d+$/.test(d) && d !== "xss-breaker" && d !== XSS_DEVICE);
    assert(seen.length > 0, "no device seen in the list");
    assert(foreign.length === 0, `non-breaker devices in the Smart Grid tab: ${foreign}`);
    const types = await page.$$eval('[data-table="app-devices"] tbody tr td:nth-child(2)', (tds) => tds.map((t) => t.textContent));
    const viewText = await page.innerText("#view");
    for (const other of ["smart_meter", "environmental_sensor", "meter-0", "sensor-0"]) {
      assert(!viewText.includes(other), `"${other}" appears in the Smart Grid tab`);
    }
    assert(types.length > 0 && types.every((t) => t === "smart_breaker"), `device table types: ${types}`);
    const json = await expand(page, "app-latest", "breaker-");
    assert(JSON.parse(json).device_type === "smart_breaker", "expanded message is not a breaker's");
    await noInjectedElements(page);
  });
  await screenshot(page, "smart-grid-monitor");

  for (const [id, name, title, charts] of [
    ["default/energy-analytics", "energy-analytics", "Energy Analytics", ["Demand (kW)", "Energy (kWh)", "Power factor"]],
    ["default/environmental-tracker", "environmental-tracker", "Environmental Tracker",
      ["Temperature (°C)", "Humidity (%RH)", "Pressure (hPa)"]],
  ]) {
    await check(`the ${name} tab shows the generic view of its own device type`, async () => {
      await openTab(page, `app:${id}`, title);
      const titles = await page.$$eval(".chart-panel h2", (els) => els.map((e) => e.textContent));
      for (const c of charts) assert(titles.includes(c), `chart "${c}" missing from ${titles}`);
      await waitFor("a device line", async () => (await page.$$(".chart-panel svg path")).length >= 1);
      await waitFor("a latest message", async () => (await page.$$('[data-list="app-latest"] details')).length >= 1);
      const viewText = await page.innerText("#view");
      assert(!viewText.includes("breaker-0"), "breaker data in a generic tab");
    });
    await screenshot(page, name);
  }

  await check("the page reconnects when the dashboard restarts", async () => {
    await openTab(page, "overview");
    const addr = new URL(dashboard.url).host;
    await stopDashboard();
    await waitFor("the indicator to leave Live", async () => (await connState(page)) !== "live", 20_000);
    const shown = await page.textContent("#conn-text");
    assert(/Reconnecting|Disconnected|No update/.test(shown), `indicator says ${shown}`);
    await startDashboard(addr);
    await waitLive(page);
    await waitFor("counts again after the restart", async () => (await enrichedTotal(page)) > 0);
  });

  await check("tabs disappear and appear when Applications are removed and added", async () => {
    writeRegistry((r) => { r.deviceTypes.environmental_sensor.applications = []; });
    await waitFor("the Environmental Tracker tab to go", async () =>
      !(await page.$('[data-tab="app:default/environmental-tracker"]')));
    writeRegistry((r) => {
      r.deviceTypes.environmental_sensor.applications = [{
        id: "default/environmental-tracker", displayName: "Environmental Tracker", developer: "GreenTech Solutions",
        platform: "desktop", category: "environmental", version: "1.0.0", status: "active",
      }];
    });
    await page.locator('[data-tab="app:default/environmental-tracker"]').waitFor({ timeout: WAIT_MS });
  });

  await check("no JavaScript errors on the page", async () => {
    assert(pageErrors.length === 0, pageErrors.join("; "));
  });
} catch (e) {
  results.push({ name: "test run", ok: false });
  console.log(`FAIL  test run aborted: ${e && e.stack ? e.stack : e}`);
} finally {
  if (context) await context.close().catch(() => {});
  await stopDashboard().catch(() => {});
  rmSync(userDataDir, { recursive: true, force: true });
}

const passed = results.filter((r) => r.ok).length;
const failed = results.length - passed;
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
