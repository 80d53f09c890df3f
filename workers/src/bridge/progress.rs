//! Progress of the bridge, and the stall rule behind `/readyz`, `/livez` and
//! `iot_bridge_stalled`: messages are pending (received, not yet finished) and none has been
//! finished for longer than a bound. A stuck bridge then reports itself, and Kubernetes restarts
//! it; its persistent MQTT session hands the unacknowledged messages to the new process.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Counts received and finished messages and remembers when work last moved.
#[derive(Debug)]
pub struct Progress {
    origin: Instant,
    pending: AtomicU64,
    /// Milliseconds since `origin` of the last finished message, or of the message that ended an
    /// idle period (so a long idle time is not mistaken for a stall).
    last_moved_ms: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            pending: AtomicU64::new(0),
            last_moved_ms: AtomicU64::new(0),
        }
    }
}

impl Progress {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// A message was received.
    pub fn received(&self) {
        if self.pending.fetch_add(1, Ordering::AcqRel) == 0 {
            self.last_moved_ms.store(self.now_ms(), Ordering::Release);
        }
    }

    /// A message was finished (acknowledged, or given up for redelivery).
    pub fn finished(&self) {
        self.last_moved_ms.store(self.now_ms(), Ordering::Release);
        self.pending.fetch_sub(1, Ordering::AcqRel);
    }

    /// Messages received and not yet finished.
    pub fn pending(&self) -> u64 {
        self.pending.load(Ordering::Acquire)
    }

    /// Time since work last moved.
    pub fn since_moved(&self) -> Duration {
        let last = self.last_moved_ms.load(Ordering::Acquire);
        Duration::from_millis(self.now_ms().saturating_sub(last))
    }

    /// Whether the bridge is stalled under the rule of [`stalled`].
    pub fn is_stalled(&self, bound: Duration) -> bool {
        stalled(self.pending(), self.since_moved(), bound)
    }
}

/// The stall rule: work is pending and nothing has been finished for `bound` or longer.
pub fn stalled(pending: u64, since_moved: Duration, bound: Duration) -> bool {
    pending > 0 && since_moved >= bound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_is_not_a_stall_and_pending_without_progress_is() {
        let bound = Duration::from_secs(30);
        assert!(!stalled(0, Duration::from_secs(3600), bound));
        assert!(!stalled(5, Duration::from_secs(29), bound));
        assert!(stalled(5, Duration::from_secs(30), bound));
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_after_an_idle_period_starts_the_clock_afresh() {
        let p = Progress::default();
        let bound = Duration::from_secs(30);
        tokio::time::advance(Duration::from_secs(600)).await;
        p.received();
        assert!(!p.is_stalled(bound), "the first message after idling");
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(
            p.is_stalled(bound),
            "pending for 31 s with nothing finished"
        );
        p.received();
        assert!(p.is_stalled(bound), "receiving more is not progress");
        p.finished();
        assert!(!p.is_stalled(bound));
        assert_eq!(p.pending(), 1);
        p.finished();
        assert_eq!(p.pending(), 0);
        tokio::time::advance(Duration::from_secs(120)).await;
        assert!(!p.is_stalled(bound), "nothing pending");
    }
}
