//! Device identity against the test environment's broker, as a device sees it: third-party
//! clients (`mosquitto_pub`, `mosquitto_sub`) with device certificates that
//! `iot-operator device-credentials issue` made from the test environment's device CA, the bridge
//! and Kafka behind them. The broker's device listener takes the device id from the certificate
//! (username and client id), lets a device publish only under its own id and read nothing; its
//! service listener admits only the services' passwords; a revoked certificate is refused after
//! `iot-operator mosquitto-reload` has the broker reload its CRL, without a restart.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Installation, Worker};
use iot_testkit::{MqttIdentity, mqtt_ca_file};

const READY: Duration = Duration::from_secs(60);

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: the test environment's broker identities are missing; start it \
             with deploy/testenv/up.sh and source deploy/testenv/.run/env"
        )
    })
}

/// The test environment's PKI directory (deploy/testenv/up.sh): device-ca.{crt,key},
/// devices.crl.
fn pki() -> PathBuf {
    PathBuf::from(env("IOT_TESTENV_MQTT_PKI"))
}

/// The test environment's device CA: certificate and key.
fn device_ca() -> (PathBuf, PathBuf) {
    (pki().join("device-ca.crt"), pki().join("device-ca.key"))
}

/// (host, port) of an `mqtts://host:port` URL.
fn host_port(url: &str) -> (String, String) {
    let rest = url.strip_prefix("mqtts://").expect("an mqtts:// URL");
    let (host, port) = rest.rsplit_once(':').expect("host:port");
    (host.to_string(), port.to_string())
}

/// The `iot-operator` binary of this build (the device credential commands).
fn operator_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/debug/deps/device_identity-HASH -> target/debug/iot-operator
    let bin = exe.parent().unwrap().parent().unwrap().join("iot-operator");
    assert!(
        bin.exists(),
        "{} is missing: build it with `cargo build -p iot-operator`",
        bin.display()
    );
    bin
}

fn operator(args: &[&str]) -> Output {
    let out = Command::new(operator_binary())
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("iot-operator runs");
    assert!(
        out.status.success(),
        "iot-operator {}: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Issues a certificate of the test environment's device CA for `device` into `dir`.
fn issue(dir: &Path, device: &str) {
    let (ca, key) = device_ca();
    let out = operator(&[
        "device-credentials",
        "issue",
        "--device",
        device,
        "--ca-cert",
        ca.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
        "--out-dir",
        dir.to_str().unwrap(),
        "--days",
        "1",
    ]);
    let key_pem = std::fs::read_to_string(dir.join(format!("{device}.key"))).unwrap();
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let key_body = key_pem.lines().nth(1).unwrap_or_default();
    assert!(
        !key_body.is_empty() && !printed.contains(key_body),
        "the device key is never printed"
    );
}

/// A device: `mosquitto_pub`/`mosquitto_sub` on the device listener with its certificate.
struct Device<'a> {
    id: String,
    dir: &'a Path,
}

impl Device<'_> {
    fn tls_args(&self) -> Vec<String> {
        let (host, port) = host_port(&env("IOT_TESTENV_MQTT_DEVICE_URL"));
        let file = |ext: &str| self.dir.join(format!("{}.{ext}", self.id));
        vec![
            "-h".into(),
            host,
            "-p".into(),
            port,
            "--cafile".into(),
            mqtt_ca_file(),
            "--cert".into(),
            file("crt").display().to_string(),
            "--key".into(),
            file("key").display().to_string(),
        ]
    }

    /// Publishes one QoS 1 message; whether the broker accepted the connection.
    fn publish(&self, topic: &str, payload: &str, client_id: Option<&str>) -> bool {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(self.tls_args())
            .args(["-q", "1", "-t", topic, "-m", payload]);
        if let Some(id) = client_id {
            cmd.args(["-i", id]);
        }
        cmd.stderr(Stdio::null())
            .status()
            .expect("mosquitto_pub runs (Debian package mosquitto-clients)")
            .success()
    }

    /// Subscribes to `filters` in the background for `seconds`, printing what arrives.
    fn subscribe(&self, filters: &[&str], seconds: u32) -> Child {
        let mut cmd = Command::new("mosquitto_sub");
        cmd.args(self.tls_args())
            .args(["-v", "-W", &seconds.to_string()]);
        for f in filters {
            cmd.args(["-t", f]);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mosquitto_sub runs (Debian package mosquitto-clients)")
    }
}

fn payload(device: &str, marker: &str) -> String {
    format!(
        r#"{{"device_id":"{device}","device_type":"smart_breaker","timestamp":"{}","event_type":"{marker}","measurements":{{}}}}"#,
        jiff::Timestamp::now()
    )
}

/// `mosquitto_pub` on the service listener with a username and password (or none).
fn service_publish(user: Option<(&str, &str)>, topic: &str) -> bool {
    let (host, port) = host_port(&env("IOT_MQTT_URL"));
    let mut cmd = Command::new("mosquitto_pub");
    cmd.args(["-h", &host, "-p", &port, "--cafile", &mqtt_ca_file()])
        .args(["-q", "1", "-t", topic, "-m", "{}"]);
    if let Some((u, p)) = user {
        cmd.args(["-u", u, "-P", p]);
    }
    cmd.stderr(Stdio::null()).status().unwrap().success()
}

/// A CA of nobody's and a device certificate it signed (openssl).
fn foreign_certificate(dir: &Path, device: &str) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl runs");
        assert!(out.status.success(), "openssl {args:?}: {out:?}");
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=foreign CA",
        "-keyout",
        "foreign-ca.key",
        "-out",
        "foreign-ca.crt",
    ]);
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        &format!("/CN={device}"),
        "-keyout",
        &format!("{device}.key"),
        "-out",
        "foreign.csr",
    ]);
    run(&[
        "x509",
        "-req",
        "-in",
        "foreign.csr",
        "-CA",
        "foreign-ca.crt",
        "-CAkey",
        "foreign-ca.key",
        "-CAcreateserial",
        "-days",
        "1",
        "-out",
        &format!("{device}.crt"),
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_publish_only_as_themselves_and_read_nothing() {
    let inst = Installation::new("devid").await;
    let client_id = format!("{}-devid-0", inst.prefix);
    let mut bridge = inst.bridge("devid-0");
    bridge.wait_ready(READY).await;
    let raw = inst.raw_topic("smart_breaker");
    let collector = inst.collect(&[raw.clone(), inst.deadletter_topic()]);
    let (a, b, c) = (
        format!("{}-a", inst.prefix),
        format!("{}-b", inst.prefix),
        format!("{}-c", inst.prefix),
    );
    for id in [&a, &b, &c] {
        issue(&inst.dir, id);
    }
    let device = |id: &String| Device {
        id: id.clone(),
        dir: &inst.dir,
    };
    let (dev_a, dev_c) = (device(&a), device(&c));

    // Device C listens to everything it may try: every topic, the bridge's shared group, and
    // the raw topics of this installation.
    let all_raw = format!("{}/+/raw", inst.root);
    let listener = dev_c.subscribe(&["#", "$share/iot-bridge/#", &all_raw], 15);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // A as itself: carried to Kafka.
    assert!(dev_a.publish(&inst.mqtt_topic(&a, "raw"), &payload(&a, "own-1"), None));
    // A as B, on B's topic with B's device id: the broker drops it.
    assert!(dev_a.publish(&inst.mqtt_topic(&b, "raw"), &payload(&b, "spoofed"), None));
    // A with the bridge's client id: the broker names the client after A's certificate, so the
    // bridge's session is untouched and the message is A's.
    assert!(dev_a.publish(
        &inst.mqtt_topic(&a, "raw"),
        &payload(&a, "own-2"),
        Some(&client_id)
    ));
    let records = collector
        .wait_until("both of A's own messages on the raw topic", READY, |r| {
            ["own-1", "own-2"].iter().all(|m| {
                r.iter()
                    .any(|r| r.topic == raw && r.json()["event_type"] == *m)
            })
        })
        .await;
    // The bridge carries in order per connection; a second later, nothing else arrived either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let records = collector
        .records()
        .into_iter()
        .chain(records)
        .collect::<Vec<_>>();
    assert!(
        !records
            .iter()
            .any(|r| String::from_utf8_lossy(&r.payload).contains("spoofed")),
        "a message A published as B reached Kafka"
    );
    assert!(bridge.is_running());
    let (status, _) = bridge.get("/readyz").expect("the bridge's admin endpoint");
    assert_eq!(status, 200, "the bridge stays connected");
    assert!(
        !bridge.log_tail(10_000).contains("MQTT connection lost"),
        "a device with the bridge's client id took over the bridge's connection"
    );

    let out = listener.wait_with_output().unwrap();
    // mosquitto_sub exits 27 when its -W time is up: it was connected and subscribed all along
    // (a refused or lost connection exits otherwise).
    assert_eq!(
        out.status.code(),
        Some(27),
        "device C's subscriber was not connected for its whole time: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let heard = String::from_utf8_lossy(&out.stdout);
    assert!(
        heard.trim().is_empty(),
        "device C read what it may not: {heard}"
    );

    // Who is refused: no certificate, a certificate of another CA, and on the service listener
    // anonymous clients and wrong passwords.
    let foreign = inst.dir.join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    foreign_certificate(&foreign, &a);
    let impostor = Device {
        id: a.clone(),
        dir: &foreign,
    };
    assert!(
        !impostor.publish(&inst.mqtt_topic(&a, "raw"), &payload(&a, "foreign"), None),
        "a certificate of another CA"
    );
    let (host, port) = host_port(&env("IOT_TESTENV_MQTT_DEVICE_URL"));
    let no_cert = Command::new("mosquitto_pub")
        .args(["-h", &host, "-p", &port, "--cafile", &mqtt_ca_file()])
        .args(["-q", "1", "-t", &inst.mqtt_topic(&a, "raw"), "-m", "{}"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!no_cert.success(), "a device without a certificate");
    let topic = inst.mqtt_topic(&a, "raw");
    assert!(!service_publish(None, &topic), "anonymous");
    assert!(
        !service_publish(Some(("iot-simulator", "wrong")), &topic),
        "a wrong password"
    );
    let password = std::fs::read_to_string(MqttIdentity::Simulator.password_file()).unwrap();
    assert!(
        service_publish(Some(("iot-simulator", password.trim_end())), &topic),
        "the simulator's own password"
    );
}

/// The broker's pid, from the test environment's pid file.
fn broker_pid() -> String {
    let run = PathBuf::from(env("IOT_TESTENV_RUN_DIR"));
    std::fs::read_to_string(run.join("pids/mosquitto.pid"))
        .expect("the broker's pid file")
        .trim()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_device_certificate_is_refused_without_a_broker_restart() {
    let inst = Installation::new("devrevoke").await;
    let (revoked, kept) = (
        format!("{}-revoked", inst.prefix),
        format!("{}-kept", inst.prefix),
    );
    issue(&inst.dir, &revoked);
    issue(&inst.dir, &kept);
    let device = |id: &String| Device {
        id: id.clone(),
        dir: &inst.dir,
    };
    let topic = |id: &String| inst.mqtt_topic(id, "raw");
    assert!(device(&revoked).publish(&topic(&revoked), &payload(&revoked, "before"), None));
    let pid = broker_pid();

    // The chart's reload sidecar, here against the test environment's broker.
    let crl = pki().join("devices.crl");
    let mut reload = Worker::start_program(
        "mosquitto-reload",
        &operator_binary(),
        &[
            "mosquitto-reload",
            "--watch",
            crl.to_str().unwrap(),
            "--interval-seconds",
            "1",
        ],
        &inst.dir,
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cert = inst.dir.join(format!("{revoked}.crt"));
    let (ca, key) = device_ca();
    let revoked_at = Instant::now();
    operator(&[
        "device-credentials",
        "revoke",
        "--cert",
        cert.to_str().unwrap(),
        "--ca-cert",
        ca.to_str().unwrap(),
        "--ca-key",
        key.to_str().unwrap(),
        "--crl",
        crl.to_str().unwrap(),
    ]);
    let mut refused_after = None;
    while revoked_at.elapsed() < Duration::from_secs(20) {
        if !device(&revoked).publish(&topic(&revoked), &payload(&revoked, "after"), None) {
            refused_after = Some(revoked_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = reload.terminate(Duration::from_secs(5)).await;
    let refused_after =
        refused_after.expect("the revoked certificate still connects 20 s after its revocation");
    eprintln!("revoked certificate refused {refused_after:.1?} after the revocation");
    assert!(
        device(&kept).publish(&topic(&kept), &payload(&kept, "after"), None),
        "another device's certificate still works"
    );
    assert_eq!(broker_pid(), pid, "the broker was not restarted");
    assert!(
        std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "the broker is still running"
    );
}
