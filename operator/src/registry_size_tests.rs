//! What the registry ConfigMap holds, measured: the samples, a thousand breaker-sized device types
//! and applications, and the largest DeviceType the CRD limits allow. The numbers printed here
//! (`cargo test -p iot-operator --lib registry_size -- --nocapture`) are the ones in the README.

use std::path::Path;

use kube::ResourceExt;

use super::*;
use crate::crd::limits::largest_device_type_spec;
use crate::crd::manifests;

fn samples() -> manifests::Manifests {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/samples");
    let mut m = manifests::load(&dir).unwrap();
    m.default_namespace("iot");
    m
}

/// `n` copies of the sample smart breaker with distinct names, ids and descriptions.
pub fn breakers(n: usize) -> Vec<DeviceType> {
    let breaker = samples()
        .device_types
        .into_iter()
        .find(|d| d.name_any() == "smart-breaker")
        .unwrap();
    (0..n)
        .map(|i| {
            let mut dt = breaker.clone();
            dt.metadata.name = Some(format!("breaker-{i:04}"));
            dt.spec.device_type = format!("breaker_{i:04}");
            dt.spec.display_name = format!("Smart Circuit Breaker {i}");
            dt.spec.description = Some(format!(
                "Intelligent circuit breaker {i} with monitoring and protection capabilities, \
                 feeder {} of substation {}",
                i % 17,
                i / 17
            ));
            dt
        })
        .collect()
}

/// `n` applications, application `i` reading breaker `i % types`.
pub fn applications(n: usize, types: usize) -> Vec<Application> {
    let app = samples()
        .applications
        .into_iter()
        .find(|a| a.name_any() == "smart-grid-monitor")
        .unwrap();
    (0..n)
        .map(|i| {
            let mut a = app.clone();
            a.metadata.name = Some(format!("app-{i:04}"));
            a.spec.display_name = format!("Grid Monitor {i}");
            a.spec.device_types = vec![format!("breaker_{:04}", i % types)];
            a
        })
        .collect()
}

fn sizes(what: &str, registry: &Registry) -> Encoded {
    let started = std::time::Instant::now();
    let encoded = encode(registry);
    let took = started.elapsed();
    let pretty = serde_json::to_string_pretty(registry).unwrap().len();
    println!(
        "{what}: {} device types; pretty JSON {pretty} B, compact JSON {} B, gzip {} B ({:.1} % \
         of the limit), encoded in {took:?}",
        registry.device_types.len(),
        encoded.json_bytes,
        encoded.gzip.len(),
        encoded.gzip.len() as f64 * 100.0 / MAX_COMPRESSED_BYTES as f64
    );
    encoded
}

#[test]
fn registry_size_of_the_samples_and_of_a_thousand_breakers() {
    let s = samples();
    let encoded = sizes(
        "samples",
        &build_registry(&s.device_types, &s.applications, "iot"),
    );
    assert!(encoded.gzip.len() < 4096, "{}", encoded.gzip.len());

    let dts = breakers(1000);
    let encoded = sizes("1,000 breakers", &build_registry(&dts, &[], "iot"));
    assert!(check_size(&encoded).is_ok());
    let apps = applications(1000, 1000);
    let registry = build_registry(&dts, &apps, "iot");
    let encoded = sizes("1,000 breakers and 1,000 applications", &registry);
    // The old pretty-printed registry broke at about 250 breakers; compressed, 1,000 breakers and
    // as many applications use well under a tenth of the ConfigMap.
    assert!(
        encoded.gzip.len() < MAX_COMPRESSED_BYTES / 10,
        "{}",
        encoded.gzip.len()
    );
    assert_eq!(decode(&encoded.gzip).unwrap(), registry);

    // Clones compress best. Breaker-shaped types whose every name and text is random letters
    // (description, capabilities, measurement and component names, units, phases) compress
    // worst: real device types lie in between.
    let mut random = random_text(11, false);
    let mut distinct = registry;
    for entry in distinct.device_types.values_mut() {
        let mut same_length = |s: &str| random(s.chars().count());
        entry.display_name = same_length(&entry.display_name);
        entry.description = entry.description.as_deref().map(&mut same_length);
        entry.capabilities = entry.capabilities.iter().map(|c| same_length(c)).collect();
        entry.measurements = std::mem::take(&mut entry.measurements)
            .into_iter()
            .map(|(name, mut m)| {
                m.unit = m.unit.as_deref().map(&mut same_length);
                m.phases = m.phases.iter().map(|p| same_length(p)).collect();
                m.components = std::mem::take(&mut m.components)
                    .into_iter()
                    .map(|(name, mut c)| {
                        c.unit = c.unit.as_deref().map(&mut same_length);
                        (same_length(&name), c)
                    })
                    .collect();
                (same_length(&name), m)
            })
            .collect();
    }
    let encoded = sizes(
        "1,000 breaker-shaped types with random names and texts, 1,000 applications",
        &distinct,
    );
    assert_eq!(check_size(&encoded), Ok(()));
}

#[test]
fn encoding_is_deterministic_and_round_trips() {
    let s = samples();
    let registry = build_registry(&s.device_types, &s.applications, "iot");
    let once = encode(&registry);
    assert_eq!(once, encode(&registry.clone()));
    assert_eq!(&once.gzip[..2], [0x1f, 0x8b], "gzip magic bytes");
    assert_eq!(decode(&once.gzip).unwrap(), registry);
    assert!(decode(b"{\"version\": 1}").is_err(), "not gzip");
}

#[test]
fn a_registry_too_large_for_the_config_map_is_refused() {
    let fits = Encoded {
        json_bytes: 10,
        gzip: vec![0; MAX_COMPRESSED_BYTES],
    };
    assert_eq!(check_size(&fits), Ok(()));
    let too_large = Encoded {
        json_bytes: 10,
        gzip: vec![0; MAX_COMPRESSED_BYTES + 1],
    };
    let error = check_size(&too_large).unwrap_err();
    assert_eq!(error.gzip_bytes, MAX_COMPRESSED_BYTES + 1);
    assert!(
        error.to_string().contains("more than a ConfigMap holds"),
        "{error}"
    );
    let too_much_json = Encoded {
        json_bytes: MAX_JSON_BYTES + 1,
        gzip: vec![0; 10],
    };
    assert!(check_size(&too_much_json).is_err());
    // Below the API server's 1 MiB for data and binaryData, with room for the rest.
    const { assert!(MAX_COMPRESSED_BYTES < 1024 * 1024 - 64 * 1024) };
}

/// A deterministic generator of characters: random letters and digits (what compresses worst
/// among ASCII), or random 4-byte UTF-8 characters.
fn random_text(seed: u64, four_byte: bool) -> impl FnMut(usize) -> String {
    let mut state = seed;
    move |n| {
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if four_byte {
                    char::from_u32(0x10000 + (state % 0xF0000) as u32).unwrap()
                } else {
                    let alphabet =
                        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
                    alphabet[(state % 62) as usize] as char
                }
            })
            .collect()
    }
}

/// The largest valid DeviceType, as a registry entry: bounded, and far from filling the ConfigMap
/// on its own.
#[test]
fn registry_size_of_the_largest_valid_device_type() {
    let name = "n".repeat(253);
    for (what, four_byte, most_gzip) in [
        ("random letters and digits", false, MAX_COMPRESSED_BYTES / 8),
        (
            "random 4-byte characters",
            true,
            MAX_COMPRESSED_BYTES * 2 / 5,
        ),
    ] {
        let spec = largest_device_type_spec(&"x".repeat(63), &mut random_text(7, four_byte));
        assert_eq!(crate::crd::validate::device_type(&spec), []);
        let mut dt = DeviceType::new(&name, spec);
        dt.metadata.namespace = Some("s".repeat(63));
        let registry = build_registry(&[dt], &[], &"p".repeat(100));
        let encoded = sizes(&format!("largest DeviceType, {what}"), &registry);
        assert!(
            encoded.gzip.len() < most_gzip,
            "{what}: {} bytes",
            encoded.gzip.len()
        );
    }
}
