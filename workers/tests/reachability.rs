//! [`ReachabilityProbe`] tells a client of this process that reaches no broker while new clients
//! do ([`Reachability::Stranded`]: seen in CI after a Kafka restart, where a running process's
//! client never reconnected) from a cluster that nobody reaches ([`Reachability::Unreachable`]).
//!
//! Needs no services: the cluster is a thread of this test speaking just enough of the Kafka
//! protocol (ApiVersions v3, Metadata v4) on a loopback port, and a stranded client is one whose
//! bootstrap address no longer answers.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use iot_workers::kafka::{Reachability, ReachabilityProbe};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

const API_METADATA: i16 = 3;
const API_VERSIONS: i16 = 18;
const NODE_ID: i32 = 1;

/// A one-node Kafka cluster that only answers metadata.
struct MetadataBroker {
    port: u16,
}

impl MetadataBroker {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        let port = listener.local_addr().unwrap().port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream, port));
            }
        });
        Self { port }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

fn serve(mut stream: TcpStream, port: u16) {
    loop {
        let mut size = [0u8; 4];
        if stream.read_exact(&mut size).is_err() {
            return;
        }
        let mut request = vec![0u8; i32::from_be_bytes(size) as usize];
        if stream.read_exact(&mut request).is_err() {
            return;
        }
        let api_key = i16::from_be_bytes([request[0], request[1]]);
        let correlation = &request[4..8];
        let body = match api_key {
            API_VERSIONS => api_versions(),
            API_METADATA => metadata(port),
            _ => return,
        };
        let mut response = correlation.to_vec();
        response.extend(body);
        let mut framed = (response.len() as i32).to_be_bytes().to_vec();
        framed.extend(response);
        if stream.write_all(&framed).is_err() {
            return;
        }
    }
}

/// ApiVersions v3 (flexible body, response header v0): ApiVersions 0-3 and Metadata 0-4.
fn api_versions() -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(0i16.to_be_bytes()); // error_code
    b.push(3); // compact array of 2 entries
    for (key, max) in [(API_VERSIONS, 3i16), (API_METADATA, 4)] {
        b.extend(key.to_be_bytes());
        b.extend(0i16.to_be_bytes());
        b.extend(max.to_be_bytes());
        b.push(0); // tagged fields
    }
    b.extend(0i32.to_be_bytes()); // throttle_time_ms
    b.push(0); // tagged fields
    b
}

fn string(b: &mut Vec<u8>, s: &str) {
    b.extend((s.len() as i16).to_be_bytes());
    b.extend(s.as_bytes());
}

/// Metadata v4: the broker itself and one topic with one partition it leads.
fn metadata(port: u16) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend(0i32.to_be_bytes()); // throttle_time_ms
    b.extend(1i32.to_be_bytes()); // one broker
    b.extend(NODE_ID.to_be_bytes());
    string(&mut b, "127.0.0.1");
    b.extend(i32::from(port).to_be_bytes());
    b.extend((-1i16).to_be_bytes()); // rack: null
    string(&mut b, "reachability-test"); // cluster_id
    b.extend(NODE_ID.to_be_bytes()); // controller_id
    b.extend(1i32.to_be_bytes()); // one topic
    b.extend(0i16.to_be_bytes()); // error_code
    string(&mut b, "telemetry");
    b.push(0); // is_internal
    b.extend(1i32.to_be_bytes()); // one partition
    b.extend(0i16.to_be_bytes()); // error_code
    b.extend(0i32.to_be_bytes()); // partition_index
    b.extend(NODE_ID.to_be_bytes()); // leader
    for _ in 0..2 {
        b.extend(1i32.to_be_bytes()); // replicas, then isr: [NODE_ID]
        b.extend(NODE_ID.to_be_bytes());
    }
    b
}

/// An address nobody listens on.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    format!("127.0.0.1:{}", listener.local_addr().unwrap().port())
}

fn client(bootstrap: &str) -> BaseConsumer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("creating a client")
}

fn connection(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", bootstrap);
    config
}

#[test]
fn a_client_that_reaches_the_cluster_is_reachable() {
    let broker = MetadataBroker::start();
    let probe = ReachabilityProbe::new(connection(&broker.bootstrap()));
    let running = client(&broker.bootstrap());
    assert_eq!(probe.check(running.client()), Reachability::Reachable);
}

#[test]
fn a_client_that_reaches_no_broker_while_a_new_one_does_is_stranded() {
    let broker = MetadataBroker::start();
    let probe = ReachabilityProbe::new(connection(&broker.bootstrap()));
    let stranded = client(&dead_address());
    assert_eq!(probe.check(stranded.client()), Reachability::Stranded);
}

#[test]
fn a_cluster_nobody_reaches_is_unreachable_not_stranded() {
    let bootstrap = dead_address();
    let probe = ReachabilityProbe::new(connection(&bootstrap));
    let down = client(&bootstrap);
    assert_eq!(probe.check(down.client()), Reachability::Unreachable);
}

#[test]
fn a_process_is_as_reachable_as_its_worst_client() {
    use Reachability::*;
    assert_eq!(Reachable.and(Reachable), Reachable);
    assert_eq!(Reachable.and(Unreachable), Unreachable);
    assert_eq!(Unreachable.and(Stranded), Stranded);
    assert_eq!(Stranded.and(Reachable), Stranded);
}
