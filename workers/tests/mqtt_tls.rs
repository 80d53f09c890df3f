//! The bridge and the simulator against a Mosquitto that only speaks TLS and only admits clients
//! with a password: a broker of this test's own (certificates made with `openssl`, passwords
//! with `mosquitto_passwd`), on a free loopback port, next to the test environment's Kafka.
//! `mosquitto_pub` plays a device where the check is what a third-party client sees.

mod common;

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Installation, Worker};

const READY: Duration = Duration::from_secs(60);
const BRIDGE_PASSWORD: &str = "bridge-password-7f3a";
const DEVICE_PASSWORD: &str = "device-password-91c2";

/// Runs `command` (split at spaces) in `dir`.
fn run(dir: &Path, command: &str) {
    let mut words = command.split(' ');
    let program = words.next().unwrap();
    let out = Command::new(program)
        .args(words)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("{program} could not run: {e}"));
    assert!(
        out.status.success(),
        "{command} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`{name}.crt`, `{name}.key`) in `dir`.
fn ca(dir: &Path, name: &str) {
    run(
        dir,
        &format!(
            "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN={name} \
             -keyout {name}.key -out {name}.crt"
        ),
    );
}

/// A Mosquitto with one TLS listener on 127.0.0.1, no anonymous clients, and two users.
struct SecureBroker {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl SecureBroker {
    fn start(dir: &Path) -> Self {
        let dir = dir.join("secure-broker");
        std::fs::create_dir_all(&dir).unwrap();
        ca(&dir, "ca");
        ca(&dir, "other-ca");
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(
            &dir,
            "openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key \
             -out server.csr",
        );
        run(
            &dir,
            "openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 1 \
             -extfile san.ext -out server.crt",
        );
        run(
            &dir,
            &format!("mosquitto_passwd -c -b passwd bridge {BRIDGE_PASSWORD}"),
        );
        run(
            &dir,
            &format!("mosquitto_passwd -b passwd device-1 {DEVICE_PASSWORD}"),
        );
        // Started as root, Mosquitto drops to its own user, which must read these test files.
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let d = dir.display();
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "listener {port} 127.0.0.1\ncafile {d}/ca.crt\ncertfile {d}/server.crt\n\
                 keyfile {d}/server.key\nallow_anonymous false\npassword_file {d}/passwd\n\
                 persistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
            ),
        )
        .unwrap();
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("starting mosquitto (deploy/testenv/install-mosquitto.sh installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("mqtts://127.0.0.1:{}", self.port)
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    /// `mosquitto_pub` of one QoS 1 message; whether the broker took it.
    fn device_publish(&self, ca: &str, user: Option<(&str, &str)>, topic: &str) -> bool {
        let mut cmd = Command::new("mosquitto_pub");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "--cafile",
                &self.file(ca),
                "-q",
                "1",
                "-t",
                topic,
                "-m",
                "{}",
            ]);
        if let Some((u, p)) = user {
            cmd.args(["-u", u, "-P", p]);
        }
        cmd.stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success()
    }
}

impl Drop for SecureBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_refuses_anonymous_clients_wrong_passwords_and_clients_of_another_ca() {
    let inst = Installation::new("tlsrefuse").await;
    let broker = SecureBroker::start(&inst.dir);
    let topic = inst.mqtt_topic("device-1", "raw");
    assert!(
        broker.device_publish("ca.crt", Some(("device-1", DEVICE_PASSWORD)), &topic),
        "the right password over TLS is accepted"
    );
    assert!(!broker.device_publish("ca.crt", None, &topic), "anonymous");
    assert!(
        !broker.device_publish("ca.crt", Some(("device-1", "wrong")), &topic),
        "wrong password"
    );
    assert!(
        !broker.device_publish("other-ca.crt", Some(("device-1", DEVICE_PASSWORD)), &topic),
        "a client that trusts another CA does not talk to this broker"
    );
    // Plain MQTT on the TLS port is not MQTT to this broker.
    let plain = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args([
            "-u",
            "device-1",
            "-P",
            DEVICE_PASSWORD,
            "-t",
            &topic,
            "-m",
            "{}",
        ])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(!plain.success(), "plaintext on the TLS listener");

    // The bridge verifies the broker: trusting another CA, it never connects.
    let password_file = inst.dir.join("bridge-password");
    std::fs::write(&password_file, format!("{BRIDGE_PASSWORD}\n")).unwrap();
    let password_path = password_file.display().to_string();
    let other_ca = broker.file("other-ca.crt");
    let url = broker.url();
    let mut bridge = inst.bridge_with(
        "tls-wrong-ca-0",
        &[
            ("IOT_MQTT_URL", &url),
            ("IOT_MQTT_CA_FILE", &other_ca),
            ("IOT_MQTT_USERNAME", "bridge"),
            ("IOT_MQTT_PASSWORD_FILE", &password_path),
        ],
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(bridge.is_running());
    let (status, _) = bridge.get("/readyz").expect("the admin endpoint answers");
    assert_ne!(status, 200, "not ready without a broker it trusts");
    let log = bridge.log_tail(1000);
    assert!(
        !log.contains(BRIDGE_PASSWORD),
        "the password is never logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bridge_and_the_simulator_carry_over_tls_with_passwords() {
    let inst = Installation::new("tlscarry").await;
    let broker = SecureBroker::start(&inst.dir);
    let collector = inst.collect(&[inst.raw_topic("smart_breaker"), inst.deadletter_topic()]);
    let password_file = inst.dir.join("bridge-password");
    std::fs::write(&password_file, format!("{BRIDGE_PASSWORD}\n")).unwrap();
    let device_password_file = inst.dir.join("device-password");
    std::fs::write(&device_password_file, DEVICE_PASSWORD).unwrap();
    let (url, ca) = (broker.url(), broker.file("ca.crt"));
    let password_path = password_file.display().to_string();
    let mut bridge = inst.bridge_with(
        "tls-0",
        &[
            ("IOT_MQTT_URL", &url),
            ("IOT_MQTT_CA_FILE", &ca),
            ("IOT_MQTT_USERNAME", "bridge"),
            ("IOT_MQTT_PASSWORD_FILE", &password_path),
        ],
    );
    bridge.wait_ready(READY).await;

    // A third-party device client.
    let payload = format!(
        r#"{{"device_id":"device-1","device_type":"smart_breaker","timestamp":"{}","measurements":{{}}}}"#,
        jiff::Timestamp::now()
    );
    let published = Command::new("mosquitto_pub")
        .args(["-h", "127.0.0.1", "-p", &broker.port.to_string()])
        .args([
            "--cafile",
            &ca,
            "-u",
            "device-1",
            "-P",
            DEVICE_PASSWORD,
            "-q",
            "1",
        ])
        .args(["-t", &inst.mqtt_topic("device-1", "raw"), "-m", &payload])
        .status()
        .unwrap();
    assert!(published.success());
    collector
        .wait_until("the device's message on its raw topic", READY, |r| {
            r.iter().any(|r| {
                r.topic == inst.raw_topic("smart_breaker") && r.payload == payload.as_bytes()
            })
        })
        .await;

    // The simulator connects its devices with TLS and a password too.
    let device_password_path = device_password_file.display().to_string();
    let mut simulator = Worker::start(
        "simulator-tls",
        &[
            "simulator",
            "--load",
            "--load-devices",
            "1",
            "--load-device-type",
            "smart_breaker",
            "--load-rate",
            "50",
            "--load-messages-per-device",
            "20",
            "--device-prefix",
            "device-",
        ],
        inst.worker_env()
            .into_iter()
            .chain([
                ("IOT_MQTT_URL", url.clone()),
                ("IOT_MQTT_CA_FILE", ca.clone()),
                ("IOT_MQTT_USERNAME", "device-1".to_string()),
                ("IOT_MQTT_PASSWORD_FILE", device_password_path),
            ])
            .collect(),
        &inst.dir,
    );
    assert!(simulator.wait_exit(READY).await.success());
    let raw = inst.raw_topic("smart_breaker");
    let records = collector
        .wait_until("the simulator's 20 messages", READY, |r| {
            r.iter().filter(|r| r.topic == raw).count() >= 21
        })
        .await;
    assert!(records.iter().filter(|r| r.topic == raw).count() >= 21);
    assert!(collector.on(&inst.deadletter_topic()).is_empty());
    for log in [bridge.log_tail(10_000), simulator.log_tail(10_000)] {
        assert!(
            !log.contains(BRIDGE_PASSWORD) && !log.contains(DEVICE_PASSWORD),
            "a password in a log"
        );
    }
}
