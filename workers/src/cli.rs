//! Flags and environment variables shared by the worker roles. Every knob has a default that works
//! on a laptop (brokers on 127.0.0.1) and an `IOT_*` environment variable.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::mqtt_security::{MqttSecurity, MqttSecurityArgs};

/// Where the operator mounts ConfigMap `iot-registry` in the worker pods (its
/// `REGISTRY_MOUNT`/`CONFIG_MAP_KEY`; a test keeps the two in step).
pub const DEFAULT_REGISTRY_FILE: &str = "/etc/iot-cloud/registry.json";

/// Kafka connection and topic naming.
#[derive(Args, Clone, Debug)]
pub struct KafkaArgs {
    /// Kafka bootstrap servers, `host:port[,host:port...]`.
    #[arg(long, env = "IOT_KAFKA_BOOTSTRAP", default_value = "127.0.0.1:9092")]
    pub kafka_bootstrap: String,
    /// Prefix of every Kafka topic name (`{prefix}.{device_type}.raw`, `{prefix}.deadletter`, ...).
    #[arg(long, env = "IOT_TOPIC_PREFIX", default_value = "iot")]
    pub topic_prefix: String,
    /// Milliseconds a producer waits to fill a batch (`linger.ms`): lower is less latency at low
    /// rates; under load batches fill on their own while a request is in flight.
    #[arg(long, env = "IOT_KAFKA_LINGER_MS", default_value_t = 5)]
    pub linger_ms: u32,
}

/// MQTT connection and topic layout.
#[derive(Args, Clone, Debug)]
pub struct MqttArgs {
    /// MQTT broker, `mqtt://host:port`.
    #[arg(long, env = "IOT_MQTT_URL", default_value = "mqtt://127.0.0.1:1883")]
    pub mqtt_url: String,
    /// First level(s) of the device topics `{root}/{device_id}/{raw|trends|status}`, so that two
    /// installations can share one broker.
    #[arg(long, env = "IOT_MQTT_TOPIC_ROOT", default_value = "iot")]
    pub mqtt_topic_root: String,
    #[command(flatten)]
    pub security: MqttSecurityArgs,
}

impl MqttArgs {
    /// The broker's host and port, and the identity to connect with (its files read).
    pub fn connection(&self) -> anyhow::Result<(String, u16, MqttSecurity)> {
        let (host, port) = parse_mqtt_url(&self.mqtt_url)?;
        let security = MqttSecurity::load(&self.security, is_tls_url(&self.mqtt_url))?;
        Ok((host, port, security))
    }
}

/// The registry file the operator writes (ConfigMap `iot-registry`, key `registry.json`).
#[derive(Args, Clone, Debug)]
pub struct RegistryArgs {
    /// Path of `registry.json`; re-read when its contents change.
    #[arg(long, env = "IOT_REGISTRY_FILE", default_value = DEFAULT_REGISTRY_FILE)]
    pub registry_file: PathBuf,
    /// How often to check the registry file for changes, in milliseconds.
    #[arg(long, env = "IOT_REGISTRY_POLL_MS", default_value_t = 1000)]
    pub registry_poll_ms: u64,
}

/// How long a stopping worker may take to finish the messages it has in flight.
#[derive(Args, Clone, Debug)]
pub struct ShutdownArgs {
    /// Seconds to finish in-flight messages after SIGTERM before giving up on them (they are
    /// then redelivered: MQTT session or uncommitted Kafka offsets).
    #[arg(long, env = "IOT_SHUTDOWN_GRACE_SECONDS", default_value_t = 25)]
    pub shutdown_grace_seconds: u64,
}

impl ShutdownArgs {
    pub fn grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_seconds)
    }
}

/// Whether an MQTT URL asks for TLS (`mqtts://`, `ssl://`).
pub fn is_tls_url(url: &str) -> bool {
    url.starts_with("mqtts://") || url.starts_with("ssl://")
}

/// `mqtt://host:port` or `mqtts://host:port` (port 1883, or 8883 with TLS, when omitted) as host
/// and port.
pub fn parse_mqtt_url(url: &str) -> anyhow::Result<(String, u16)> {
    let (rest, default_port) = if let Some(rest) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (rest, 8883)
    } else {
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| {
                anyhow::anyhow!("MQTT URL {url:?} must start with mqtt:// or mqtts://")
            })?;
        (rest, 1883)
    };
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || authority.starts_with('[') => {
            let port = port
                .parse()
                .map_err(|_| anyhow::anyhow!("MQTT URL {url:?}: bad port {port:?}"))?;
            (host, port)
        }
        _ => (authority, default_port),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    anyhow::ensure!(!host.is_empty(), "MQTT URL {url:?} has no host");
    Ok((host.to_string(), port))
}

/// A topic root is one or more non-empty MQTT topic levels without wildcards.
pub fn check_topic_root(root: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        !root.is_empty()
            && !root.contains(['+', '#'])
            && !root.starts_with('$')
            && root.split('/').all(|level| !level.is_empty()),
        "MQTT topic root {root:?}: use one or more non-empty levels without wildcards, e.g. `iot`"
    );
    Ok(())
}

/// Checks a topic prefix as the operator does.
pub fn check_topic_prefix(prefix: &str) -> anyhow::Result<()> {
    anyhow::ensure!(
        iot_model::naming::is_valid_topic_prefix(prefix),
        "topic prefix {prefix:?}: use 1-100 characters of [a-zA-Z0-9_-]"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_urls() {
        assert_eq!(
            parse_mqtt_url("mqtt://127.0.0.1:21883").unwrap(),
            ("127.0.0.1".to_string(), 21883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://mosquitto").unwrap(),
            ("mosquitto".to_string(), 1883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://broker.iot.svc:1883/").unwrap(),
            ("broker.iot.svc".to_string(), 1883)
        );
        assert_eq!(
            parse_mqtt_url("mqtt://[::1]:1884").unwrap(),
            ("::1".to_string(), 1884)
        );
        assert_eq!(
            parse_mqtt_url("mqtts://broker.iot.svc").unwrap(),
            ("broker.iot.svc".to_string(), 8883)
        );
        assert!(is_tls_url("mqtts://b:8883") && !is_tls_url("mqtt://b:1883"));
        assert!(parse_mqtt_url("http://x:1883").is_err());
        assert!(parse_mqtt_url("mqtt://:1883").is_err());
        assert!(parse_mqtt_url("mqtt://x:port").is_err());
    }

    #[test]
    fn the_default_registry_file_is_where_the_operator_mounts_it() {
        assert_eq!(DEFAULT_REGISTRY_FILE, iot_model::registry::mounted_file());
    }

    #[test]
    fn topic_roots_and_prefixes() {
        for good in ["iot", "site-a/iot", "t_1"] {
            assert!(check_topic_root(good).is_ok(), "{good}");
        }
        for bad in ["", "iot/", "/iot", "iot/+", "#", "$SYS"] {
            assert!(check_topic_root(bad).is_err(), "{bad}");
        }
        assert!(check_topic_prefix("iot-test_1").is_ok());
        assert!(check_topic_prefix("iot.x").is_err());
    }
}
