//! Load mode: N devices publishing telemetry with a per-device sequence number (`seq`, from 1)
//! at a target total rate, for benchmarks and loss tests. At the end (duration, message count or
//! SIGTERM) every device waits for the broker's acknowledgements, and a JSON summary is printed
//! on stdout: what each device sent, so a consumer can check that every sequence number arrived.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use clap::Args;
use fastrand::Rng;
use iot_process::admin::Readiness;
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::conn::{DeviceConn, Target};
use super::devices::{Device, DeviceKind};
use super::{SimulatorArgs, client_id, device_topic, fleet};
use crate::clock;
use crate::metrics::SimulatorMetrics;
use crate::route::Kind;

/// `--load-device-type` value that spreads the devices over the three types.
pub const MIXED: &str = "mixed";

/// Flags of the load mode.
#[derive(Args, Clone, Debug)]
pub struct LoadArgs {
    /// Load mode instead of the realistic device loops.
    #[arg(long = "load", env = "IOT_SIM_LOAD")]
    pub load: bool,
    /// Devices publishing in load mode.
    #[arg(long, env = "IOT_LOAD_DEVICES", default_value_t = 10)]
    pub load_devices: usize,
    /// Target total rate in messages per second, over all devices.
    #[arg(long, env = "IOT_LOAD_RATE", default_value_t = 100.0)]
    pub load_rate: f64,
    /// Stop each device after this many messages (default: run for the duration or until SIGTERM).
    #[arg(long, env = "IOT_LOAD_MESSAGES_PER_DEVICE")]
    pub load_messages_per_device: Option<u64>,
    /// Device type of the load devices, or `mixed` for all three in turn.
    #[arg(long, env = "IOT_LOAD_DEVICE_TYPE", default_value = "smart_breaker")]
    pub load_device_type: String,
}

/// What a load run sent, printed as JSON on stdout.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub devices: usize,
    /// Telemetry messages published (sequence numbers 1..=n per device).
    pub published: u64,
    /// Of those, acknowledged by the broker.
    pub acknowledged: u64,
    /// Last sequence number per device id.
    pub last_seq: BTreeMap<String, u64>,
    /// Device type per device id.
    pub device_types: BTreeMap<String, String>,
    pub elapsed_seconds: f64,
    /// Achieved publish rate, messages per second.
    pub rate: f64,
}

/// The load fleet: `n` devices of `kind`, or spread over the three types for [`MIXED`].
pub fn load_fleet(
    prefix: &str,
    n: usize,
    device_type: &str,
) -> anyhow::Result<Vec<(String, DeviceKind)>> {
    if device_type == MIXED {
        let counts: Vec<(DeviceKind, usize)> = DeviceKind::ALL
            .iter()
            .enumerate()
            .map(|(i, k)| (*k, n / 3 + usize::from(i < n % 3)))
            .collect();
        return Ok(fleet(prefix, &counts));
    }
    let kind = DeviceKind::parse(device_type).ok_or_else(|| {
        anyhow::anyhow!("--load-device-type {device_type:?}: use smart_breaker, smart_meter, environmental_sensor or mixed")
    })?;
    Ok(fleet(prefix, &[(kind, n)]))
}

/// When device `index` of `devices` sends message `seq` (from 1), relative to the start: the
/// devices take turns so that the total rate is even.
pub fn send_offset(index: usize, devices: usize, seq: u64, total_rate: f64) -> Duration {
    let per_device = devices as f64 / total_rate;
    let stagger = index as f64 / total_rate;
    Duration::from_secs_f64(stagger + per_device * (seq - 1) as f64)
}

pub(super) async fn run(
    args: &SimulatorArgs,
    target: &Target,
    metrics: &SimulatorMetrics,
    readiness: &Readiness,
    end: &CancellationToken,
) -> anyhow::Result<()> {
    let load = &args.load;
    anyhow::ensure!(load.load_rate > 0.0, "--load-rate must be positive");
    anyhow::ensure!(load.load_devices > 0, "--load-devices must be at least 1");
    let devices = load_fleet(
        &args.device_prefix,
        load.load_devices,
        &load.load_device_type,
    )?;
    let root = &args.mqtt.mqtt_topic_root;
    let mut conns: Vec<DeviceConn> = devices
        .iter()
        .map(|(id, kind)| {
            DeviceConn::open(
                target,
                client_id(root, id),
                None,
                kind.type_id(),
                metrics.clone(),
            )
        })
        .collect();
    // Start the clock once every device is connected, so the rate is the rate asked for.
    while !conns.iter().all(DeviceConn::is_connected) {
        tokio::select! {
            () = end.cancelled() => break,
            () = tokio::time::sleep(Duration::from_millis(20)) => {}
        }
    }
    readiness.set(true);
    tracing::info!(
        devices = devices.len(),
        rate = load.load_rate,
        "load run starting"
    );
    let start = tokio::time::Instant::now();
    let mut seeds = args.seed.map_or_else(Rng::new, Rng::with_seed);
    let mut tasks = Vec::new();
    for (index, ((id, kind), mut conn)) in devices.iter().cloned().zip(conns.drain(..)).enumerate()
    {
        let mut rng = Rng::with_seed(seeds.u64(..));
        let (n, rate, limit) = (devices.len(), load.load_rate, load.load_messages_per_device);
        let topic = device_topic(root, &id, Kind::Raw);
        let end = end.clone();
        let metrics = metrics.clone();
        tasks.push(tokio::spawn(async move {
            let mut device = Device::new(id.clone(), kind, clock::now(), &mut rng);
            let mut seq = 0u64;
            while limit.is_none_or(|l| seq < l) {
                let at = start + send_offset(index, n, seq + 1, rate);
                tokio::select! {
                    biased;
                    () = end.cancelled() => break,
                    () = tokio::time::sleep_until(at) => {}
                }
                seq += 1;
                let msg = device.telemetry_with_seq(&mut rng, clock::now(), seq);
                metrics
                    .published
                    .with_label_values(&[kind.type_id(), "raw"])
                    .inc();
                conn.publish(topic.clone(), serde_json::to_vec(&msg)?, false)
                    .await?;
            }
            let acked = conn.close(Duration::from_secs(60)).await;
            anyhow::Ok((id, kind, seq, acked))
        }));
    }
    let mut summary = Summary {
        devices: devices.len(),
        ..Summary::default()
    };
    for t in tasks {
        let (id, kind, seq, acked) = t.await??;
        summary.published += seq;
        summary.acknowledged += acked;
        summary.last_seq.insert(id.clone(), seq);
        summary.device_types.insert(id, kind.type_id().to_string());
    }
    summary.elapsed_seconds = start.elapsed().as_secs_f64();
    summary.rate = summary.published as f64 / summary.elapsed_seconds.max(1e-9);
    readiness.set(false);
    tracing::info!(
        published = summary.published,
        acknowledged = summary.acknowledged,
        rate = summary.rate,
        "load run finished"
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", serde_json::to_string(&summary)?)?;
    out.flush()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_take_turns_at_the_total_rate() {
        // 4 devices at 100 msg/s: each every 40 ms, 10 ms apart from one another.
        assert_eq!(send_offset(0, 4, 1, 100.0), Duration::ZERO);
        assert_eq!(send_offset(1, 4, 1, 100.0), Duration::from_millis(10));
        assert_eq!(send_offset(0, 4, 2, 100.0), Duration::from_millis(40));
        assert_eq!(send_offset(3, 4, 3, 100.0), Duration::from_millis(110));
    }

    #[test]
    fn load_fleets() {
        let mixed = load_fleet("", 5, MIXED).unwrap();
        let types: Vec<&str> = mixed.iter().map(|(_, k)| k.type_id()).collect();
        assert_eq!(
            types,
            [
                "smart_breaker",
                "smart_breaker",
                "smart_meter",
                "smart_meter",
                "environmental_sensor"
            ]
        );
        let meters = load_fleet("l-", 2, "smart_meter").unwrap();
        assert_eq!(meters[1].0, "l-meter-002");
        assert!(load_fleet("", 1, "toaster").is_err());
    }
}
