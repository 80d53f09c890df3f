// The page: tabs from the registry (one per active Application), one live stream (server-sent
// events) for the tab on screen, and an honest connection indicator.
// An ES module (strict by default), loaded by index.html through app.js.

import { h, fmtAgo } from "./widgets.js";
import { OverviewView } from "./overview.js";
import { AppView } from "./application.js";

const STALE_AFTER_MS = 5000;
const RETRY_CLOSED_MS = 5000;

const state = {
  registry: null,
  route: null,
  es: null,
  view: null,
  lastFrameAt: 0,
  conn: "connecting",
  hadError: false,
  retryTimer: null,
  notice: null,
};

const $ = (id) => document.getElementById(id);

// ---- connection indicator -------------------------------------------------------------------

function setConn(conn, text) {
  state.conn = conn;
  const el = $("conn");
  el.className = `status-chip conn-${conn}`;
  el.dataset.state = conn;
  $("conn-text").textContent = text;
}

function setKafka(kafka) {
  const el = $("kafka-status");
  if (!kafka) return;
  if (kafka.connected) {
    el.className = "status-chip kafka-ok";
    el.textContent = `Kafka · ${kafka.assigned_partitions} partitions`;
    el.title = `${kafka.bootstrap}: reading ${kafka.topics.join(", ")}` +
      (kafka.missing_topics.length ? `; missing: ${kafka.missing_topics.join(", ")}` : "");
  } else {
    el.className = "status-chip kafka-bad";
    el.textContent = "Kafka unreachable";
    el.title = `${kafka.bootstrap}: ${kafka.error || "no answer"}`;
  }
}

function banner(text) {
  const b = $("banner");
  b.textContent = text || "";
  b.hidden = !text;
}

// Goes to another tab, with a notice that stays until the next change of tab.
function navigate(hash, notice) {
  state.notice = notice || null;
  if (location.hash === hash) {
    banner(state.notice);
    state.notice = null;
    show(parseRoute(), true);
  } else {
    location.hash = hash;
  }
}

// ---- routing and tabs -----------------------------------------------------------------------

function parseRoute() {
  const hash = decodeURIComponent(location.hash || "");
  const m = hash.match(/^#\/app\/([^/]+\/[^/]+)$/);
  return m ? { kind: "app", id: m[1] } : { kind: "overview" };
}

function routeKey(r) {
  return r.kind === "app" ? `app:${r.id}` : "overview";
}

function renderTabs() {
  const nav = $("tabs");
  const apps = (state.registry && state.registry.applications) || [];
  const current = routeKey(state.route || { kind: "overview" });
  const tab = (key, href, label, title) =>
    h("a", { class: `tab ${key === current ? "active" : ""}`, href, title, role: "tab",
      "aria-selected": key === current ? "true" : "false", "data-tab": key }, label);
  nav.replaceChildren(
    tab("overview", "#/overview", "IoT Overview", "All device types, the whole pipeline"),
    ...apps.map((a) => tab(`app:${a.id}`, `#/app/${a.id}`, a.display_name,
      `${a.id}: ${a.device_types.map((t) => t.id).join(", ")}`))
  );
}

async function fetchRegistry() {
  const r = await fetch("/api/registry", { cache: "no-store" });
  if (!r.ok) throw new Error(`GET /api/registry: ${r.status}`);
  return r.json();
}

function applyRegistry(reg) {
  state.registry = reg;
  setKafka(reg.kafka);
  renderTabs();
  if (state.view && state.view.setRegistry) state.view.setRegistry(reg);
  const r = state.route;
  if (r && r.kind === "app") {
    const spec = reg.applications.find((a) => a.id === r.id);
    if (!spec) {
      navigate("#/overview", `Application ${r.id} is not active in the registry (any more); showing the Overview.`);
    } else if (JSON.stringify(spec) !== JSON.stringify(state.view && state.view.spec)) {
      show(r, true);
    }
  }
}

// ---- the live stream of the tab on screen ---------------------------------------------------

function closeStream() {
  if (state.es) state.es.close();
  state.es = null;
  clearTimeout(state.retryTimer);
}

function openStream(route) {
  closeStream();
  const app = route.kind === "app" ? route.id : "overview";
  const es = new EventSource(`/api/stream?app=${encodeURIComponent(app)}`);
  state.es = es;
  setConn("connecting", "Connecting…");
  const frame = (handler) => (ev) => {
    if (state.es !== es) return;
    state.lastFrameAt = Date.now();
    if (state.conn !== "live") setConn("live", "Live");
    let data;
    try {
      data = JSON.parse(ev.data);
    } catch (e) {
      return;
    }
    handler(data);
  };
  es.addEventListener("snapshot", frame((d) => {
    setKafka(d.kafka);
    state.view.snapshot(d);
  }));
  es.addEventListener("update", frame((d) => {
    setKafka(d.kafka);
    state.view.update(d);
  }));
  es.addEventListener("registry", frame((reg) => applyRegistry(reg)));
  es.addEventListener("gone", frame(() => {
    closeStream();
    navigate("#/overview", "This application was removed from the registry; showing the Overview.");
  }));
  es.onopen = () => {
    if (state.es !== es) return;
    if (state.hadError) {
      // Back after a drop: tabs may have changed meanwhile.
      state.hadError = false;
      fetchRegistry().then(applyRegistry).catch(() => {});
    }
  };
  es.onerror = () => {
    if (state.es !== es) return;
    state.hadError = true;
    if (es.readyState === EventSource.CLOSED) {
      // The server answered with an error: retry ourselves, the browser will not.
      setConn("offline", "Disconnected · retrying");
      state.retryTimer = setTimeout(() => {
        fetchRegistry().then((reg) => { applyRegistry(reg); if (state.es === es) openStream(state.route); })
          .catch(() => { if (state.es === es) openStream(state.route); });
      }, RETRY_CLOSED_MS);
    } else {
      setConn("reconnecting", "Reconnecting…");
    }
  };
}

function show(route, force) {
  if (!force && state.route && routeKey(route) === routeKey(state.route) && state.view) return;
  state.route = route;
  renderTabs();
  const root = $("view");
  root.replaceChildren();
  if (route.kind === "app") {
    const spec = state.registry && state.registry.applications.find((a) => a.id === route.id);
    if (!spec) {
      navigate("#/overview", `No active application ${route.id} in the registry; showing the Overview.`);
      return;
    }
    state.view = new AppView(root, spec);
    document.title = `${spec.display_name} · IoT Cloud`;
  } else {
    state.view = new OverviewView(root);
    if (state.registry) state.view.setRegistry(state.registry);
    document.title = "IoT Overview · IoT Cloud";
  }
  openStream(route);
}

// Staleness and "… ago" texts, once a second.
function heartbeat() {
  if (state.conn === "live" && Date.now() - state.lastFrameAt > STALE_AFTER_MS) {
    setConn("stale", `No update for ${Math.round((Date.now() - state.lastFrameAt) / 1000)} s`);
  } else if (state.conn === "stale" && Date.now() - state.lastFrameAt <= STALE_AFTER_MS) {
    setConn("live", "Live");
  }
  for (const el of document.querySelectorAll("[data-ago]")) {
    el.textContent = fmtAgo(Number(el.dataset.ago), Date.now());
  }
}

async function init() {
  const tz = Intl.DateTimeFormat().resolvedOptions().timeZone || "local time";
  const offset = -new Date().getTimezoneOffset();
  const sign = offset >= 0 ? "+" : "-";
  const hh = String(Math.floor(Math.abs(offset) / 60)).padStart(2, "0");
  const mm = String(Math.abs(offset) % 60).padStart(2, "0");
  $("tz").textContent = `${tz} (UTC${sign}${hh}:${mm})`;
  for (;;) {
    try {
      state.registry = await fetchRegistry();
      break;
    } catch (e) {
      setConn("offline", "Dashboard unreachable · retrying");
      await new Promise((r) => setTimeout(r, RETRY_CLOSED_MS));
    }
  }
  setKafka(state.registry.kafka);
  window.addEventListener("hashchange", () => {
    banner(state.notice);
    state.notice = null;
    show(parseRoute());
  });
  show(parseRoute());
  setInterval(heartbeat, 1000);
}

init();
