//! The rules of the CRD schemas and CEL expressions, as plain Rust.
//!
//! The API server refuses invalid specs at `kubectl apply`; these functions repeat the checks for
//! the operator's validate stage (objects stored before a rule existed, or applied with an older
//! CRD) and for manifests read from files. Each returns every problem, not only the first.

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::limits::*;
use super::topics::parse_retention_ms;
use super::{ApplicationSpec, DeviceTypeSpec, ID_MAX_LENGTH};

/// One problem with a spec: the field (relative to `spec`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("spec.{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem of `errors` in one line, for a condition, an Event or the registry's skip list.
pub fn describe(errors: &[FieldError]) -> String {
    let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
    messages.join("; ")
}

fn error(field: impl Into<String>, message: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        message: message.into(),
    }
}

/// Whether `id` is a valid device-type id (`^[a-z][a-z0-9_]*$`, at most 63 characters).
pub fn is_valid_id(id: &str) -> bool {
    let mut chars = id.chars();
    matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && id.len() <= ID_MAX_LENGTH
}

/// Whether `email` passes the same check as the CEL rule of `contactEmail`: a non-empty local
/// part, one `@`, a domain with a dot that neither starts nor ends it, no whitespace.
pub fn is_valid_email(email: &str) -> bool {
    let Some((local, domain)) = email.split_once('@') else {
        return false;
    };
    let Some((host, tld)) = domain.rsplit_once('.') else {
        return false;
    };
    !local.is_empty()
        && !host.is_empty()
        && !tld.is_empty()
        && !domain.contains('@')
        && !email.chars().any(char::is_whitespace)
        && email.len() <= 254
}

fn check_length(errors: &mut Vec<FieldError>, field: &str, value: &str, min: usize, max: usize) {
    let length = value.chars().count();
    if length < min || length > max {
        errors.push(error(
            field,
            format!("must be {min}-{max} characters long, is {length}"),
        ));
    }
}

fn check_optional_length(
    errors: &mut Vec<FieldError>,
    field: &str,
    value: &Option<String>,
    max: usize,
) {
    if let Some(value) = value {
        check_length(errors, field, value, 0, max);
    }
}

fn check_count(errors: &mut Vec<FieldError>, field: &str, count: usize, max: usize) {
    if count > max {
        errors.push(error(
            field,
            format!("must have at most {max} entries, has {count}"),
        ));
    }
}

/// A list of names: at most `max` of them, each 1-[`NAME_MAX_LENGTH`] characters.
fn check_names<'a>(
    errors: &mut Vec<FieldError>,
    field: &str,
    names: impl ExactSizeIterator<Item = &'a String>,
    max: usize,
) {
    check_count(errors, field, names.len(), max);
    for (i, name) in names.enumerate() {
        check_length(errors, &format!("{field}[{i}]"), name, 1, NAME_MAX_LENGTH);
    }
}

fn check_valid_values(errors: &mut Vec<FieldError>, field: &str, values: &[IntOrString]) {
    check_count(errors, field, values.len(), VALID_VALUES_MAX_ITEMS);
    for (i, value) in values.iter().enumerate() {
        if let IntOrString::String(s) = value {
            check_length(
                errors,
                &format!("{field}[{i}]"),
                s,
                0,
                VALID_VALUE_MAX_LENGTH,
            );
        }
    }
}

/// The size limits of [`super::limits`], which bound what one DeviceType adds to the registry.
fn check_device_type_sizes(errors: &mut Vec<FieldError>, spec: &DeviceTypeSpec) {
    check_optional_length(
        errors,
        "description",
        &spec.description,
        DESCRIPTION_MAX_LENGTH,
    );
    for (field, value) in [
        ("category", &spec.category),
        ("dataFormat", &spec.data_format),
        ("updateFrequency", &spec.update_frequency),
        ("retentionPolicy", &spec.retention_policy),
    ] {
        check_optional_length(errors, field, value, NAME_MAX_LENGTH);
    }
    check_names(
        errors,
        "capabilities",
        spec.capabilities.iter(),
        CAPABILITIES_MAX_ITEMS,
    );
    check_names(
        errors,
        "locations",
        spec.locations.iter(),
        LOCATIONS_MAX_ITEMS,
    );
    check_count(
        errors,
        "manufacturers",
        spec.manufacturers.len(),
        MANUFACTURERS_MAX_ITEMS,
    );
    for (i, m) in spec.manufacturers.iter().enumerate() {
        let field = format!("manufacturers[{i}]");
        check_length(
            errors,
            &format!("{field}.name"),
            &m.name,
            1,
            DISPLAY_NAME_MAX_LENGTH,
        );
        check_names(
            errors,
            &format!("{field}.models"),
            m.models.iter(),
            MODELS_MAX_ITEMS,
        );
        check_names(
            errors,
            &format!("{field}.ratings"),
            m.ratings.keys(),
            RATINGS_MAX_PROPERTIES,
        );
        for (key, value) in &m.ratings {
            check_length(
                errors,
                &format!("{field}.ratings.{key}"),
                value,
                0,
                DISPLAY_NAME_MAX_LENGTH,
            );
        }
        check_optional_length(
            errors,
            &format!("{field}.protocol"),
            &m.protocol,
            NAME_MAX_LENGTH,
        );
    }
    check_names(
        errors,
        "measurements",
        spec.measurements.keys(),
        MEASUREMENTS_MAX_PROPERTIES,
    );
    let components: usize = spec.measurements.values().map(|m| m.components.len()).sum();
    if components > COMPONENTS_TOTAL_MAX {
        errors.push(error(
            "measurements",
            format!("{COMPONENTS_TOTAL_MESSAGE}, has {components}"),
        ));
    }
    for (name, m) in &spec.measurements {
        let field = format!("measurements.{name}");
        check_optional_length(errors, &format!("{field}.unit"), &m.unit, UNIT_MAX_LENGTH);
        check_names(
            errors,
            &format!("{field}.phases"),
            m.phases.iter(),
            PHASES_MAX_ITEMS,
        );
        check_names(
            errors,
            &format!("{field}.components"),
            m.components.keys(),
            COMPONENTS_MAX_PROPERTIES,
        );
        check_valid_values(errors, &format!("{field}.validValues"), &m.valid_values);
        for (component, part) in &m.components {
            let field = format!("{field}.components.{component}");
            check_optional_length(
                errors,
                &format!("{field}.unit"),
                &part.unit,
                UNIT_MAX_LENGTH,
            );
            check_valid_values(errors, &format!("{field}.validValues"), &part.valid_values);
        }
    }
    check_count(errors, "topics.config", spec.topics.config.len(), 64);
    for (key, value) in &spec.topics.config {
        check_length(
            errors,
            &format!("topics.config.{key}"),
            value,
            0,
            TOPIC_CONFIG_VALUE_MAX_LENGTH,
        );
    }
}

fn check_range(errors: &mut Vec<FieldError>, field: &str, min: Option<f64>, max: Option<f64>) {
    if let (Some(min), Some(max)) = (min, max)
        && min > max
    {
        errors.push(error(field, format!("min {min} is greater than max {max}")));
    }
}

/// Every problem with a DeviceType spec.
pub fn device_type(spec: &DeviceTypeSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if !is_valid_id(&spec.device_type) {
        errors.push(error(
            "deviceType",
            format!(
                "{:?} must match ^[a-z][a-z0-9_]*$ and be at most {ID_MAX_LENGTH} characters",
                spec.device_type
            ),
        ));
    }
    check_length(
        &mut errors,
        "displayName",
        &spec.display_name,
        1,
        DISPLAY_NAME_MAX_LENGTH,
    );
    check_device_type_sizes(&mut errors, spec);
    for (name, measurement) in &spec.measurements {
        let field = format!("measurements.{name}");
        check_range(&mut errors, &field, measurement.min, measurement.max);
        for (component, part) in &measurement.components {
            check_range(
                &mut errors,
                &format!("{field}.components.{component}"),
                part.min,
                part.max,
            );
        }
    }

    let topics = &spec.topics;
    if topics.partitions < 1 {
        errors.push(error("topics.partitions", "must be at least 1"));
    }
    if topics.replication_factor < 1 {
        errors.push(error("topics.replicationFactor", "must be at least 1"));
    }
    if let Some(retention) = &topics.retention {
        if let Err(e) = parse_retention_ms(retention) {
            errors.push(error("topics.retention", e.to_string()));
        }
        if topics.config.contains_key("retention.ms") {
            errors.push(error(
                "topics.config",
                "set either retention or config[\"retention.ms\"], not both",
            ));
        }
    }

    let enrichment = &spec.enrichment;
    let autoscaling = enrichment.min_replicas.is_some()
        || enrichment.max_replicas.is_some()
        || enrichment.lag_per_replica.is_some();
    if enrichment.replicas.is_some() && autoscaling {
        errors.push(error(
            "enrichment",
            "set either replicas (a fixed count) or minReplicas/maxReplicas/lagPerReplica \
             (autoscaling), not both",
        ));
    }
    if autoscaling && enrichment.max_replicas.is_none() {
        errors.push(error(
            "enrichment.maxReplicas",
            "autoscaling needs maxReplicas",
        ));
    }
    if let (Some(min), Some(max)) = (enrichment.min_replicas, enrichment.max_replicas)
        && min > max
    {
        errors.push(error(
            "enrichment.minReplicas",
            format!("{min} is greater than maxReplicas {max}"),
        ));
    }
    for (field, value, least) in [
        ("enrichment.replicas", enrichment.replicas, 0),
        ("enrichment.minReplicas", enrichment.min_replicas, 1),
        ("enrichment.maxReplicas", enrichment.max_replicas, 1),
    ] {
        if value.is_some_and(|n| n < least) {
            errors.push(error(field, format!("must be at least {least}")));
        }
    }
    for (field, value) in [
        ("enrichment.replicas", enrichment.replicas),
        ("enrichment.maxReplicas", enrichment.max_replicas),
    ] {
        if let Some(n) = value.filter(|n| *n > topics.partitions) {
            errors.push(error(
                field,
                format!(
                    "{n} exceeds topics.partitions {}: a consumer group cannot use more \
                     consumers than partitions",
                    topics.partitions
                ),
            ));
        }
    }
    if enrichment.lag_per_replica.is_some_and(|lag| lag < 1) {
        errors.push(error("enrichment.lagPerReplica", "must be at least 1"));
    }
    errors
}

/// Problems with changing a DeviceType spec from `old` to `new` (the CEL transition rules).
pub fn device_type_update(old: &DeviceTypeSpec, new: &DeviceTypeSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    if old.device_type != new.device_type {
        errors.push(error(
            "deviceType",
            format!(
                "is immutable (it names the Kafka topics): {:?} cannot become {:?}",
                old.device_type, new.device_type
            ),
        ));
    }
    if new.topics.partitions < old.topics.partitions {
        errors.push(error(
            "topics.partitions",
            format!(
                "can only grow: Kafka cannot remove partitions ({} -> {})",
                old.topics.partitions, new.topics.partitions
            ),
        ));
    }
    errors
}

/// Every problem with an Application spec.
pub fn application(spec: &ApplicationSpec) -> Vec<FieldError> {
    let mut errors = Vec::new();
    check_length(&mut errors, "displayName", &spec.display_name, 1, 100);
    check_length(&mut errors, "developer", &spec.developer, 1, 100);
    check_optional_length(
        &mut errors,
        "description",
        &spec.description,
        DESCRIPTION_MAX_LENGTH,
    );
    if let Some(category) = &spec.category {
        check_length(&mut errors, "category", category, 0, 50);
    }
    check_length(&mut errors, "version", &spec.version, 1, 20);
    if !is_valid_email(&spec.contact_email) {
        errors.push(error(
            "contactEmail",
            format!("{:?} is not an email address", spec.contact_email),
        ));
    }
    if spec.device_types.is_empty() {
        errors.push(error("deviceTypes", "must list at least one device type"));
    }
    for (i, id) in spec.device_types.iter().enumerate() {
        if !is_valid_id(id) {
            errors.push(error(
                format!("deviceTypes[{i}]"),
                format!("{id:?} is not a device-type id (^[a-z][a-z0-9_]*$)"),
            ));
        }
        if spec.device_types[..i].contains(id) {
            errors.push(error(
                format!("deviceTypes[{i}]"),
                format!("{id:?} is listed twice"),
            ));
        }
    }
    errors
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;
