//! The dashboard's shared state between the Kafka consumer (which feeds it), the ticker (which
//! pushes an update every second) and the HTTP handlers (snapshots and live streams).
//!
//! Each stream has its own broadcast channel: the Overview's, and one per application tab. An
//! application's frames are built from that application's state only, so a client of one tab
//! never receives another tab's data. Channels are bounded; a client that falls behind gets a
//! fresh snapshot instead of the frames it missed.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use tokio::sync::{broadcast, watch};

use super::app_view::AppState;
use super::layout::{AppSpec, DeviceTypeInfo, Layout, Source};
use super::message::{self, Record};
use super::metrics::DashboardMetrics;
use super::overview::Overview;

/// Frames buffered per stream before a slow client is resynchronised with a snapshot.
const CHANNEL_CAPACITY: usize = 64;

/// One server-sent event: its name and JSON data.
#[derive(Clone, Debug)]
pub struct Frame {
    pub event: &'static str,
    pub data: Arc<str>,
}

impl Frame {
    fn json(event: &'static str, value: &impl Serialize) -> Self {
        let data = serde_json::to_string(value).expect("views serialize");
        Self {
            event,
            data: data.into(),
        }
    }
}

/// Which stream a client follows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamId {
    Overview,
    App(String),
}

/// The Kafka side as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct KafkaStatus {
    pub bootstrap: String,
    /// The last metadata request succeeded.
    pub connected: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub assigned_partitions: usize,
    /// Topics read (those that exist).
    pub topics: Vec<String>,
    /// Topics the registry names that do not exist (yet).
    pub missing_topics: Vec<String>,
    /// When this was last checked (Unix milliseconds).
    pub checked_at: Option<i64>,
}

/// The registry file as the page shows it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct RegistryStatus {
    pub path: String,
    /// When the registry in use was loaded (Unix milliseconds).
    pub loaded_at: Option<i64>,
    /// Why the file cannot be used (missing, invalid), if so.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The registry was written for another topic prefix.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}

/// `GET /api/registry` and the `registry` event: what the tabs are made of.
#[derive(Clone, Debug, Serialize)]
pub struct RegistryView {
    pub topic_prefix: String,
    pub status: RegistryStatus,
    pub kafka: KafkaStatus,
    pub device_types: Vec<DeviceTypeInfo>,
    #[serde(serialize_with = "super::layout::serialize_arcs")]
    pub applications: Vec<Arc<AppSpec>>,
}

/// A view with the connection and registry state the page shows on every tab.
#[derive(Serialize)]
struct WithStatus<'a, V: Serialize> {
    #[serde(flatten)]
    view: V,
    kafka: &'a KafkaStatus,
    registry: &'a RegistryStatus,
}

struct AppSlot {
    state: AppState,
    tx: broadcast::Sender<Frame>,
    sent_seq: u64,
}

struct Inner {
    layout: Arc<Layout>,
    overview: Overview,
    overview_sent_seq: u64,
    apps: BTreeMap<String, AppSlot>,
    kafka: KafkaStatus,
    registry: RegistryStatus,
}

pub struct Hub {
    inner: Mutex<Inner>,
    overview_tx: broadcast::Sender<Frame>,
    layout_tx: watch::Sender<Arc<Layout>>,
    pub metrics: DashboardMetrics,
}

impl Hub {
    pub fn new(layout: Layout, kafka: KafkaStatus, registry: RegistryStatus, now_ms: i64) -> Self {
        let layout = Arc::new(layout);
        let apps = layout
            .apps
            .iter()
            .map(|spec| (spec.id.clone(), new_slot(spec.clone(), now_ms)))
            .collect();
        Self {
            inner: Mutex::new(Inner {
                layout: layout.clone(),
                overview: Overview::new(now_ms),
                overview_sent_seq: 0,
                apps,
                kafka,
                registry,
            }),
            overview_tx: broadcast::channel(CHANNEL_CAPACITY).0,
            layout_tx: watch::channel(layout).0,
            metrics: DashboardMetrics::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The state stays usable after a panic elsewhere: it is only counters and lists.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The layout, followed by the consumer to know which topics to read.
    pub fn layout(&self) -> watch::Receiver<Arc<Layout>> {
        self.layout_tx.subscribe()
    }

    /// Feeds one consumed record to the Overview or to the tabs its topic belongs to. The payload
    /// is parsed before the state is locked, so that streams are not held up by parsing.
    pub fn ingest(&self, record: &Record, now_ms: i64) {
        let layout = self.lock().layout.clone();
        let source = match layout.classify(&record.topic) {
            Source::AllEnriched => {
                let parsed = message::parse(&record.payload);
                self.lock()
                    .overview
                    .ingest_enriched(record, &parsed, now_ms);
                "enriched"
            }
            Source::DeadLetter => {
                self.lock().overview.ingest_deadletter(record, now_ms);
                "deadletter"
            }
            Source::Raw { device_type } => {
                self.lock().overview.ingest_raw(device_type, now_ms);
                "raw"
            }
            Source::TypeEnriched { device_type, apps } => {
                let parsed = message::parse(&record.payload);
                let mut inner = self.lock();
                for id in apps {
                    // A tab removed meanwhile has no slot any more.
                    let Some(slot) = inner.apps.get_mut(id) else {
                        continue;
                    };
                    if let Err(foreign) = slot.state.ingest(device_type, record, &parsed, now_ms) {
                        self.metrics.isolation_drops.inc();
                        tracing::warn!(
                            topic = %record.topic,
                            app = %id,
                            payload_device_type = ?foreign.device_type,
                            "record names another device type than its topic; not shown"
                        );
                    }
                }
                "app"
            }
            Source::Unknown => return,
        };
        self.metrics.records.with_label_values(&[source]).inc();
    }

    /// Applies a new registry: new tabs get a fresh state, removed tabs tell their clients they are
    /// gone, changed tabs start over; every client learns the new list of tabs.
    pub fn set_layout(&self, layout: Layout, status: RegistryStatus, now_ms: i64) {
        let layout = Arc::new(layout);
        let mut inner = self.lock();
        inner.registry = status;
        let mut apps = std::mem::take(&mut inner.apps);
        for (id, slot) in &apps {
            if layout.app(id).is_none() {
                let _ = slot
                    .tx
                    .send(Frame::json("gone", &serde_json::json!({ "app": id })));
            }
        }
        for spec in &layout.apps {
            let slot = match apps.remove(&spec.id) {
                Some(slot) if slot.state.spec() == spec => slot,
                Some(mut slot) => {
                    // Device types or fields changed: start over, and tell the clients.
                    slot.state = AppState::new(spec.clone(), now_ms);
                    slot.sent_seq = 0;
                    let view = slot.state.view(now_ms, None);
                    let frame = Frame::json("snapshot", &with_status(&inner, view));
                    let _ = slot.tx.send(frame);
                    slot
                }
                None => new_slot(spec.clone(), now_ms),
            };
            inner.apps.insert(spec.id.clone(), slot);
        }
        inner.layout = layout.clone();
        let registry = Frame::json("registry", &registry_view(&inner));
        let _ = self.overview_tx.send(registry.clone());
        for slot in inner.apps.values() {
            let _ = slot.tx.send(registry.clone());
        }
        drop(inner);
        self.layout_tx.send_replace(layout);
    }

    pub fn set_kafka(&self, kafka: KafkaStatus) {
        self.metrics.kafka_connected.set(i64::from(kafka.connected));
        self.metrics
            .assigned_partitions
            .set(i64::try_from(kafka.assigned_partitions).unwrap_or(i64::MAX));
        self.lock().kafka = kafka;
    }

    pub fn set_registry_status(&self, status: RegistryStatus) {
        self.lock().registry = status;
    }

    pub fn registry(&self) -> RegistryView {
        registry_view(&self.lock())
    }

    /// Pushes one update to every stream (the Overview's and each tab's).
    pub fn tick(&self, now_ms: i64) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let since = inner.overview_sent_seq;
        let view = inner.overview.view(now_ms, Some(since));
        inner.overview_sent_seq = view.last_seq;
        let _ = self.overview_tx.send(Frame::json(
            "update",
            &WithStatus {
                view,
                kafka: &inner.kafka,
                registry: &inner.registry,
            },
        ));
        for slot in inner.apps.values_mut() {
            let view = slot.state.view(now_ms, Some(slot.sent_seq));
            slot.sent_seq = view.last_seq;
            let frame = Frame::json(
                "update",
                &WithStatus {
                    view,
                    kafka: &inner.kafka,
                    registry: &inner.registry,
                },
            );
            let _ = slot.tx.send(frame);
        }
        self.metrics
            .set_devices(&inner.overview.devices().counts_by_type());
    }

    /// The full current view of a stream, as JSON (`None`: no such application).
    pub fn snapshot(&self, stream: &StreamId, now_ms: i64) -> Option<Frame> {
        let inner = self.lock();
        snapshot(&inner, stream, now_ms)
    }

    /// Subscribes to a stream and takes its snapshot at the same time, so nothing falls between
    /// them (entries in both are told apart by `seq`).
    pub fn subscribe(
        &self,
        stream: &StreamId,
        now_ms: i64,
    ) -> Option<(broadcast::Receiver<Frame>, Frame)> {
        let inner = self.lock();
        let rx = match stream {
            StreamId::Overview => self.overview_tx.subscribe(),
            StreamId::App(id) => inner.apps.get(id)?.tx.subscribe(),
        };
        Some((rx, snapshot(&inner, stream, now_ms)?))
    }
}

fn new_slot(spec: Arc<AppSpec>, now_ms: i64) -> AppSlot {
    AppSlot {
        state: AppState::new(spec, now_ms),
        tx: broadcast::channel(CHANNEL_CAPACITY).0,
        sent_seq: 0,
    }
}

fn with_status<V: Serialize>(inner: &Inner, view: V) -> WithStatus<'_, V> {
    WithStatus {
        view,
        kafka: &inner.kafka,
        registry: &inner.registry,
    }
}

fn snapshot(inner: &Inner, stream: &StreamId, now_ms: i64) -> Option<Frame> {
    Some(match stream {
        StreamId::Overview => {
            let view = inner.overview.view(now_ms, None);
            Frame::json("snapshot", &with_status(inner, view))
        }
        StreamId::App(id) => {
            let view = inner.apps.get(id)?.state.view(now_ms, None);
            Frame::json("snapshot", &with_status(inner, view))
        }
    })
}

fn registry_view(inner: &Inner) -> RegistryView {
    RegistryView {
        topic_prefix: inner.layout.prefix.clone(),
        status: inner.registry.clone(),
        kafka: inner.kafka.clone(),
        device_types: inner.layout.device_types.clone(),
        applications: inner.layout.apps.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::sample_registry;

    const T0: i64 = 1_700_000_000_000;
    const GRID: &str = "default/smart-grid-monitor";

    fn hub(prefix: &str) -> Hub {
        let layout = Layout::new(Some(&sample_registry(prefix)), prefix);
        Hub::new(
            layout,
            KafkaStatus::default(),
            RegistryStatus::default(),
            T0,
        )
    }

    fn record(topic: &str, device_type: &str, id: &str) -> Record {
        Record {
            topic: topic.into(),
            payload: format!(
                r#"{{"device_id":"{id}","device_type":"{device_type}","event_type":"telemetry"}}"#
            )
            .into_bytes(),
            ..Record::default()
        }
    }

    fn drain(rx: &mut broadcast::Receiver<Frame>) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Ok(f) = rx.try_recv() {
            out.push(f);
        }
        out
    }

    #[test]
    fn a_tab_receives_only_its_own_device_types() {
        let hub = hub("p");
        let (mut grid, snapshot) = hub.subscribe(&StreamId::App(GRID.into()), T0).unwrap();
        assert_eq!(snapshot.event, "snapshot");
        let (mut overview, _) = hub.subscribe(&StreamId::Overview, T0).unwrap();
        for (t, id) in [
            ("smart_breaker", "b-1"),
            ("smart_meter", "m-1"),
            ("environmental_sensor", "s-1"),
        ] {
            hub.ingest(&record(&format!("p.{t}.enriched"), t, id), T0);
            hub.ingest(&record("p.enriched", t, id), T0);
        }
        // Misrouted: a meter message in the breaker topic.
        hub.ingest(
            &record("p.smart_breaker.enriched", "smart_meter", "m-2"),
            T0,
        );
        hub.tick(T0 + 1_000);
        let frames = drain(&mut grid);
        assert_eq!(frames.len(), 1);
        assert!(frames[0].data.contains("b-1"));
        for other in ["m-1", "m-2", "s-1"] {
            assert!(
                !frames[0].data.contains(other),
                "{other} in {}",
                frames[0].data
            );
        }
        assert_eq!(hub.metrics.isolation_drops.get(), 1);
        let frames = drain(&mut overview);
        for id in ["b-1", "m-1", "s-1"] {
            assert!(frames[0].data.contains(id));
        }
        assert!(
            hub.subscribe(&StreamId::App("default/nope".into()), T0)
                .is_none()
        );
    }

    #[test]
    fn tabs_follow_the_registry() {
        let hub = hub("p");
        let (mut grid, _) = hub.subscribe(&StreamId::App(GRID.into()), T0).unwrap();
        let mut registry = sample_registry("p");
        registry
            .device_types
            .get_mut("smart_breaker")
            .unwrap()
            .applications
            .clear();
        let mut meter_app = registry.device_types["smart_meter"].applications[0].clone();
        meter_app.id = "iot/new-app".into();
        meter_app.display_name = "New App".into();
        registry
            .device_types
            .get_mut("smart_meter")
            .unwrap()
            .applications
            .push(meter_app);
        let mut layout_rx = hub.layout();
        hub.set_layout(
            Layout::new(Some(&registry), "p"),
            RegistryStatus::default(),
            T0,
        );

        let events: Vec<&str> = drain(&mut grid).iter().map(|f| f.event).collect();
        assert_eq!(events, ["gone"]);
        assert!(hub.subscribe(&StreamId::App(GRID.into()), T0).is_none());
        assert!(
            hub.subscribe(&StreamId::App("iot/new-app".into()), T0)
                .is_some()
        );
        let names: Vec<String> = hub
            .registry()
            .applications
            .iter()
            .map(|a| a.display_name.clone())
            .collect();
        assert_eq!(
            names,
            ["Energy Analytics", "Environmental Tracker", "New App"]
        );
        assert!(layout_rx.has_changed().unwrap());
        assert!(
            !layout_rx
                .borrow_and_update()
                .topics()
                .contains("p.smart_breaker.enriched")
        );
    }
}
