//! Size limits of the free-text and list fields, enforced by the API server at `kubectl apply`
//! (`maxLength`, `maxItems`, `maxProperties`, and CEL rules where the schema cannot say it) and
//! repeated in [`super::validate`].
//!
//! They exist for the registry: every DeviceType is copied into the ConfigMap the workers mount,
//! and a ConfigMap holds at most 1 MiB. Unbounded fields let a single object (a 1 MB
//! `description`) break the registry for everyone. With these limits the largest valid DeviceType
//! ([`largest_device_type_spec`]) adds a bounded amount to the registry
//! (`registry_size_of_the_largest_valid_device_type` in `crate::registry`), documented with the
//! typical sizes in the README ("The registry's size").
//!
//! Lengths are in characters (Unicode code points), as the API server counts them.

use super::DeviceTypeSpec;

/// Short names and labels: `category`, capabilities, locations, measurement and component names,
/// phases, `dataFormat`, `updateFrequency`, `retentionPolicy`, models, protocols, rating keys.
pub const NAME_MAX_LENGTH: usize = 64;
/// `displayName` of both kinds and the manufacturer's and rating values.
pub const DISPLAY_NAME_MAX_LENGTH: usize = 100;
/// `description` of both kinds: a paragraph.
pub const DESCRIPTION_MAX_LENGTH: usize = 1024;
/// Units of measurements and components, e.g. `kWh`, `µg/m³`.
pub const UNIT_MAX_LENGTH: usize = 32;
/// Each string in `validValues`.
pub const VALID_VALUE_MAX_LENGTH: usize = 32;

/// `capabilities`.
pub const CAPABILITIES_MAX_ITEMS: usize = 32;
/// `locations`.
pub const LOCATIONS_MAX_ITEMS: usize = 64;
/// `manufacturers`.
pub const MANUFACTURERS_MAX_ITEMS: usize = 16;
/// `models` of one manufacturer.
pub const MODELS_MAX_ITEMS: usize = 32;
/// `ratings` of one manufacturer.
pub const RATINGS_MAX_PROPERTIES: usize = 16;
/// `measurements` (also bounds the cost of the CEL range rules).
pub const MEASUREMENTS_MAX_PROPERTIES: usize = 64;
/// `components` of one measurement (also bounds the cost of the CEL range rules).
pub const COMPONENTS_MAX_PROPERTIES: usize = 32;
/// `components` of all measurements of a DeviceType together: 64 measurements of 32 components
/// would be 2,048 of them.
pub const COMPONENTS_TOTAL_MAX: usize = 64;
/// `phases` of one measurement.
pub const PHASES_MAX_ITEMS: usize = 8;
/// `validValues` of one measurement or component.
pub const VALID_VALUES_MAX_ITEMS: usize = 16;
/// Each value of `topics.config` (not in the registry; bounds the object).
pub const TOPIC_CONFIG_VALUE_MAX_LENGTH: usize = 1024;

/// CEL: every key of a map (measurements, components, ratings) is 1-[`NAME_MAX_LENGTH`]
/// characters long. Structural schemas cannot constrain map keys otherwise.
pub const KEYS_ARE_NAMES: &str = "self.all(k, size(k) >= 1 && size(k) <= 64)";
/// CEL: at most [`COMPONENTS_TOTAL_MAX`] components over all measurements.
pub const COMPONENTS_TOTAL: &str =
    "self.map(k, has(self[k].components) ? size(self[k].components) : 0).sum() <= 64";
/// Its message.
pub const COMPONENTS_TOTAL_MESSAGE: &str =
    "at most 64 components over all measurements of a device type";

/// The largest DeviceType spec these limits allow, with id `device_type` and every string made by
/// `text(n)` (which must return `n` characters; map keys get a distinct prefix): for measuring the
/// registry's worst case and for testing that the API server accepts it. Its topics keep their
/// defaults (their settings are not in the registry).
pub fn largest_device_type_spec(
    device_type: &str,
    text: &mut dyn FnMut(usize) -> String,
) -> DeviceTypeSpec {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

    use super::{DataType, Manufacturer, Measurement, MeasurementComponent};

    /// `n` characters starting with `i`, so that map keys differ.
    fn key(i: usize, text: &mut dyn FnMut(usize) -> String) -> String {
        let prefix = format!("k{i:03}");
        prefix.clone() + &text(NAME_MAX_LENGTH - prefix.len())
    }
    let names = |n: usize, text: &mut dyn FnMut(usize) -> String| -> Vec<String> {
        (0..n).map(|_| text(NAME_MAX_LENGTH)).collect()
    };
    let valid_values = |text: &mut dyn FnMut(usize) -> String| -> Vec<IntOrString> {
        (0..VALID_VALUES_MAX_ITEMS)
            .map(|_| IntOrString::String(text(VALID_VALUE_MAX_LENGTH)))
            .collect()
    };
    // The longest numbers serde_json writes.
    let (min, max) = (Some(-f64::MAX), Some(f64::MAX));
    let mut measurements = BTreeMap::new();
    let mut components_left = COMPONENTS_TOTAL_MAX;
    for i in 0..MEASUREMENTS_MAX_PROPERTIES {
        let mut components = BTreeMap::new();
        for j in 0..COMPONENTS_MAX_PROPERTIES.min(components_left) {
            let component = MeasurementComponent {
                unit: Some(text(UNIT_MAX_LENGTH)),
                min,
                max,
                data_type: Some(DataType::Integer),
                valid_values: valid_values(text),
            };
            components.insert(key(j, text), component);
        }
        components_left -= components.len();
        let measurement = Measurement {
            unit: Some(text(UNIT_MAX_LENGTH)),
            min,
            max,
            data_type: Some(DataType::Integer),
            phases: names(PHASES_MAX_ITEMS, text),
            components,
            valid_values: valid_values(text),
        };
        measurements.insert(key(i, text), measurement);
    }
    let manufacturers = (0..MANUFACTURERS_MAX_ITEMS)
        .map(|_| Manufacturer {
            name: text(DISPLAY_NAME_MAX_LENGTH),
            models: names(MODELS_MAX_ITEMS, text),
            ratings: (0..RATINGS_MAX_PROPERTIES)
                .map(|i| (key(i, text), text(DISPLAY_NAME_MAX_LENGTH)))
                .collect(),
            protocol: Some(text(NAME_MAX_LENGTH)),
        })
        .collect();
    DeviceTypeSpec {
        device_type: device_type.into(),
        display_name: text(DISPLAY_NAME_MAX_LENGTH),
        description: Some(text(DESCRIPTION_MAX_LENGTH)),
        category: Some(text(NAME_MAX_LENGTH)),
        capabilities: names(CAPABILITIES_MAX_ITEMS, text),
        measurements,
        manufacturers,
        locations: names(LOCATIONS_MAX_ITEMS, text),
        data_format: Some(text(NAME_MAX_LENGTH)),
        update_frequency: Some(text(NAME_MAX_LENGTH)),
        retention_policy: Some(text(NAME_MAX_LENGTH)),
        topics: Default::default(),
        deletion_policy: Default::default(),
        enrichment: Default::default(),
        validation: Default::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cel_rules_spell_the_constants() {
        assert!(KEYS_ARE_NAMES.contains(&format!("<= {NAME_MAX_LENGTH})")));
        assert!(COMPONENTS_TOTAL.ends_with(&format!("<= {COMPONENTS_TOTAL_MAX}")));
        assert!(COMPONENTS_TOTAL_MESSAGE.contains(&format!("at most {COMPONENTS_TOTAL_MAX} ")));
    }

    #[test]
    fn the_largest_device_type_uses_every_limit_and_passes_validation() {
        let spec = largest_device_type_spec("largest", &mut |n| "x".repeat(n));
        assert_eq!(spec.measurements.len(), MEASUREMENTS_MAX_PROPERTIES);
        let components: usize = spec.measurements.values().map(|m| m.components.len()).sum();
        assert_eq!(components, COMPONENTS_TOTAL_MAX);
        assert!(
            spec.measurements
                .keys()
                .all(|k| k.chars().count() == NAME_MAX_LENGTH)
        );
        assert_eq!(super::super::validate::device_type(&spec), []);
        // One more character anywhere is refused.
        let mut longer = spec.clone();
        longer.description = Some("x".repeat(DESCRIPTION_MAX_LENGTH + 1));
        longer.capabilities.push("one_more".into());
        let errors = super::super::validate::device_type(&longer);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["description", "capabilities"], "{errors:?}");
    }
}
