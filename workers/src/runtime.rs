//! How every role starts and stops: the admin endpoint ([`start`]) and the two-phase shutdown
//! ([`Lifecycle`]: stop taking work, then, after a grace period, give up on what is still in
//! flight).

use std::net::SocketAddr;
use std::time::Duration;

use iot_process::admin::{self, Liveness, Readiness};
use tokio_util::sync::{CancellationToken, DropGuard};

/// The two phases of a graceful stop.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// Stop taking new messages; finish and acknowledge those in flight.
    pub stop: CancellationToken,
    /// The grace period is over: give up on what is still in flight (it will be redelivered).
    pub abort: CancellationToken,
}

impl Lifecycle {
    /// Driven by SIGTERM / Ctrl-C: `stop` on the signal, `abort` `grace` later.
    pub fn from_signals(grace: Duration) -> Self {
        let stop = CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            iot_process::telemetry::shutdown_signal().await;
            on_signal.cancel();
        });
        Self::from_token(stop, grace)
    }

    /// Driven by a token (tests, embedding): `abort` `grace` after `stop`.
    pub fn from_token(stop: CancellationToken, grace: Duration) -> Self {
        let abort = CancellationToken::new();
        let (stopping, aborting) = (stop.clone(), abort.clone());
        tokio::spawn(async move {
            stopping.cancelled().await;
            tokio::time::sleep(grace).await;
            if !aborting.is_cancelled() {
                tracing::warn!(?grace, "grace period over, abandoning in-flight messages");
            }
            aborting.cancel();
        });
        Self { stop, abort }
    }
}

/// What every role starts with: the admin endpoint (`/livez`, `/readyz`, `/metrics`) on `addr`,
/// serving until the role's run ends, however it ends (a returned error included).
pub struct Started {
    /// Cancelled when the [`Started`] is dropped: background tasks of the role end with it.
    pub done: CancellationToken,
    _cancel_on_drop: DropGuard,
}

/// Starts a role: binds its admin endpoint.
pub async fn start(
    addr: SocketAddr,
    readiness: Readiness,
    liveness: Liveness,
    metrics: prometheus::Registry,
) -> anyhow::Result<Started> {
    let done = CancellationToken::new();
    let router = admin::router_with_liveness(readiness, liveness, metrics);
    admin::serve(addr, router, done.clone().cancelled_owned())
        .await
        .map_err(|e| anyhow::anyhow!("admin endpoint {addr}: {e}"))?;
    Ok(Started {
        _cancel_on_drop: done.clone().drop_guard(),
        done,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn abort_follows_stop_after_the_grace_period() {
        let stop = CancellationToken::new();
        let life = Lifecycle::from_token(stop.clone(), Duration::from_millis(200));
        let stopped_at = tokio::time::Instant::now();
        stop.cancel();
        life.stop.cancelled().await;
        assert!(!life.abort.is_cancelled());
        tokio::time::timeout(Duration::from_secs(5), life.abort.cancelled())
            .await
            .expect("abort within the grace period");
        assert!(stopped_at.elapsed() >= Duration::from_millis(200));
    }
}
