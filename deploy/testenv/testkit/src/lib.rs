//! Connections to the real services of the local test environment (`deploy/testenv/up.sh`) for
//! the project's integration tests.
//!
//! Every accessor checks that its service answers and panics with a message naming the service and
//! how to start it when it does not: a test that needs a service never passes or skips because the
//! service is missing.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};

const HOW_TO_START: &str = "start the test environment with `deploy/testenv/up.sh` and \
     `source deploy/testenv/.run/env`, or run the README test command `deploy/test.sh`";

/// How long a service may take to answer the reachability check.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn required_env(name: &str, service: &str) -> String {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v,
        _ => panic!("{service} is not configured: {name} is not set; {HOW_TO_START}"),
    }
}

/// An error with all its causes, `outer: inner: root`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// A name unique to this test process and call, usable as a Kubernetes name or a Kafka topic.
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{}-{nanos:x}-{n}", std::process::id())
}

/// A kube client for the test environment's API server, after checking that it answers.
pub async fn kube_client() -> Client {
    let path = required_env("KUBECONFIG", "the Kubernetes API server");
    let kubeconfig = Kubeconfig::read_from(&path)
        .unwrap_or_else(|e| panic!("cannot read KUBECONFIG {path}: {e}; {HOW_TO_START}"));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("invalid KUBECONFIG {path}: {e}"));
    let url = config.cluster_url.clone();
    let client = Client::try_from(config).expect("kube client from the test kubeconfig");
    match tokio::time::timeout(PROBE_TIMEOUT, client.apiserver_version()).await {
        Ok(Ok(_)) => client,
        Ok(Err(e)) => panic!(
            "the Kubernetes API server at {url} is not reachable: {}; {HOW_TO_START}",
            error_chain(&e)
        ),
        Err(_) => panic!(
            "the Kubernetes API server at {url} did not answer within {PROBE_TIMEOUT:?}; {HOW_TO_START}"
        ),
    }
}

/// A fresh namespace, deleted again when the returned guard is dropped (best effort, in the
/// background: namespace deletion is asynchronous in Kubernetes anyway).
pub struct TestNamespace {
    pub name: String,
    client: Client,
}

impl TestNamespace {
    pub async fn create(client: &Client, prefix: &str) -> Self {
        let name = unique_name(prefix);
        let ns = Namespace {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("iotcloud.dev/test".to_string(), "true".to_string())].into()),
                ..ObjectMeta::default()
            },
            ..Namespace::default()
        };
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("creating test namespace {name}: {e}"));
        Self {
            name,
            client: client.clone(),
        }
    }
}

impl TestNamespace {
    /// Deletes the namespace now (the API server then deletes everything in it).
    pub async fn delete(&self) {
        let api = Api::<Namespace>::all(self.client.clone());
        if let Err(e) = api.delete(&self.name, &DeleteParams::background()).await {
            eprintln!("deleting test namespace {}: {e}", self.name);
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let api = Api::<Namespace>::all(self.client.clone());
        let name = self.name.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = api.delete(&name, &DeleteParams::background()).await;
            });
        }
    }
}

/// The Kafka bootstrap address of the test environment, after checking that a broker answers.
pub fn kafka_bootstrap() -> String {
    let bootstrap = required_env("IOT_KAFKA_BOOTSTRAP", "Kafka");
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .expect("kafka client config");
    if let Err(e) = consumer.fetch_metadata(None, PROBE_TIMEOUT) {
        panic!("Kafka at {bootstrap} is not reachable: {e}; {HOW_TO_START}");
    }
    bootstrap
}

/// Creates a topic and waits until the broker reports it with the requested partition count.
pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("kafka admin client");
    let results = admin
        .create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(PROBE_TIMEOUT)),
        )
        .await
        .unwrap_or_else(|e| panic!("Kafka at {bootstrap}: create topic {topic}: {e}"));
    for r in results {
        r.unwrap_or_else(|(t, e)| panic!("Kafka at {bootstrap}: create topic {t}: {e}"));
    }
}

/// Deletes topics, ignoring errors (a topic may be gone already; used in clean-up).
pub async fn delete_topics(bootstrap: &str, topics: &[String]) {
    let Ok(admin) = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create::<AdminClient<DefaultClientContext>>()
    else {
        return;
    };
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(PROBE_TIMEOUT));
    let _ = admin.delete_topics(&names, &options).await;
}

/// The broker's service listener (`mqtts://host:port`, or `mqtt://` for a broker without TLS),
/// after checking that it accepts TCP connections.
pub async fn mqtt_url() -> String {
    let url = required_env("IOT_MQTT_URL", "Mosquitto (the MQTT broker)");
    let (_, host, port) = split_mqtt_url(&url);
    let addr = format!("{host}:{port}");
    match tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(&addr)).await {
        Ok(Ok(_)) => url,
        Ok(Err(e)) => {
            panic!("Mosquitto (the MQTT broker) at {addr} is not reachable: {e}; {HOW_TO_START}")
        }
        Err(_) => panic!("Mosquitto (the MQTT broker) at {addr} did not answer; {HOW_TO_START}"),
    }
}

/// (TLS, host, port) of `mqtt://host:port` or `mqtts://host:port`.
fn split_mqtt_url(url: &str) -> (bool, String, u16) {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        panic!("an MQTT URL must look like mqtts://host:port or mqtt://host:port, got {url}")
    };
    let (host, port) = rest
        .trim_end_matches('/')
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("no port in the MQTT URL {url}"));
    let port = port
        .parse()
        .unwrap_or_else(|_| panic!("bad port in the MQTT URL {url}"));
    (tls, host.to_string(), port)
}

/// The identities of the test environment's broker on its service listener
/// (`deploy/testenv/up.sh`): TLS, a username and a password from a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MqttIdentity {
    /// `iot-bridge`: reads every topic (also through the bridge's shared group) and `$SYS`.
    Bridge,
    /// `iot-simulator`: publishes to every topic.
    Simulator,
}

impl MqttIdentity {
    pub fn username(self) -> &'static str {
        match self {
            Self::Bridge => "iot-bridge",
            Self::Simulator => "iot-simulator",
        }
    }

    /// The file holding this identity's password.
    pub fn password_file(self) -> String {
        let var = match self {
            Self::Bridge => "IOT_TESTENV_MQTT_BRIDGE_PASSWORD_FILE",
            Self::Simulator => "IOT_TESTENV_MQTT_SIMULATOR_PASSWORD_FILE",
        };
        required_env(var, "Mosquitto's identities (the MQTT broker)")
    }

    /// The settings a worker process of this identity connects with.
    pub fn worker_env(self) -> Vec<(&'static str, String)> {
        vec![
            ("IOT_MQTT_CA_FILE", mqtt_ca_file()),
            ("IOT_MQTT_USERNAME", self.username().to_string()),
            ("IOT_MQTT_PASSWORD_FILE", self.password_file()),
        ]
    }
}

/// The CA that signed the broker's certificate.
pub fn mqtt_ca_file() -> String {
    required_env("IOT_MQTT_CA_FILE", "Mosquitto's TLS (the MQTT broker)")
}

/// MQTT 3.1.1 options for `url` with the given client id, as `identity` (TLS when the URL is
/// `mqtts://`).
pub fn mqtt_options(url: &str, client_id: &str, identity: MqttIdentity) -> rumqttc::MqttOptions {
    let (tls, host, port) = split_mqtt_url(url);
    let mut options = rumqttc::MqttOptions::new(client_id, host, port);
    let password = std::fs::read_to_string(identity.password_file())
        .unwrap_or_else(|e| panic!("reading the password of {}: {e}", identity.username()));
    options.set_credentials(identity.username(), password.trim_end());
    if tls {
        options.set_transport(rumqttc::Transport::tls_with_config(tls_config(None)));
    }
    options
}

/// TLS that verifies the broker with [`mqtt_ca_file`], optionally with a client certificate and
/// key (PEM).
pub fn tls_config(client_auth: Option<(Vec<u8>, Vec<u8>)>) -> rumqttc::TlsConfiguration {
    // rustls needs a process-wide crypto provider; the first caller installs ring.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ca = std::fs::read(mqtt_ca_file()).expect("reading the broker's CA file");
    rumqttc::TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }
}

/// A plain `cargo test` runs only the unit and mocked tests; this test's name, printed in its
/// output, says how to run the rest.
#[cfg(all(test, not(feature = "integration")))]
mod tier {
    #[test]
    fn integration_tier_not_run_use_deploy_test_sh_or_cargo_test_integration() {
        // The alias turns the tier on for every crate that has one.
        let config = include_str!("../../../../.cargo/config.toml");
        for krate in ["iot-operator", "iot-workers", "iot-testkit"] {
            assert!(
                config.contains(&format!("{krate}/integration")),
                "the test-integration alias misses {krate}"
            );
        }
    }
}
