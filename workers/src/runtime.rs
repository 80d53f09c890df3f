//! Process plumbing shared by the roles: the two-phase shutdown (stop taking work, then, after a
//! grace period, give up on what is still in flight) and the admin endpoint.

use std::net::SocketAddr;
use std::time::Duration;

use iot_process::admin::{self, Liveness, Readiness};
use tokio::sync::watch;

/// A flag that is set once and can be awaited.
#[derive(Clone, Debug)]
pub struct Flag(watch::Receiver<bool>);

/// Sets a [`Flag`].
#[derive(Debug)]
pub struct FlagSetter(watch::Sender<bool>);

/// A new flag, not set.
pub fn flag() -> (FlagSetter, Flag) {
    let (tx, rx) = watch::channel(false);
    (FlagSetter(tx), Flag(rx))
}

impl FlagSetter {
    pub fn set(&self) {
        self.0.send_replace(true);
    }
}

impl Flag {
    /// A flag that is never set.
    pub fn never() -> Self {
        let (tx, rx) = watch::channel(false);
        // Keep the channel open for ever so `wait` pends instead of returning.
        std::mem::forget(tx);
        Flag(rx)
    }

    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once the flag is set (or its setter is gone, which counts as set).
    pub async fn wait(&self) {
        let mut rx = self.0.clone();
        let _ = rx.wait_for(|set| *set).await;
    }
}

/// The two phases of a graceful stop.
#[derive(Clone, Debug)]
pub struct Lifecycle {
    /// Stop taking new messages; finish and acknowledge those in flight.
    pub stop: Flag,
    /// The grace period is over: give up on what is still in flight (it will be redelivered).
    pub abort: Flag,
}

impl Lifecycle {
    /// Driven by SIGTERM / Ctrl-C: `stop` on the signal, `abort` `grace` later.
    pub fn from_signals(grace: Duration) -> Self {
        let (stop_tx, stop) = flag();
        let (abort_tx, abort) = flag();
        tokio::spawn(async move {
            iot_process::telemetry::shutdown_signal().await;
            stop_tx.set();
            tokio::time::sleep(grace).await;
            tracing::warn!(?grace, "grace period over, abandoning in-flight messages");
            abort_tx.set();
            // Keep the senders alive: dropping them would also wake the waiters.
            std::future::pending::<()>().await;
        });
        Self { stop, abort }
    }

    /// Driven by a flag (tests, embedding): `abort` `grace` after `stop`.
    pub fn from_flag(stop: Flag, grace: Duration) -> Self {
        let (abort_tx, abort) = flag();
        let waiting = stop.clone();
        tokio::spawn(async move {
            waiting.wait().await;
            tokio::time::sleep(grace).await;
            abort_tx.set();
            std::future::pending::<()>().await;
        });
        Self { stop, abort }
    }
}

/// Serves `/livez`, `/readyz` and `/metrics` on `addr` until `stop`.
pub async fn start_admin(
    addr: SocketAddr,
    readiness: Readiness,
    liveness: Liveness,
    metrics: prometheus::Registry,
    stop: Flag,
) -> anyhow::Result<()> {
    let router = admin::router_with_liveness(readiness, liveness, metrics);
    admin::serve(addr, router, async move { stop.wait().await })
        .await
        .map_err(|e| anyhow::anyhow!("admin endpoint {addr}: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flags_wake_their_waiters() {
        let (tx, f) = flag();
        assert!(!f.is_set());
        let waiter = tokio::spawn({
            let f = f.clone();
            async move { f.wait().await }
        });
        tx.set();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken")
            .unwrap();
        assert!(f.is_set());
        assert!(!Flag::never().is_set());
    }

    #[tokio::test]
    async fn abort_follows_stop_after_the_grace_period() {
        let (tx, stop) = flag();
        let life = Lifecycle::from_flag(stop, Duration::from_millis(200));
        let stopped_at = tokio::time::Instant::now();
        tx.set();
        life.stop.wait().await;
        assert!(!life.abort.is_set());
        tokio::time::timeout(Duration::from_secs(5), life.abort.wait())
            .await
            .expect("abort within the grace period");
        assert!(stopped_at.elapsed() >= Duration::from_millis(200));
    }
}
