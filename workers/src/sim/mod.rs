//! `iot-worker simulator`: simulated devices publishing over MQTT.
//!
//! Default mode: N smart breakers (the seed's device and loop), N smart meters and N
//! environmental sensors, each with its own MQTT connection, a retained `online` status on
//! connect, a retained `offline` status on a clean stop and the same as its last will, so a
//! device that vanishes shows offline. `--load`: N devices publishing telemetry with a `seq`
//! number at a target total rate, for benchmarks and loss tests; prints a JSON summary at the end.

pub mod conn;
pub mod devices;
pub mod load;
pub mod trends;

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use fastrand::Rng;
use iot_process::admin::Readiness;
use rumqttc::{LastWill, QoS};
use tokio_util::sync::CancellationToken;

use self::conn::{DeviceConn, Target};
use self::devices::{Device, DeviceKind};
use crate::cli::{self, MqttArgs};
use crate::clock;
use crate::metrics::SimulatorMetrics;
use crate::route::Kind;
use crate::runtime::{self, Lifecycle};

/// Flags of `iot-worker simulator`.
#[derive(Args, Clone, Debug)]
pub struct SimulatorArgs {
    #[command(flatten)]
    pub mqtt: MqttArgs,
    /// Smart breakers to simulate (`breaker-001`, ...).
    #[arg(long, env = "IOT_SIM_BREAKERS", default_value_t = 1)]
    pub breakers: usize,
    /// Smart meters to simulate (`meter-001`, ...).
    #[arg(long, env = "IOT_SIM_METERS", default_value_t = 1)]
    pub meters: usize,
    /// Environmental sensors to simulate (`sensor-001`, ...).
    #[arg(long, env = "IOT_SIM_SENSORS", default_value_t = 1)]
    pub sensors: usize,
    /// Prefix of every device id, e.g. `site1-` for `site1-breaker-001`.
    #[arg(long, env = "IOT_SIM_DEVICE_PREFIX", default_value = "")]
    pub device_prefix: String,
    /// Time-lapse factor: 10 makes every pause ten times shorter.
    #[arg(long, env = "IOT_SIM_SPEED", default_value_t = 1.0)]
    pub speed: f64,
    /// Seed of the random values (reproducible runs); random when omitted.
    #[arg(long, env = "IOT_SIM_SEED")]
    pub seed: Option<u64>,
    /// Stop after this many seconds (default: run until SIGTERM).
    #[arg(long, env = "IOT_SIM_DURATION_SECONDS")]
    pub duration_seconds: Option<f64>,
    #[command(flatten)]
    pub load: load::LoadArgs,
    /// Admin endpoint (`/livez`, `/readyz`, `/metrics`).
    #[arg(long, env = "IOT_ADMIN_ADDR", default_value = "0.0.0.0:9103")]
    pub admin_addr: SocketAddr,
}

/// The device ids and kinds of a run: `{prefix}{stem}-{n:03}`.
pub fn fleet(prefix: &str, counts: &[(DeviceKind, usize)]) -> Vec<(String, DeviceKind)> {
    counts
        .iter()
        .flat_map(|&(kind, n)| {
            (1..=n).map(move |i| (format!("{prefix}{}-{i:03}", kind.id_stem()), kind))
        })
        .collect()
}

/// `{root}/{device_id}/{kind}`.
pub fn device_topic(root: &str, device_id: &str, kind: Kind) -> String {
    format!("{root}/{device_id}/{kind}")
}

/// MQTT client id of a simulated device (stable, so its persistent session is reused).
pub fn client_id(root: &str, device_id: &str) -> String {
    format!("sim:{root}:{device_id}")
}

/// Runs the simulator until `life.stop` (or the duration, or the end of a load run).
pub async fn run(args: SimulatorArgs, life: Lifecycle) -> anyhow::Result<()> {
    cli::check_topic_root(&args.mqtt.mqtt_topic_root)?;
    anyhow::ensure!(args.speed > 0.0, "--speed must be positive");
    let (host, port, security) = args.mqtt.connection()?;
    let target = Target {
        host,
        port,
        security,
    };
    let metrics = SimulatorMetrics::new();
    let readiness = Readiness::default();
    let started = runtime::start(
        args.admin_addr,
        readiness.clone(),
        Default::default(),
        metrics.registry.clone(),
    )
    .await?;
    // The run ends at SIGTERM or after the duration.
    let end = CancellationToken::new();
    let ending = end.clone();
    let stop = life.stop.clone();
    let duration = args.duration_seconds.map(Duration::from_secs_f64);
    tokio::spawn(async move {
        match duration {
            Some(d) => {
                tokio::select! {
                    () = stop.cancelled() => {}
                    () = tokio::time::sleep(d) => {}
                }
            }
            None => stop.cancelled().await,
        }
        ending.cancel();
    });

    let result = if args.load.load {
        load::run(&args, &target, &metrics, &readiness, &end).await
    } else {
        realistic(&args, &target, &metrics, &readiness, &end).await
    };
    drop(started);
    result
}

async fn realistic(
    args: &SimulatorArgs,
    target: &Target,
    metrics: &SimulatorMetrics,
    readiness: &Readiness,
    end: &CancellationToken,
) -> anyhow::Result<()> {
    let devices = fleet(
        &args.device_prefix,
        &[
            (DeviceKind::SmartBreaker, args.breakers),
            (DeviceKind::SmartMeter, args.meters),
            (DeviceKind::EnvironmentalSensor, args.sensors),
        ],
    );
    anyhow::ensure!(!devices.is_empty(), "no devices to simulate");
    tracing::info!(devices = devices.len(), root = %args.mqtt.mqtt_topic_root, "simulator starting");
    let mut seeds = args.seed.map_or_else(Rng::new, Rng::with_seed);
    let mut tasks = Vec::new();
    for (id, kind) in devices {
        let rng = Rng::with_seed(seeds.u64(..));
        tasks.push(tokio::spawn(device_loop(
            id,
            kind,
            rng,
            args.mqtt.mqtt_topic_root.clone(),
            target.clone(),
            args.speed,
            metrics.clone(),
            end.clone(),
        )));
    }
    let total = tasks.len() as i64;
    let watch_ready = {
        let metrics = metrics.clone();
        let readiness = readiness.clone();
        let end = end.clone();
        tokio::spawn(async move {
            while !end.is_cancelled() {
                readiness.set(metrics.connected.get() == total);
                tokio::select! {
                    () = end.cancelled() => {}
                    () = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
            readiness.set(false);
        })
    };
    for t in tasks {
        t.await??;
    }
    watch_ready.abort();
    tracing::info!("simulator stopped");
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn device_loop(
    id: String,
    kind: DeviceKind,
    mut rng: Rng,
    root: String,
    target: Target,
    speed: f64,
    metrics: SimulatorMetrics,
    end: CancellationToken,
) -> anyhow::Result<()> {
    let mut device = Device::new(id.clone(), kind, clock::now(), &mut rng);
    let status_topic = device_topic(&root, &id, Kind::Status);
    let will = LastWill::new(
        &status_topic,
        serde_json::to_vec(&device.last_will())?,
        QoS::AtLeastOnce,
        true,
    );
    let mut conn = DeviceConn::open(
        &target,
        client_id(&root, &id),
        Some(will),
        kind.type_id(),
        metrics.clone(),
    );
    let type_id = kind.type_id();
    let send = async |conn: &mut DeviceConn, k: Kind, msg: serde_json::Value, retain: bool| {
        metrics
            .published
            .with_label_values(&[type_id, k.as_str()])
            .inc();
        conn.publish(
            device_topic(&root, &id, k),
            serde_json::to_vec(&msg)?,
            retain,
        )
        .await
    };
    send(
        &mut conn,
        Kind::Status,
        device.status(clock::now(), true),
        true,
    )
    .await?;
    let scaled = |d: Duration| d.div_f64(speed);
    'run: while !end.is_cancelled() {
        let step = device.next_step(&mut rng);
        for i in 0..step.telemetry {
            if i > 0 {
                tokio::select! {
                    () = end.cancelled() => break 'run,
                    () = tokio::time::sleep(scaled(step.gap)) => {}
                }
            }
            let msg = device.telemetry(&mut rng, clock::now());
            send(&mut conn, Kind::Raw, msg, false).await?;
        }
        if step.then_trends_and_status {
            let now = clock::now();
            let trends = device.trends(now);
            send(&mut conn, Kind::Trends, trends, false).await?;
            send(&mut conn, Kind::Status, device.status(now, true), true).await?;
        }
        tokio::select! {
            () = end.cancelled() => break,
            () = tokio::time::sleep(scaled(step.pause)) => {}
        }
    }
    // A clean stop: say so (retained), then disconnect without the last will.
    send(
        &mut conn,
        Kind::Status,
        device.status(clock::now(), false),
        true,
    )
    .await?;
    conn.close(Duration::from_secs(10)).await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_and_topics() {
        let f = fleet(
            "s1-",
            &[
                (DeviceKind::SmartBreaker, 2),
                (DeviceKind::SmartMeter, 0),
                (DeviceKind::EnvironmentalSensor, 1),
            ],
        );
        let ids: Vec<&str> = f.iter().map(|(id, _)| id.as_str()).collect();
        assert_eq!(ids, ["s1-breaker-001", "s1-breaker-002", "s1-sensor-001"]);
        assert_eq!(
            device_topic("iot", "breaker-001", Kind::Raw),
            "iot/breaker-001/raw"
        );
        assert_eq!(client_id("iot", "breaker-001"), "sim:iot:breaker-001");
        assert_eq!(
            fleet("", &[(DeviceKind::SmartBreaker, 1)])[0].0,
            "breaker-001"
        );
    }
}
