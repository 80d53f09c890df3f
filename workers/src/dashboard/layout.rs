//! What the dashboard reads and shows, derived from the registry document (a pure function): the
//! topics to consume, one tab per active Application with its device types and their chartable
//! fields, and which application tabs each per-device-type enriched topic feeds.
//!
//! Data isolation starts here: an application's tab is fed only from the enriched topics of its
//! own device types ([`Layout::classify`]), never from `{prefix}.enriched`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use iot_model::naming::{all_enriched_topic, deadletter_topic};
use iot_model::registry::{
    DataType, Measurement, Registry, RegistryApplication, RegistryDeviceType,
};
use serde::{Serialize, Serializer};

/// The device type that gets the seed's Smart Grid view (voltage, current, power, temperature).
pub const SMART_BREAKER: &str = "smart_breaker";

/// One numeric value a device type reports: a single-valued measurement (`frequency`), one phase
/// (`voltage.phase_a`) or one component (`power.active`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct FieldSpec {
    /// `measurement` or `measurement.part`.
    pub key: String,
    pub measurement: String,
    /// Phase or component, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unit: Option<String>,
    /// Declared range.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
}

/// Which view a device type gets in an application tab.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum View {
    /// The seed's Smart Grid Monitor view.
    SmartBreaker,
    /// Charts and ranges of the declared measurements.
    Generic,
}

/// A device type as an application tab shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppDeviceType {
    pub id: String,
    pub display_name: String,
    /// The only topic this device type's data is read from for the tab.
    pub topic: String,
    pub view: View,
    pub fields: Vec<FieldSpec>,
}

/// The tab of one active Application.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AppSpec {
    /// `namespace/name` of the Application object.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub display_name: String,
    pub developer: String,
    pub platform: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    pub version: String,
    pub device_types: Vec<AppDeviceType>,
}

impl AppSpec {
    pub fn device_type(&self, id: &str) -> Option<&AppDeviceType> {
        self.device_types.iter().find(|t| t.id == id)
    }
}

/// A registered device type as the Overview lists it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DeviceTypeInfo {
    pub id: String,
    pub display_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub update_frequency: Option<String>,
    pub raw_topic: String,
    pub enriched_topic: String,
    pub fields: Vec<FieldSpec>,
    /// Ids of the active applications registered for it.
    pub applications: Vec<String>,
}

/// Where a consumed record belongs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source<'a> {
    /// `{prefix}.enriched`: the Overview.
    AllEnriched,
    /// `{prefix}.deadletter`: the Overview.
    DeadLetter,
    /// `{prefix}.{type}.raw`: counted for the Overview's bridge stage.
    Raw { device_type: &'a str },
    /// `{prefix}.{type}.enriched`: the tabs of the applications registered for the type.
    TypeEnriched {
        device_type: &'a str,
        apps: &'a [String],
    },
    /// A topic the layout does not read (left over from a previous layout).
    Unknown,
}

/// Everything the dashboard derives from the registry.
#[derive(Clone, Debug, Default)]
pub struct Layout {
    pub prefix: String,
    pub all_enriched: String,
    pub deadletter: String,
    pub device_types: Vec<DeviceTypeInfo>,
    /// Sorted by display name, then id.
    pub apps: Vec<Arc<AppSpec>>,
    raw: HashMap<String, String>,
    enriched: HashMap<String, (String, Vec<String>)>,
}

impl Layout {
    /// The layout of `registry` (none: the Overview only) under the dashboard's topic prefix.
    pub fn new(registry: Option<&Registry>, prefix: &str) -> Self {
        let types: Vec<&RegistryDeviceType> = registry
            .map(|r| r.device_types.values().collect())
            .unwrap_or_default();
        let topics_of = |id: &str| {
            (
                format!("{prefix}.{id}.raw"),
                format!("{prefix}.{id}.enriched"),
            )
        };

        let mut apps: BTreeMap<&str, (&RegistryApplication, Vec<&RegistryDeviceType>)> =
            BTreeMap::new();
        for dt in &types {
            for app in &dt.applications {
                apps.entry(app.id.as_str())
                    .or_insert((app, Vec::new()))
                    .1
                    .push(dt);
            }
        }
        let mut app_specs: Vec<Arc<AppSpec>> = apps
            .into_values()
            .map(|(app, dts)| {
                let (namespace, name) = app.id.split_once('/').unwrap_or(("", app.id.as_str()));
                Arc::new(AppSpec {
                    id: app.id.clone(),
                    namespace: namespace.to_string(),
                    name: name.to_string(),
                    display_name: app.display_name.clone(),
                    developer: app.developer.clone(),
                    platform: serde_json::to_value(app.platform)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_string))
                        .unwrap_or_default(),
                    category: app.category.clone(),
                    version: app.version.clone(),
                    device_types: dts
                        .iter()
                        .map(|dt| AppDeviceType {
                            id: dt.id.clone(),
                            display_name: dt.display_name.clone(),
                            topic: topics_of(&dt.id).1,
                            view: if dt.id == SMART_BREAKER {
                                View::SmartBreaker
                            } else {
                                View::Generic
                            },
                            fields: fields(&dt.measurements),
                        })
                        .collect(),
                })
            })
            .collect();
        app_specs.sort_by(|a, b| (&a.display_name, &a.id).cmp(&(&b.display_name, &b.id)));

        let mut raw = HashMap::new();
        let mut enriched = HashMap::new();
        let mut device_types = Vec::new();
        for dt in &types {
            let (raw_topic, enriched_topic) = topics_of(&dt.id);
            raw.insert(raw_topic.clone(), dt.id.clone());
            let app_ids: Vec<String> = dt.applications.iter().map(|a| a.id.clone()).collect();
            if !app_ids.is_empty() {
                enriched.insert(enriched_topic.clone(), (dt.id.clone(), app_ids.clone()));
            }
            device_types.push(DeviceTypeInfo {
                id: dt.id.clone(),
                display_name: dt.display_name.clone(),
                description: dt.description.clone(),
                category: dt.category.clone(),
                update_frequency: dt.update_frequency.clone(),
                raw_topic,
                enriched_topic,
                fields: fields(&dt.measurements),
                applications: app_ids,
            });
        }
        Self {
            prefix: prefix.to_string(),
            all_enriched: all_enriched_topic(prefix),
            deadletter: deadletter_topic(prefix),
            device_types,
            apps: app_specs,
            raw,
            enriched,
        }
    }

    /// Every topic the dashboard consumes: the shared topics, each registered type's raw topic
    /// (counts only) and the enriched topics of the types that have an active application.
    pub fn topics(&self) -> BTreeSet<String> {
        [self.all_enriched.clone(), self.deadletter.clone()]
            .into_iter()
            .chain(self.raw.keys().cloned())
            .chain(self.enriched.keys().cloned())
            .collect()
    }

    pub fn classify(&self, topic: &str) -> Source<'_> {
        if topic == self.all_enriched {
            Source::AllEnriched
        } else if topic == self.deadletter {
            Source::DeadLetter
        } else if let Some(t) = self.raw.get(topic) {
            Source::Raw { device_type: t }
        } else if let Some((t, apps)) = self.enriched.get(topic) {
            Source::TypeEnriched {
                device_type: t,
                apps,
            }
        } else {
            Source::Unknown
        }
    }

    pub fn app(&self, id: &str) -> Option<&Arc<AppSpec>> {
        self.apps.iter().find(|a| a.id == id)
    }
}

/// Serializes an `Arc` as its contents (serde's `rc` feature is not enabled workspace-wide).
pub fn serialize_arc<S: Serializer, T: Serialize>(v: &Arc<T>, s: S) -> Result<S::Ok, S::Error> {
    T::serialize(v, s)
}

/// Serializes a list of `Arc`s as a list of their contents.
pub fn serialize_arcs<S: Serializer, T: Serialize>(v: &[Arc<T>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(|a| &**a))
}

fn numeric(data_type: Option<DataType>) -> bool {
    !matches!(data_type, Some(DataType::Boolean | DataType::String))
}

/// The numeric fields of declared measurements, in declaration (name) order. Components without a
/// range of their own take the measurement's, as the enrichment's range check does.
pub fn fields(measurements: &BTreeMap<String, Measurement>) -> Vec<FieldSpec> {
    let mut out = Vec::new();
    for (name, m) in measurements {
        let field = |part: Option<&str>, unit: &Option<String>, min, max| FieldSpec {
            key: part.map_or_else(|| name.clone(), |p| format!("{name}.{p}")),
            measurement: name.clone(),
            part: part.map(str::to_string),
            unit: unit.clone().or_else(|| m.unit.clone()),
            min,
            max,
        };
        if m.phases.is_empty() && m.components.is_empty() {
            if numeric(m.data_type) {
                out.push(field(None, &None, m.min, m.max));
            }
            continue;
        }
        for phase in &m.phases {
            if numeric(m.data_type) {
                out.push(field(Some(phase), &None, m.min, m.max));
            }
        }
        for (part, c) in &m.components {
            if !numeric(c.data_type.or(m.data_type)) {
                continue;
            }
            let (min, max) = if c.min.is_none() && c.max.is_none() {
                (m.min, m.max)
            } else {
                (c.min, c.max)
            };
            out.push(field(Some(part), &c.unit, min, max));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::fixtures::sample_registry;

    use super::*;

    fn keys(fields: &[FieldSpec]) -> Vec<&str> {
        fields.iter().map(|f| f.key.as_str()).collect()
    }

    #[test]
    fn one_tab_per_active_application_with_its_device_types() {
        let layout = Layout::new(Some(&sample_registry("p")), "p");
        let tabs: Vec<(&str, Vec<&str>)> = layout
            .apps
            .iter()
            .map(|a| {
                (
                    a.display_name.as_str(),
                    a.device_types.iter().map(|t| t.id.as_str()).collect(),
                )
            })
            .collect();
        assert_eq!(
            tabs,
            [
                ("Energy Analytics", vec!["smart_meter"]),
                ("Environmental Tracker", vec!["environmental_sensor"]),
                ("Smart Grid Monitor", vec!["smart_breaker"]),
            ]
        );
        let grid = layout.app("default/smart-grid-monitor").unwrap();
        assert_eq!(
            (grid.namespace.as_str(), grid.name.as_str()),
            ("default", "smart-grid-monitor")
        );
        assert_eq!(grid.platform, "web");
        assert_eq!(grid.device_types[0].view, View::SmartBreaker);
        assert_eq!(grid.device_types[0].topic, "p.smart_breaker.enriched");
        assert_eq!(
            layout.app("default/energy-analytics").unwrap().device_types[0].view,
            View::Generic
        );
    }

    #[test]
    fn each_enriched_topic_feeds_only_the_applications_of_its_type() {
        let layout = Layout::new(Some(&sample_registry("p")), "p");
        assert_eq!(
            layout.classify("p.smart_breaker.enriched"),
            Source::TypeEnriched {
                device_type: "smart_breaker",
                apps: &["default/smart-grid-monitor".to_string()]
            }
        );
        assert_eq!(layout.classify("p.enriched"), Source::AllEnriched);
        assert_eq!(layout.classify("p.deadletter"), Source::DeadLetter);
        assert_eq!(
            layout.classify("p.smart_meter.raw"),
            Source::Raw {
                device_type: "smart_meter"
            }
        );
        assert_eq!(layout.classify("q.smart_meter.raw"), Source::Unknown);
        let topics = layout.topics();
        assert_eq!(topics.len(), 2 + 3 + 3);
        assert!(topics.contains("p.environmental_sensor.enriched"));
    }

    #[test]
    fn a_type_without_applications_is_counted_but_feeds_no_tab() {
        let mut registry = sample_registry("p");
        registry
            .device_types
            .get_mut("smart_meter")
            .unwrap()
            .applications
            .clear();
        let layout = Layout::new(Some(&registry), "p");
        assert_eq!(layout.apps.len(), 2);
        assert_eq!(layout.classify("p.smart_meter.enriched"), Source::Unknown);
        assert!(!layout.topics().contains("p.smart_meter.enriched"));
        assert!(layout.topics().contains("p.smart_meter.raw"));
        assert_eq!(layout.device_types.len(), 3);
    }

    #[test]
    fn without_a_registry_only_the_shared_topics_are_read() {
        let layout = Layout::new(None, "iot");
        assert!(layout.apps.is_empty());
        assert_eq!(
            layout.topics().into_iter().collect::<Vec<_>>(),
            ["iot.deadletter", "iot.enriched"]
        );
    }

    #[test]
    fn numeric_fields_of_phases_components_and_single_values() {
        let registry = sample_registry("p");
        let breaker = fields(&registry.device_types["smart_breaker"].measurements);
        let k = keys(&breaker);
        for expected in [
            "voltage.phase_a",
            "voltage.phase_c",
            "current.phase_b",
            "power.active",
            "power.factor",
            "frequency",
            "temperature",
            "status.breaker",
            "protection.trip_count",
            "operational.load_percentage",
        ] {
            assert!(k.contains(&expected), "{expected} in {k:?}");
        }
        // Booleans are not charted.
        assert!(!k.contains(&"protection.arc_fault_detected"));
        assert!(!k.contains(&"operational.maintenance_due"));
        let voltage = breaker.iter().find(|f| f.key == "voltage.phase_a").unwrap();
        assert_eq!(
            (voltage.unit.as_deref(), voltage.min, voltage.max),
            (Some("V"), Some(110.0), Some(130.0))
        );
        let active = breaker.iter().find(|f| f.key == "power.active").unwrap();
        assert_eq!(
            (active.unit.as_deref(), active.max),
            (Some("W"), Some(12000.0))
        );
        let meter = fields(&registry.device_types["smart_meter"].measurements);
        assert_eq!(keys(&meter), ["demand", "energy", "power_factor"]);
    }
}
