//! How many enrichment replicas a DeviceType gets.
//!
//! Fixed: what the spec says. Autoscaling: one replica per `lagPerReplica` messages of consumer
//! lag, rounded up, clamped to `[minReplicas, maxReplicas]` and never above the partition count of
//! the raw topic (a consumer group cannot use more consumers than partitions). Scaling up is
//! immediate; scaling down waits until the lower count has been wanted for the whole cool-down,
//! so a lag that drains and refills does not make the Deployment flap.

use std::time::{Duration, Instant};

use crate::crd::Scaling;

/// Replicas wanted right now, before the cool-down.
pub fn replicas_for_lag(scaling: Scaling, lag: Option<i64>, partitions: i32) -> i32 {
    let partitions = partitions.max(1);
    match scaling {
        Scaling::Fixed { replicas } => replicas.min(partitions),
        Scaling::Autoscale {
            min,
            max,
            lag_per_replica,
        } => {
            // Without a lag reading (broker unreachable), hold the minimum rather than guess.
            let lag = lag.unwrap_or(0).max(0);
            let per = lag_per_replica.max(1);
            let wanted = lag / per + i64::from(lag % per != 0);
            let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
            wanted.clamp(min, max.max(min)).min(partitions)
        }
    }
}

/// Remembers, per DeviceType, since when a lower replica count has been wanted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DownscaleWindow {
    lower_since: Option<(i32, Instant)>,
}

impl DownscaleWindow {
    /// The replica count to apply given the `current` count, the count `wanted` now and the
    /// `cooldown`. Scaling up applies at once; scaling down applies once lower counts have been
    /// wanted for `cooldown` (to the highest count wanted during that time).
    pub fn decide(&mut self, current: i32, wanted: i32, now: Instant, cooldown: Duration) -> i32 {
        if wanted >= current {
            self.lower_since = None;
            return wanted;
        }
        let (highest_lower, since) = match self.lower_since {
            Some((n, since)) => (n.max(wanted), since),
            None => (wanted, now),
        };
        if now.duration_since(since) >= cooldown {
            self.lower_since = None;
            highest_lower
        } else {
            self.lower_since = Some((highest_lower, since));
            current
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUTO: Scaling = Scaling::Autoscale {
        min: 1,
        max: 5,
        lag_per_replica: 100,
    };

    #[test]
    fn fixed_replicas_are_capped_by_partitions() {
        assert_eq!(replicas_for_lag(Scaling::Fixed { replicas: 2 }, None, 3), 2);
        assert_eq!(replicas_for_lag(Scaling::Fixed { replicas: 8 }, None, 3), 3);
        assert_eq!(replicas_for_lag(Scaling::Fixed { replicas: 0 }, None, 3), 0);
    }

    #[test]
    fn autoscale_is_ceil_of_lag_over_lag_per_replica_clamped() {
        assert_eq!(replicas_for_lag(AUTO, Some(0), 10), 1);
        assert_eq!(replicas_for_lag(AUTO, Some(1), 10), 1);
        assert_eq!(replicas_for_lag(AUTO, Some(100), 10), 1);
        assert_eq!(replicas_for_lag(AUTO, Some(101), 10), 2);
        assert_eq!(replicas_for_lag(AUTO, Some(350), 10), 4);
        assert_eq!(replicas_for_lag(AUTO, Some(100_000), 10), 5);
        assert_eq!(replicas_for_lag(AUTO, Some(i64::MAX), 10), 5);
    }

    #[test]
    fn autoscale_never_exceeds_partitions() {
        assert_eq!(replicas_for_lag(AUTO, Some(100_000), 3), 3);
    }

    #[test]
    fn unknown_lag_holds_the_minimum() {
        let auto = Scaling::Autoscale {
            min: 2,
            max: 5,
            lag_per_replica: 10,
        };
        assert_eq!(replicas_for_lag(auto, None, 10), 2);
    }

    #[test]
    fn scale_up_is_immediate_scale_down_waits_for_the_cooldown() {
        let cooldown = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut w = DownscaleWindow::default();
        assert_eq!(w.decide(1, 4, t0, cooldown), 4);
        assert_eq!(w.decide(4, 1, t0, cooldown), 4);
        assert_eq!(w.decide(4, 2, t0 + Duration::from_secs(30), cooldown), 4);
        // After the cool-down: the highest count wanted during it.
        assert_eq!(w.decide(4, 1, t0 + Duration::from_secs(61), cooldown), 2);
    }

    #[test]
    fn a_rise_during_the_cooldown_restarts_it() {
        let cooldown = Duration::from_secs(60);
        let t0 = Instant::now();
        let mut w = DownscaleWindow::default();
        assert_eq!(w.decide(4, 1, t0, cooldown), 4);
        assert_eq!(w.decide(4, 4, t0 + Duration::from_secs(50), cooldown), 4);
        assert_eq!(w.decide(4, 1, t0 + Duration::from_secs(70), cooldown), 4);
        assert_eq!(w.decide(4, 1, t0 + Duration::from_secs(131), cooldown), 1);
    }
}
