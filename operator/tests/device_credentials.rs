//! Device identities end to end, without Kubernetes: the `iot-operator` binary makes a device CA,
//! device certificates, the service listener's password file and the CRL; a Mosquitto of this
//! test's own (configured as the identity contract's two listeners) admits and refuses clients;
//! third-party clients (`mosquitto_pub`, `mosquitto_sub`) play the devices and the bridge.
//!
//! Needs Mosquitto 2.0 (`/usr/sbin/mosquitto`, `mosquitto_pub`, `mosquitto_sub`;
//! deploy/testenv/install-mosquitto.sh installs them) and fails, never skips, without it.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::num::NonZeroU32;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use iot_operator::credentials::DeviceCa;
use iot_operator::mosquitto_support::password_file::hash_with_salt;
use rcgen::{CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, SanType};

const MOSQUITTO: &str = "/usr/sbin/mosquitto";
const BRIDGE_PASSWORD: &str = "bridge-pw-5d1e";
const SIMULATOR_PASSWORD: &str = "simulator-pw-0b7c";
/// `$7$` hash of `device-pass` with salt 00 01 .. 0b, as in the password_file unit tests.
const KNOWN_VECTOR: &str = "$7$101$AAECAwQFBgcICQoL$r6gOgSCSclaNAifoHMai28Gu4CuvkK6bcZYDAFeU7RTJSNbP\
                            CzRV6Ib8EHGZtCw+YfClZVHmrS563kHW4BCZ9w==";
/// How long a client may take to get a message through, or a process to answer.
const WAIT: Duration = Duration::from_secs(10);

fn operator_binary() -> &'static str {
    env!("CARGO_BIN_EXE_iot-operator")
}

/// Fails the test, naming what to install, when Mosquitto or its clients are missing.
fn require_mosquitto() {
    assert!(
        Path::new(MOSQUITTO).is_file(),
        "{MOSQUITTO} is missing: this test needs Mosquitto 2.0 \
         (deploy/testenv/install-mosquitto.sh, or apt-get install mosquitto mosquitto-clients)"
    );
    for client in ["mosquitto_pub", "mosquitto_sub"] {
        let found = Command::new(client)
            .arg("--help")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "{client} is missing: apt-get install mosquitto-clients"
        );
    }
}

/// A directory of this test's own, removed when the test passes.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("iot-devcreds-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("test files kept in {}", self.0.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Runs `iot-operator ARGS`; its stdout. Panics with its stderr when it fails.
fn operator(args: &[&str]) -> String {
    let out = Command::new(operator_binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running iot-operator");
    assert!(
        out.status.success(),
        "iot-operator {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `iot-operator ARGS` expecting failure; its stderr.
fn operator_fails(args: &[&str]) -> String {
    let out = Command::new(operator_binary())
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("running iot-operator");
    assert!(!out.status.success(), "iot-operator {args:?} succeeded");
    String::from_utf8(out.stderr).unwrap()
}

/// The value of `key=` in the commands' output.
fn value<'a>(output: &'a str, key: &str) -> &'a str {
    output
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key}= in {output}"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A server certificate for 127.0.0.1 signed by the device CA in `ca_dir` (one CA for both, as
/// a small installation may have).
fn write_server_certificate(ca_dir: &Path, dir: &Path) {
    let ca = DeviceCa::from_pem(
        &std::fs::read_to_string(ca_dir.join("ca.crt")).unwrap(),
        &std::fs::read_to_string(ca_dir.join("ca.key")).unwrap(),
    )
    .unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    params.subject_alt_names = vec![SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST))];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let (cert, key) = ca.sign_with_new_key(&params).unwrap();
    std::fs::write(dir.join("server.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

/// Lines a child prints, read on a thread of their own.
fn lines_of(stream: impl std::io::Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The first line within `timeout` that contains `needle`; every line read is kept in `seen`.
fn wait_for_line(
    rx: &Receiver<String>,
    needle: &str,
    timeout: Duration,
    seen: &mut Vec<String>,
) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                if line.contains(needle) {
                    return Some(line);
                }
            }
            Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => return None,
        }
    }
}

/// Waits for `child`, killing it and failing the test after [`WAIT`]: a client that hangs is
/// no answer to "admitted or refused?".
fn finish(mut child: Child, what: &str) -> bool {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.success();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not finish within {WAIT:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The identity contract's broker: a device listener (client certificates of the device CA,
/// CN = username = client id, CRL, write-only patterns) and a service listener (passwords, the
/// bridge reads, the simulator writes), both TLS with one server certificate.
struct Broker {
    child: Child,
    device_port: u16,
    service_port: u16,
    dir: PathBuf,
    /// The broker's `comm`: a copy of the mosquitto binary under a name of this test's own, so
    /// that `mosquitto-reload --process-name` signals this broker and no other on the machine.
    process_name: String,
}

impl Broker {
    /// Starts Mosquitto with the CA (and CRL) in `dir/ca` and the password file `dir/passwd`.
    fn start(dir: &Path, tag: &str) -> Self {
        write_server_certificate(&dir.join("ca"), dir);
        // One ACL for the whole broker, as the chart writes it.
        std::fs::write(
            dir.join("broker.acl"),
            "user iot-bridge\ntopic read iot/#\ntopic read $SYS/broker/#\n\n\
             user iot-simulator\ntopic write iot/#\n\n\
             pattern write iot/%u/raw\npattern write iot/%u/trends\npattern write iot/%u/status\n",
        )
        .unwrap();
        std::fs::set_permissions(
            dir.join("broker.acl"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        // Unique per test (both tests of this file run in one process), at most the 15
        // characters of a `comm`.
        let process_name = format!("mq-{tag}-{}", std::process::id());
        assert!(process_name.len() <= 15, "{process_name}");
        let binary = dir.join(&process_name);
        std::fs::copy(MOSQUITTO, &binary).unwrap();
        let (device_port, service_port) = (free_port(), free_port());
        let d = dir.display();
        // `user root`: when this test runs as root, Mosquitto keeps the user that wrote the 0600
        // password file instead of dropping to `mosquitto` (in the pod both are one user).
        std::fs::write(
            dir.join("mosquitto.conf"),
            format!(
                "persistence false\nuser root\n\
                 allow_anonymous false\npassword_file {d}/passwd\nacl_file {d}/broker.acl\n\
                 log_dest stderr\nlog_type error\nlog_type warning\nlog_type notice\n\
                 log_type information\n\
                 \n\
                 listener {device_port} 127.0.0.1\n\
                 cafile {d}/ca/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n\
                 require_certificate true\nuse_identity_as_username true\n\
                 use_username_as_clientid true\ncrlfile {d}/ca/crl.pem\n\
                 \n\
                 listener {service_port} 127.0.0.1\n\
                 cafile {d}/ca/ca.crt\ncertfile {d}/server.crt\nkeyfile {d}/server.key\n"
            ),
        )
        .unwrap();
        let child = Command::new(&binary)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("mosquitto.log")).unwrap())
            .spawn()
            .expect("starting mosquitto");
        let mut broker = Self {
            child,
            device_port,
            service_port,
            dir: dir.to_path_buf(),
            process_name,
        };
        let deadline = Instant::now() + WAIT;
        for port in [device_port, service_port] {
            while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
                assert!(
                    broker.child.try_wait().unwrap().is_none(),
                    "mosquitto exited: {}",
                    broker.log()
                );
                assert!(
                    Instant::now() < deadline,
                    "mosquitto did not listen on {port}"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        broker
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("mosquitto.log")).unwrap_or_default()
    }

    fn ca_file(&self) -> String {
        self.dir.join("ca/ca.crt").display().to_string()
    }

    /// `mosquitto_pub`/`mosquitto_sub` connecting to the device listener with the certificate
    /// `cert_dir/ID.crt` (no certificate when `id` is `None`).
    fn device_client(&self, program: &str, cert_dir: &Path, id: Option<&str>) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-h", "127.0.0.1", "-p", &self.device_port.to_string()])
            .args(["--cafile", &self.ca_file()]);
        if let Some(id) = id {
            cmd.args(["--cert", path(&cert_dir.join(format!("{id}.crt")))])
                .args(["--key", path(&cert_dir.join(format!("{id}.key")))]);
        }
        cmd
    }

    /// One QoS 1 publish by device `id` with its certificate from `cert_dir`; whether the
    /// broker let it connect (a QoS 1 publish that the ACL denies is still acknowledged, the
    /// message just goes nowhere).
    fn device_publish(
        &self,
        cert_dir: &Path,
        id: Option<&str>,
        topic: &str,
        payload: &str,
    ) -> bool {
        let child = self
            .device_client("mosquitto_pub", cert_dir, id)
            .args(["-q", "1", "-t", topic, "-m", payload])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        finish(child, &format!("mosquitto_pub as {id:?} to {topic}"))
    }

    /// `mosquitto_pub`/`mosquitto_sub` connecting to the service listener, as `user` if given.
    fn service_client(&self, program: &str, user: Option<(&str, &str)>) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(["-h", "127.0.0.1", "-p", &self.service_port.to_string()])
            .args(["--cafile", &self.ca_file()]);
        if let Some((name, password)) = user {
            cmd.args(["-u", name, "-P", password]);
        }
        cmd
    }

    fn service_publish(&self, user: Option<(&str, &str)>, topic: &str, payload: &str) -> bool {
        let child = self
            .service_client("mosquitto_pub", user)
            .args(["-q", "1", "-t", topic, "-m", payload])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        finish(
            child,
            &format!("mosquitto_pub as {user:?} on the service listener"),
        )
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("mosquitto log:\n{}", self.log());
        }
    }
}

/// A long-running client whose stdout lines are collected.
struct Subscriber {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Subscriber {
    fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting mosquitto_sub");
        let lines = lines_of(child.stdout.take().unwrap());
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    fn wait_for(&mut self, needle: &str, timeout: Duration) -> bool {
        wait_for_line(&self.lines, needle, timeout, &mut self.seen).is_some()
    }

    /// Everything printed so far, without waiting.
    fn drain(&mut self) -> &[String] {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        &self.seen
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bridge's view: `iot-bridge` on the service listener, subscribed to `iot/#`, printing
/// `topic payload`. Returns once a message of device `probe_id` has come through (so the
/// subscription is in place).
fn observer(broker: &Broker, cert_dir: &Path, probe_id: &str) -> Subscriber {
    let mut cmd = broker.service_client("mosquitto_sub", Some(("iot-bridge", BRIDGE_PASSWORD)));
    cmd.args(["-q", "1", "-v", "-t", "iot/#"]);
    let mut sub = Subscriber::spawn(cmd);
    let deadline = Instant::now() + WAIT;
    for attempt in 0.. {
        let payload = format!("probe-{attempt}");
        assert!(broker.device_publish(
            cert_dir,
            Some(probe_id),
            &format!("iot/{probe_id}/raw"),
            &payload
        ));
        if sub.wait_for(&payload, Duration::from_millis(500)) {
            return sub;
        }
        assert!(
            Instant::now() < deadline,
            "the observer received no probe: {:?}\n{}",
            sub.seen,
            broker.log()
        );
    }
    unreachable!()
}

/// CA, two devices, password file and broker in a new scratch directory.
fn installation(name: &str) -> (Scratch, Broker, PathBuf) {
    require_mosquitto();
    let scratch = Scratch::new(name);
    let dir = scratch.0.clone();
    let ca_dir = dir.join("ca");
    let devices = dir.join("devices");
    let out = operator(&[
        "device-credentials",
        "init-ca",
        "--out-dir",
        path(&ca_dir),
        "--days",
        "2",
    ]);
    assert_eq!(value(&out, "ca_key"), path(&ca_dir.join("ca.key")));
    for id in ["A", "B"] {
        operator(&[
            "device-credentials",
            "issue",
            "--device",
            id,
            "--ca-dir",
            path(&ca_dir),
            "--out-dir",
            path(&devices),
        ]);
    }
    std::fs::write(dir.join("bridge.password"), format!("{BRIDGE_PASSWORD}\n")).unwrap();
    std::fs::write(dir.join("simulator.password"), SIMULATOR_PASSWORD).unwrap();
    operator(&[
        "mqtt-password-file",
        "--user",
        &format!("iot-bridge={}", path(&dir.join("bridge.password"))),
        "--user",
        &format!("iot-simulator={}", path(&dir.join("simulator.password"))),
        "--out",
        path(&dir.join("passwd")),
    ]);
    // The unit tests' known `$7$` vector (salt 00..0b, `device-pass`): the broker must take it.
    let salt: [u8; 12] = std::array::from_fn(|i| i as u8);
    let vector = hash_with_salt(b"device-pass", &salt, NonZeroU32::new(101).unwrap());
    assert_eq!(vector, KNOWN_VECTOR);
    let mut passwd = std::fs::OpenOptions::new()
        .append(true)
        .open(dir.join("passwd"))
        .unwrap();
    writeln!(passwd, "vector:{vector}").unwrap();
    let broker = Broker::start(&dir, &name[..3]);
    (scratch, broker, devices)
}

#[test]
fn devices_write_only_their_own_topics_read_nothing_and_strangers_are_refused() {
    let (scratch, broker, devices) = installation("acl");
    let dir = scratch.0.clone();
    let mut bridge = observer(&broker, &devices, "A");

    // A device writes its own topics; the bridge reads them.
    assert!(broker.device_publish(&devices, Some("A"), "iot/A/raw", "a-own"));
    assert!(
        bridge.wait_for("iot/A/raw a-own", WAIT),
        "{:?}",
        bridge.seen
    );

    // Another device's topic, or a topic outside the patterns: acknowledged, delivered nowhere.
    // The marker published after them by the same device shows they would have arrived by now.
    assert!(broker.device_publish(&devices, Some("A"), "iot/B/raw", "a-forged"));
    assert!(broker.device_publish(&devices, Some("A"), "iot/A/config", "a-off-pattern"));
    assert!(broker.device_publish(&devices, Some("A"), "iot/A/trends", "a-marker"));
    assert!(
        bridge.wait_for("iot/A/trends a-marker", WAIT),
        "{:?}",
        bridge.seen
    );
    let seen = bridge.drain().to_vec();
    assert!(
        !seen
            .iter()
            .any(|l| l.contains("a-forged") || l.contains("a-off-pattern")),
        "a device wrote outside its own topics: {seen:?}"
    );

    // A device that subscribes to everything, and to the bridge's shared group, gets nothing
    // while other devices' traffic flows.
    // `stdbuf -oL`: mosquitto_sub's debug lines (the SUBACK) are not flushed into a pipe.
    let spy_client = broker.device_client("mosquitto_sub", &devices, Some("A"));
    let mut spy_cmd = Command::new("stdbuf");
    spy_cmd
        .arg("-oL")
        .arg(spy_client.get_program())
        .args(spy_client.get_args())
        .args(["-d", "-v", "-t", "#", "-t", "$share/iot-bridge/#"]);
    let mut spy = Subscriber::spawn(spy_cmd);
    assert!(spy.wait_for("SUBACK", WAIT), "no SUBACK: {:?}", spy.seen);
    for i in 0..5 {
        let payload = format!("b-traffic-{i}");
        assert!(broker.device_publish(&devices, Some("B"), "iot/B/raw", &payload));
        assert!(
            bridge.wait_for(&format!("iot/B/raw {payload}"), WAIT),
            "{:?}",
            bridge.seen
        );
    }
    assert!(broker.service_publish(
        Some(("iot-simulator", SIMULATOR_PASSWORD)),
        "iot/sim-1/raw",
        "sim-traffic"
    ));
    assert!(
        bridge.wait_for("iot/sim-1/raw sim-traffic", WAIT),
        "{:?}",
        bridge.seen
    );
    // Copies to the spy would have left the broker with the bridge's; a second is ample for
    // the spy to print one.
    spy.wait_for("PUBLISH", Duration::from_secs(1));
    let spied = spy.drain().to_vec();
    assert!(
        !spied
            .iter()
            .any(|l| l.contains("PUBLISH") || l.contains("traffic") || l.contains("probe")),
        "a device read messages: {spied:?}"
    );

    // A certificate of another CA, and no certificate at all, are refused on the device listener.
    let other_ca = dir.join("other-ca");
    let other_devices = dir.join("other-devices");
    operator(&[
        "device-credentials",
        "init-ca",
        "--out-dir",
        path(&other_ca),
    ]);
    operator(&[
        "device-credentials",
        "issue",
        "--device",
        "A",
        "--ca-dir",
        path(&other_ca),
        "--out-dir",
        path(&other_devices),
    ]);
    assert!(
        !broker.device_publish(&other_devices, Some("A"), "iot/A/raw", "other-ca"),
        "a certificate of another CA was admitted"
    );
    assert!(
        !broker.device_publish(&devices, None, "iot/A/raw", "no-cert"),
        "a client without a certificate was admitted"
    );

    // The service listener: no anonymous clients, no wrong passwords, the right one works.
    assert!(
        !broker.service_publish(None, "iot/x/raw", "anonymous"),
        "anonymous admitted"
    );
    assert!(
        broker.service_publish(Some(("vector", "device-pass")), "iot/x/raw", "vector"),
        "the known hash vector was refused"
    );
    assert!(
        !broker.service_publish(Some(("iot-bridge", "wrong")), "iot/x/raw", "wrong"),
        "a wrong password was admitted"
    );
    assert!(
        !broker.service_publish(Some(("A", BRIDGE_PASSWORD)), "iot/x/raw", "device-as-user"),
        "a device name without a password entry was admitted"
    );
    assert!(broker.service_publish(
        Some(("iot-simulator", SIMULATOR_PASSWORD)),
        "iot/sim-1/raw",
        "sim-final"
    ));
    assert!(
        bridge.wait_for("iot/sim-1/raw sim-final", WAIT),
        "{:?}",
        bridge.seen
    );
    assert!(
        !bridge
            .drain()
            .iter()
            .any(|l| l.contains("other-ca") || l.contains("anonymous")),
        "a refused client's message arrived"
    );
}

#[test]
fn a_revoked_device_is_refused_after_the_reload_while_others_still_connect() {
    let (_scratch, mut broker, devices) = installation("revoke");
    let crl = broker.dir.join("ca/crl.pem");
    let ca_dir = broker.dir.join("ca");
    assert!(broker.device_publish(&devices, Some("B"), "iot/B/raw", "before"));

    // The sidecar, watching the CRL and signalling this test's broker only.
    let mut reload = Command::new(operator_binary())
        .args([
            "mosquitto-reload",
            "--watch",
            path(&crl),
            "--interval-seconds",
            "1",
        ])
        .args(["--process-name", &broker.process_name])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let reload_log = lines_of(reload.stderr.take().unwrap());
    let mut log = Vec::new();
    assert!(
        wait_for_line(&reload_log, "watching files", WAIT, &mut log).is_some(),
        "mosquitto-reload did not start: {log:?}"
    );

    let revoke_b = || {
        operator(&[
            "device-credentials",
            "revoke",
            "--cert",
            path(&devices.join("B.crt")),
            "--ca-dir",
            path(&ca_dir),
            "--crl",
            path(&crl),
        ])
    };
    let out = revoke_b();
    assert_eq!(value(&out, "revoked_count"), "1", "{out}");
    let changed = wait_for_line(&reload_log, "watched file changed", WAIT, &mut log)
        .unwrap_or_else(|| panic!("no change seen: {log:?}"));
    assert!(changed.contains(path(&crl)), "{changed}");
    assert!(
        wait_for_line(&reload_log, "sent SIGHUP", WAIT, &mut log).is_some(),
        "no SIGHUP sent: {log:?}"
    );

    // B's next connection is refused within a few seconds; A still connects, to the same broker.
    let deadline = Instant::now() + WAIT;
    while broker.device_publish(&devices, Some("B"), "iot/B/raw", "after") {
        assert!(
            Instant::now() < deadline,
            "the revoked device still connects: {}",
            broker.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(broker.device_publish(&devices, Some("A"), "iot/A/raw", "still-here"));
    assert!(
        broker.child.try_wait().unwrap().is_none(),
        "the broker restarted instead of reloading"
    );

    // Revoking again changes nothing.
    let again = revoke_b();
    assert!(again.contains("already_revoked="), "{again}");

    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(reload.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    assert!(finish(reload, "mosquitto-reload after SIGTERM"));
    let log_text = log.join("\n");
    assert!(!log_text.contains("PRIVATE KEY"), "{log_text}");
}

#[test]
fn reserved_and_malformed_ids_are_refused_and_keys_are_private() {
    let scratch = Scratch::new("ids");
    let ca_dir = scratch.0.join("ca");
    let devices = scratch.0.join("devices");
    operator(&["device-credentials", "init-ca", "--out-dir", path(&ca_dir)]);
    for (id, expected) in [
        ("iot-bridge", "reserved"),
        ("IOT-simulator", "reserved"),
        ("a/b", "'/'"),
        ("+", "'+'"),
        ("#", "'#'"),
    ] {
        let err = operator_fails(&[
            "device-credentials",
            "issue",
            "--device",
            id,
            "--ca-dir",
            path(&ca_dir),
            "--out-dir",
            path(&devices),
        ]);
        assert!(err.contains(expected) && err.contains(id), "{id}: {err}");
    }
    assert!(!devices.exists(), "a refused id left files");

    let out = operator(&[
        "device-credentials",
        "issue",
        "--device",
        "sensor-1",
        "--ca-cert",
        path(&ca_dir.join("ca.crt")),
        "--ca-key",
        path(&ca_dir.join("ca.key")),
        "--out-dir",
        path(&devices),
        "--days",
        "30",
    ]);
    assert_eq!(value(&out, "device"), "sensor-1");
    assert!(!out.contains("PRIVATE KEY"), "{out}");
    let serial = value(&out, "serial");
    assert_eq!(serial.len(), 32, "{serial}");
    for (file, mode) in [
        (ca_dir.join("ca.key"), 0o600),
        (devices.join("sensor-1.key"), 0o600),
        (devices.join("sensor-1.crt"), 0o644),
        (ca_dir.join("crl.pem"), 0o644),
    ] {
        let actual = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(actual, mode, "{}", file.display());
    }
    // The files are what OpenSSL expects of a client: verified by the CA, CN = id.
    let verify = Command::new("openssl")
        .args(["verify", "-CAfile", path(&ca_dir.join("ca.crt"))])
        .arg(devices.join("sensor-1.crt"))
        .output()
        .expect("openssl");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );

    // Revocation by serial, then OpenSSL sees the certificate as revoked.
    let crl = ca_dir.join("crl.pem");
    operator(&[
        "device-credentials",
        "revoke",
        "--serial",
        serial,
        "--ca-dir",
        path(&ca_dir),
        "--crl",
        path(&crl),
    ]);
    let verify = Command::new("openssl")
        .args([
            "verify",
            "-crl_check",
            "-CAfile",
            path(&ca_dir.join("ca.crt")),
        ])
        .args(["-CRLfile", path(&crl)])
        .arg(devices.join("sensor-1.crt"))
        .output()
        .expect("openssl");
    assert!(!verify.status.success());
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("revoked")
            || String::from_utf8_lossy(&verify.stderr).contains("revoked"),
        "{verify:?}"
    );

    // Existing keys are never overwritten.
    let err = operator_fails(&["device-credentials", "init-ca", "--out-dir", path(&ca_dir)]);
    assert!(err.contains("refusing"), "{err}");
    let err = operator_fails(&[
        "device-credentials",
        "issue",
        "--device",
        "sensor-1",
        "--ca-dir",
        path(&ca_dir),
        "--out-dir",
        path(&devices),
    ]);
    assert!(err.contains("refusing"), "{err}");
}
