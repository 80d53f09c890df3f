//! Data-quality checks of the enrichment, sans-IO: are enough of the declared measurements
//! present, and are the values inside the declared ranges, types and valid values.
//!
//! A measurement in a payload is a single value (`{"value": 59.9, "unit": "Hz"}` or a bare
//! number), one value per phase (`{"phase_a": 117.2, ...}`), or named components
//! (`{"active": 5775.9, "factor": 0.948, ...}`), as its declaration says.

use std::collections::BTreeMap;

use iot_model::registry::{DataType, Measurement, ValidValue};
use serde::Serialize;
use serde_json::{Map, Value};

/// The seed's rule: a message is complete when at least 70 % of the declared measurements are
/// present.
pub const COMPLETENESS_THRESHOLD: f64 = 0.7;

/// How many declared measurements a message carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completeness {
    pub present: usize,
    pub declared: usize,
}

impl Completeness {
    /// At least [`COMPLETENESS_THRESHOLD`] of the declared measurements are present (trivially
    /// true when none are declared).
    pub fn is_complete(self) -> bool {
        self.declared == 0 || self.present as f64 >= COMPLETENESS_THRESHOLD * self.declared as f64
    }
}

/// Counts the declared measurements present in `measurements`.
pub fn completeness(
    measurements: &Map<String, Value>,
    declared: &BTreeMap<String, Measurement>,
) -> Completeness {
    Completeness {
        present: declared
            .keys()
            .filter(|k| measurements.get(*k).is_some_and(|v| !v.is_null()))
            .count(),
        declared: declared.len(),
    }
}

/// What a value broke.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum Rule {
    /// Outside `[min, max]`.
    Range {
        #[serde(skip_serializing_if = "Option::is_none")]
        min: Option<f64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        max: Option<f64>,
    },
    /// Not of the declared data type.
    Type { expected: &'static str },
    /// Not one of the valid values.
    ValidValues { valid_values: Vec<Value> },
}

/// One value that broke its declaration, as listed in `data_quality.out_of_range`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Violation {
    /// `measurement` or `measurement.phase_or_component`, e.g. `voltage.phase_a`.
    pub field: String,
    pub value: Value,
    #[serde(flatten)]
    pub rule: Rule,
}

/// The declaration one value is checked against.
struct Expect<'a> {
    min: Option<f64>,
    max: Option<f64>,
    data_type: Option<DataType>,
    valid_values: &'a [ValidValue],
}

/// Checks every declared measurement present in `measurements`; undeclared ones are ignored
/// (devices may report more than their type declares).
pub fn check_ranges(
    measurements: &Map<String, Value>,
    declared: &BTreeMap<String, Measurement>,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for (name, m) in declared {
        let Some(value) = measurements.get(name) else {
            continue;
        };
        let whole = Expect {
            min: m.min,
            max: m.max,
            data_type: m.data_type,
            valid_values: &m.valid_values,
        };
        match value {
            Value::Object(parts) if !m.phases.is_empty() || !m.components.is_empty() => {
                for phase in &m.phases {
                    if let Some(v) = parts.get(phase) {
                        check_value((name, Some(phase)), v, &whole, &mut out);
                    }
                }
                for (component, c) in &m.components {
                    let Some(v) = parts.get(component) else {
                        continue;
                    };
                    let (min, max) = if c.min.is_none() && c.max.is_none() {
                        (m.min, m.max)
                    } else {
                        (c.min, c.max)
                    };
                    let expect = Expect {
                        min,
                        max,
                        data_type: c.data_type.or(m.data_type),
                        valid_values: if c.valid_values.is_empty() {
                            &m.valid_values
                        } else {
                            &c.valid_values
                        },
                    };
                    check_value((name, Some(component)), v, &expect, &mut out);
                }
            }
            Value::Object(single) => {
                if let Some(v) = single.get("value") {
                    check_value((name, None), v, &whole, &mut out);
                }
            }
            scalar => check_value((name, None), scalar, &whole, &mut out),
        }
    }
    out
}

/// `field`: the measurement and, for phases and components, the part (named only when a value
/// breaks its declaration, so that values in range cost no allocation).
fn check_value(
    field: (&str, Option<&str>),
    value: &Value,
    expect: &Expect<'_>,
    out: &mut Vec<Violation>,
) {
    let violation = |rule| Violation {
        field: match field {
            (name, Some(part)) => format!("{name}.{part}"),
            (name, None) => name.to_string(),
        },
        value: value.clone(),
        rule,
    };
    let type_ok = match expect.data_type {
        Some(DataType::Boolean) => value.is_boolean(),
        Some(DataType::Integer) => value.is_i64() || value.is_u64(),
        Some(DataType::String) => value.is_string(),
        Some(DataType::Float) => value.is_number(),
        // Undeclared type: numbers are range-checked, anything else is taken as it comes.
        None => true,
    };
    if !type_ok {
        let expected = match expect.data_type {
            Some(DataType::Boolean) => "boolean",
            Some(DataType::Integer) => "integer",
            Some(DataType::String) => "string",
            _ => "number",
        };
        out.push(violation(Rule::Type { expected }));
        return;
    }
    if !expect.valid_values.is_empty() && !expect.valid_values.iter().any(|v| matches(v, value)) {
        out.push(violation(Rule::ValidValues {
            valid_values: expect.valid_values.iter().map(int_or_string_json).collect(),
        }));
        return;
    }
    if let Some(number) = value.as_f64() {
        let below = expect.min.is_some_and(|min| number < min);
        let above = expect.max.is_some_and(|max| number > max);
        if below || above {
            out.push(violation(Rule::Range {
                min: expect.min,
                max: expect.max,
            }));
        }
    }
}

fn matches(valid: &ValidValue, value: &Value) -> bool {
    match valid {
        ValidValue::Int(i) => value.as_f64() == Some(f64::from(*i)),
        ValidValue::String(s) => value.as_str() == Some(s.as_str()),
    }
}

fn int_or_string_json(v: &ValidValue) -> Value {
    match v {
        ValidValue::Int(i) => Value::from(*i),
        ValidValue::String(s) => Value::from(s.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::fixtures::{SEED_RAW, sample_registry};

    fn declared(id: &str) -> BTreeMap<String, Measurement> {
        sample_registry("iot").device_types[id].measurements.clone()
    }

    fn seed_measurements() -> Map<String, Value> {
        let raw: Value = serde_json::from_str(SEED_RAW).unwrap();
        raw["measurements"].as_object().unwrap().clone()
    }

    fn fields(v: &[Violation]) -> Vec<&str> {
        v.iter().map(|v| v.field.as_str()).collect()
    }

    #[test]
    fn the_seed_example_is_complete_and_in_range() {
        let d = declared("smart_breaker");
        let m = seed_measurements();
        let c = completeness(&m, &d);
        assert_eq!((c.present, c.declared, c.is_complete()), (8, 8, true));
        assert_eq!(check_ranges(&m, &d), []);
    }

    #[test]
    fn seventy_percent_is_the_completeness_line() {
        let d = declared("smart_breaker");
        let mut m = seed_measurements();
        m.remove("voltage");
        m.remove("current");
        // 6 of 8 = 75 %.
        assert!(completeness(&m, &d).is_complete());
        m.remove("power");
        // 5 of 8 = 62.5 %.
        let c = completeness(&m, &d);
        assert_eq!((c.present, c.is_complete()), (5, false));
        m.insert("power".into(), Value::Null);
        assert_eq!(completeness(&m, &d).present, 5, "null is absent");
        assert!(completeness(&Map::new(), &BTreeMap::new()).is_complete());
    }

    #[test]
    fn phases_components_and_single_values_are_range_checked() {
        let d = declared("smart_breaker");
        let mut m = seed_measurements();
        m["voltage"]["phase_b"] = json!(131.5);
        m["power"]["factor"] = json!(0.5);
        m["frequency"]["value"] = json!(58.0);
        m["operational"]["operating_hours"] = json!(90000.0);
        let v = check_ranges(&m, &d);
        assert_eq!(
            fields(&v),
            [
                "frequency",
                "operational.operating_hours",
                "power.factor",
                "voltage.phase_b"
            ]
        );
        assert_eq!(
            serde_json::to_value(&v[3]).unwrap(),
            json!({"field": "voltage.phase_b", "value": 131.5, "min": 110.0, "max": 130.0})
        );
    }

    #[test]
    fn types_and_valid_values_are_checked() {
        let d = declared("smart_breaker");
        let mut m = seed_measurements();
        m["status"]["breaker"] = json!(2);
        m["status"]["position"] = json!(0.5);
        m["protection"]["arc_fault_detected"] = json!("no");
        m["protection"]["trip_count"] = json!(3.5);
        let v = check_ranges(&m, &d);
        assert_eq!(
            fields(&v),
            [
                "protection.arc_fault_detected",
                "protection.trip_count",
                "status.breaker",
                "status.position"
            ]
        );
        assert_eq!(
            serde_json::to_value(&v[0]).unwrap(),
            json!({"field": "protection.arc_fault_detected", "value": "no", "expected": "boolean"})
        );
        assert_eq!(
            serde_json::to_value(&v[2]).unwrap(),
            json!({"field": "status.breaker", "value": 2, "valid_values": [0, 1]})
        );
    }

    #[test]
    fn open_ranges_and_bare_numbers() {
        let d = declared("smart_meter");
        let m = json!({"energy": -1.0, "demand": {"value": 1e9}, "power_factor": 0.79})
            .as_object()
            .unwrap()
            .clone();
        let v = check_ranges(&m, &d);
        assert_eq!(fields(&v), ["energy", "power_factor"]);
        assert_eq!(
            serde_json::to_value(&v[0]).unwrap(),
            json!({"field": "energy", "value": -1.0, "min": 0.0})
        );
        let ok = json!({"temperature": {"value": -40}, "humidity": 100, "pressure": {"value": 1013.2, "unit": "hPa"}});
        assert_eq!(
            check_ranges(ok.as_object().unwrap(), &declared("environmental_sensor")),
            []
        );
    }
}
