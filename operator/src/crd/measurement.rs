//! The descriptive part of a `DeviceType` carried over from the seed's device registry: what a
//! device measures (units, ranges, phases, components, valid values) and who makes it.
//!
//! Ranges are what the enrichment worker checks incoming measurements against when the
//! DeviceType's validation mode is not `Off`.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::limits::*;

/// The CEL rule shared by measurements and their components.
const MIN_NOT_ABOVE_MAX: &str = "!has(self.min) || !has(self.max) || self.min <= self.max";

// How the values of a measurement are encoded in the payload. Deliberately a plain comment: it is
// only used as `Option<DataType>`, and kube's schema transform for optional enums would replace the
// field's description with the type's.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, JsonSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum DataType {
    /// A JSON number with a fractional part (the default for physical quantities).
    Float,
    /// A JSON integer, e.g. a counter or a state code.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON string.
    String,
}

/// One measurement a device type reports, e.g. `voltage` or `temperature`.
///
/// A measurement is either a single value (payload `{"value": 59.9, "unit": "Hz"}`), one value per
/// electrical phase (`phases`), or a group of named components (`components`). Its range and valid
/// values apply to the single value, to every phase, and to every component that declares none of
/// its own.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new(MIN_NOT_ABOVE_MAX).message("min must not be greater than max"))]
#[serde(rename_all = "camelCase")]
pub struct Measurement {
    /// Unit of the values, e.g. `V`, `A`, `W`, `Hz`, `°C`, `kWh`, `%RH` (at most 32 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = UNIT_MAX_LENGTH))]
    pub unit: Option<String>,
    /// Smallest valid value (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest valid value (inclusive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Encoding of the values: `float` (the default), `integer`, `boolean` or `string`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    /// Payload keys of the per-phase values, e.g. `phase_a`, `phase_b`, `phase_c` (at most 8,
    /// each 1-64 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = PHASES_MAX_ITEMS),
        inner(length(min = 1, max = NAME_MAX_LENGTH))
    )]
    pub phases: Vec<String>,
    /// Named parts of a compound measurement (payload key -> its own unit and range), e.g.
    /// `active`/`reactive`/`apparent`/`factor` for power. At most 32, with names of 1-64
    /// characters (bounds the cost of the CEL range rule).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = COMPONENTS_MAX_PROPERTIES))]
    #[x_kube(validation = Rule::new(KEYS_ARE_NAMES).message("component names must be 1-64 characters long"))]
    pub components: BTreeMap<String, MeasurementComponent>,
    /// The only values allowed (integers or strings), e.g. `[0, 1]` for a state. Empty means any
    /// value in the range. At most 16; strings of at most 32 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = VALID_VALUES_MAX_ITEMS),
        // The int-or-string item schema with a length bound for its strings (a CEL rule over
        // unbounded strings would exceed the API server's cost budget).
        extend("items" = {
            "x-kubernetes-int-or-string": true,
            "maxLength": VALID_VALUE_MAX_LENGTH,
            "description": "An integer, or a string of at most 32 characters."
        })
    )]
    pub valid_values: Vec<IntOrString>,
}

/// One named part of a compound measurement.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[x_kube(validation = Rule::new(MIN_NOT_ABOVE_MAX).message("min must not be greater than max"))]
#[serde(rename_all = "camelCase")]
pub struct MeasurementComponent {
    /// Unit of this component (at most 32 characters); the measurement's unit when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = UNIT_MAX_LENGTH))]
    pub unit: Option<String>,
    /// Smallest valid value (inclusive); the measurement's when this component declares no range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min: Option<f64>,
    /// Largest valid value (inclusive); the measurement's when this component declares no range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<f64>,
    /// Encoding of the value: `float`, `integer`, `boolean` or `string`; the measurement's data
    /// type (or `float`) when omitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_type: Option<DataType>,
    /// The only values allowed (integers or strings); the measurement's when empty. At most 16;
    /// strings of at most 32 characters.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = VALID_VALUES_MAX_ITEMS),
        // The int-or-string item schema with a length bound for its strings (a CEL rule over
        // unbounded strings would exceed the API server's cost budget).
        extend("items" = {
            "x-kubernetes-int-or-string": true,
            "maxLength": VALID_VALUE_MAX_LENGTH,
            "description": "An integer, or a string of at most 32 characters."
        })
    )]
    pub valid_values: Vec<IntOrString>,
}

/// A manufacturer of devices of this type.
#[derive(KubeSchema, Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Manufacturer {
    /// Manufacturer name, e.g. `ElectroCorp` (1-100 characters).
    #[schemars(length(min = 1, max = DISPLAY_NAME_MAX_LENGTH))]
    pub name: String,
    /// Model names, e.g. `SB-2000` (at most 32, each 1-64 characters).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(
        length(max = MODELS_MAX_ITEMS),
        inner(length(min = 1, max = NAME_MAX_LENGTH))
    )]
    pub models: Vec<String>,
    /// Free-form ratings, e.g. `voltage: 480V`, `current: 100A`, `class: A` (at most 16, names
    /// of 1-64 and values of at most 100 characters).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend(
        "maxProperties" = RATINGS_MAX_PROPERTIES,
        "additionalProperties" = {"type": "string", "maxLength": DISPLAY_NAME_MAX_LENGTH}
    ))]
    #[x_kube(validation = Rule::new(KEYS_ARE_NAMES).message("rating names must be 1-64 characters long"))]
    pub ratings: BTreeMap<String, String>,
    /// Protocol the devices speak, e.g. `Modbus TCP/IP` (at most 64 characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = NAME_MAX_LENGTH))]
    pub protocol: Option<String>,
}
