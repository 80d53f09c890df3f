//! The dashboard's HTTP side: the page and its assets (embedded in the binary: clusters are often
//! offline, so nothing comes from a CDN), the JSON API and the live streams (server-sent events).
//! The routes are documented in `docs/DASHBOARD_API.md`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio_util::sync::CancellationToken;

use super::hub::{Frame, Hub, StreamId};
use super::layout::AppSpec;
use super::source::now_ms;

/// How long a browser waits before reconnecting a dropped stream.
const RECONNECT_AFTER: Duration = Duration::from_secs(2);

/// The page's only sources are the dashboard itself: no inline script, no external origin, so
/// that even a rendering mistake could not run a device's payload as code.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static str,
}

const JS: &str = "text/javascript; charset=utf-8";

/// The page's files, in the binary.
macro_rules! assets {
    ($(($path:literal, $type:expr)),* $(,)?) => {
        &[$(Asset { path: $path, content_type: $type, body: include_str!(concat!("assets/", $path)) }),*]
    };
}

const ASSETS: &[Asset] = assets![
    ("app.js", JS),
    ("widgets.js", JS),
    ("overview.js", JS),
    ("application.js", JS),
    ("charts.js", JS),
    ("series.js", JS),
    ("app.css", "text/css; charset=utf-8"),
    ("favicon.svg", "image/svg+xml"),
];

const INDEX_HTML: &str = include_str!("assets/index.html");

#[derive(Clone)]
struct AppState {
    hub: Arc<Hub>,
    stop: CancellationToken,
}

/// The page, the API and the streams (the admin routes are merged in by the caller).
pub fn router(hub: Arc<Hub>, stop: CancellationToken) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/assets/{file}", get(asset))
        .route("/api/registry", get(registry))
        .route("/api/overview", get(overview))
        .route("/api/applications", get(applications))
        .route("/api/apps/{namespace}/{name}/snapshot", get(app_snapshot))
        .route("/api/stream", get(stream))
        .with_state(AppState { hub, stop })
}

fn secured(mut response: Response) -> Response {
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

async fn index() -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            INDEX_HTML,
        )
            .into_response(),
    )
}

async fn asset(Path(file): Path<String>) -> Response {
    match ASSETS.iter().find(|a| a.path == file) {
        Some(a) => secured(([(header::CONTENT_TYPE, a.content_type)], a.body).into_response()),
        None => (StatusCode::NOT_FOUND, "no such asset").into_response(),
    }
}

/// A frame's JSON as an HTTP response.
fn json_frame(frame: Frame) -> Response {
    secured(
        (
            [(header::CONTENT_TYPE, "application/json")],
            frame.data.to_string(),
        )
            .into_response(),
    )
}

async fn registry(State(s): State<AppState>) -> Response {
    secured(axum::Json(s.hub.registry()).into_response())
}

async fn applications(State(s): State<AppState>) -> Response {
    let apps: Vec<AppSpec> = s
        .hub
        .registry()
        .applications
        .iter()
        .map(|a| AppSpec::clone(a))
        .collect();
    secured(axum::Json(apps).into_response())
}

async fn overview(State(s): State<AppState>) -> Response {
    match s.hub.snapshot(&StreamId::Overview, now_ms()) {
        Some(frame) => json_frame(frame),
        None => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn no_such_app(id: &str) -> Response {
    (
        StatusCode::NOT_FOUND,
        format!("no active application {id:?} in the registry"),
    )
        .into_response()
}

async fn app_snapshot(
    State(s): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Response {
    let id = format!("{namespace}/{name}");
    match s.hub.snapshot(&StreamId::App(id.clone()), now_ms()) {
        Some(frame) => json_frame(frame),
        None => no_such_app(&id),
    }
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    /// `overview` (default) or an application id `namespace/name`.
    app: Option<String>,
}

/// Counts open streams for as long as it lives.
struct ClientGuard(prometheus::IntGauge);

impl Drop for ClientGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}

struct Follow {
    hub: Arc<Hub>,
    id: StreamId,
    rx: tokio::sync::broadcast::Receiver<Frame>,
    first: Option<Frame>,
    done: bool,
    _guard: ClientGuard,
}

fn event(frame: &Frame) -> Event {
    Event::default().event(frame.event).data(&*frame.data)
}

/// The next frame of one stream: its snapshot, then updates; a fresh snapshot after falling
/// behind; `gone` (then the end) when the application is removed.
async fn next_frame(f: &mut Follow) -> Option<Frame> {
    if f.done {
        return None;
    }
    if let Some(first) = f.first.take() {
        return Some(first);
    }
    let frame = match f.rx.recv().await {
        Ok(frame) => frame,
        Err(RecvError::Lagged(_)) => match f.hub.snapshot(&f.id, now_ms()) {
            Some(snapshot) => snapshot,
            None => gone(&f.id),
        },
        Err(RecvError::Closed) => gone(&f.id),
    };
    f.done = frame.event == "gone";
    Some(frame)
}

fn frames(follow: Follow) -> impl Stream<Item = Result<Event, Infallible>> {
    futures::stream::unfold(follow, |mut f| async move {
        let first = f.first.is_some();
        let frame = next_frame(&mut f).await?;
        let event = event(&frame);
        // The first frame tells the browser how soon to reconnect after a drop.
        let event = if first {
            event.retry(RECONNECT_AFTER)
        } else {
            event
        };
        Some((Ok(event), f))
    })
}

fn gone(id: &StreamId) -> Frame {
    let app = match id {
        StreamId::Overview => "overview",
        StreamId::App(a) => a,
    };
    Frame {
        event: "gone",
        data: serde_json::json!({ "app": app }).to_string().into(),
    }
}

async fn stream(State(s): State<AppState>, Query(q): Query<StreamQuery>) -> Response {
    let id = match q.app.as_deref() {
        None | Some("overview") => StreamId::Overview,
        Some(app) => StreamId::App(app.to_string()),
    };
    let Some((rx, snapshot)) = s.hub.subscribe(&id, now_ms()) else {
        return no_such_app(q.app.as_deref().unwrap_or_default());
    };
    let gauge = s.hub.metrics.stream_clients.clone();
    gauge.inc();
    let follow = Follow {
        hub: s.hub.clone(),
        id,
        rx,
        first: Some(snapshot),
        done: false,
        _guard: ClientGuard(gauge),
    };
    // Streams end when the process stops, so that the graceful shutdown does not wait for them.
    let stop = s.stop.clone();
    let body = frames(follow).take_until(async move { stop.cancelled().await });
    let mut response = Sse::new(body)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    // Proxies must not buffer the stream.
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dashboard::hub::{KafkaStatus, RegistryStatus};
    use crate::dashboard::layout::Layout;
    use crate::fixtures::sample_registry;

    fn follow(hub: &Arc<Hub>, id: StreamId) -> Follow {
        let (rx, first) = hub.subscribe(&id, 0).unwrap();
        Follow {
            hub: hub.clone(),
            id,
            rx,
            first: Some(first),
            done: false,
            _guard: ClientGuard(hub.metrics.stream_clients.clone()),
        }
    }

    #[tokio::test]
    async fn a_client_that_falls_behind_gets_a_fresh_snapshot() {
        let layout = Layout::new(Some(&sample_registry("p")), "p");
        let hub = Arc::new(Hub::new(
            layout,
            KafkaStatus::default(),
            RegistryStatus::default(),
            0,
        ));
        let mut f = follow(&hub, StreamId::Overview);
        for second in 0..100 {
            hub.tick(second * 1000);
        }
        let events: Vec<&str> = [
            next_frame(&mut f).await.unwrap(),
            next_frame(&mut f).await.unwrap(),
            next_frame(&mut f).await.unwrap(),
        ]
        .iter()
        .map(|f| f.event)
        .collect();
        assert_eq!(events, ["snapshot", "snapshot", "update"]);
    }

    #[tokio::test]
    async fn the_stream_of_a_removed_application_ends_with_gone() {
        let registry = sample_registry("p");
        let hub = Arc::new(Hub::new(
            Layout::new(Some(&registry), "p"),
            KafkaStatus::default(),
            RegistryStatus::default(),
            0,
        ));
        let mut f = follow(&hub, StreamId::App("default/smart-grid-monitor".into()));
        assert_eq!(next_frame(&mut f).await.unwrap().event, "snapshot");
        hub.set_layout(Layout::new(None, "p"), RegistryStatus::default(), 0);
        assert_eq!(next_frame(&mut f).await.unwrap().event, "gone");
        assert!(next_frame(&mut f).await.is_none());
    }

    #[test]
    fn every_file_the_page_names_is_served() {
        let mut names: Vec<&str> = INDEX_HTML
            .split("/assets/")
            .skip(1)
            .map(|rest| rest.split('"').next().unwrap())
            .collect();
        assert!(names.len() >= 3, "{names:?}");
        // The modules the scripts import (`from "./x.js"`).
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            names.extend(
                a.body
                    .split("from \"./")
                    .skip(1)
                    .map(|rest| rest.split('"').next().unwrap()),
            );
        }
        assert!(names.contains(&"series.js"), "{names:?}");
        for name in names {
            assert!(
                ASSETS.iter().any(|a| a.path == name),
                "{name} is not served"
            );
        }
    }

    #[test]
    fn scripts_never_parse_data_as_markup() {
        for a in ASSETS.iter().filter(|a| a.content_type == JS) {
            for sink in [
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
            ] {
                assert!(!a.body.contains(sink), "{} uses {sink}", a.path);
            }
        }
        assert!(
            !INDEX_HTML.contains("<script>"),
            "no inline script (the CSP forbids it)"
        );
        assert!(
            !INDEX_HTML.contains("http://") && !INDEX_HTML.contains("https://"),
            "no CDN"
        );
    }
}
