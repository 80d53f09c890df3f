//! How many enrichment replicas a DeviceType gets.
//!
//! Fixed: what the spec says. Autoscaling: one replica per `lagPerReplica` messages of consumer
//! lag, rounded up, clamped to `[minReplicas, maxReplicas]` and never above the partition count of
//! the raw topic (a consumer group cannot use more consumers than partitions). Scaling up is
//! immediate; scaling down waits until the lower count has been wanted for the whole cool-down,
//! so a lag that drains and refills does not make the Deployment flap. A lag that cannot be read
//! (a Kafka incident) holds the current count: it is never taken for "no lag", which would scale
//! down exactly when the backlog grows.

use std::time::{Duration, Instant};

use crate::crd::Scaling;

/// The enrichment group's lag as one reconcile observed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LagReading {
    /// Not read: the DeviceType has a fixed replica count.
    NotRead,
    /// Total lag of the group on the raw topic.
    Read(i64),
    /// Could not be read: why.
    Unreadable(String),
}

impl LagReading {
    /// The lag, when it was read.
    pub fn value(&self) -> Option<i64> {
        match self {
            LagReading::Read(lag) => Some(*lag),
            LagReading::NotRead | LagReading::Unreadable(_) => None,
        }
    }
}

/// Replicas wanted for a known `lag`, before the cool-down.
pub fn replicas_for_lag(scaling: Scaling, lag: i64, partitions: i32) -> i32 {
    let partitions = partitions.max(1);
    match scaling {
        Scaling::Fixed { replicas } => replicas.min(partitions),
        Scaling::Autoscale {
            min,
            max,
            lag_per_replica,
        } => {
            let lag = lag.max(0);
            let per = lag_per_replica.max(1);
            let wanted = lag / per + i64::from(lag % per != 0);
            let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
            wanted.clamp(min, max.max(min)).min(partitions)
        }
    }
}

/// The replica count to apply given the `current` count of the Deployment (`None`: it does not
/// exist yet), and the scale-down window to keep for the next reconcile.
///
/// Fixed: the spec's count. Autoscaled with a lag reading: [`replicas_for_lag`], lowered only
/// after the cool-down ([`DownscaleWindow`]). Autoscaled without one: the current count, kept
/// within the spec's bounds (the minimum when there is no Deployment yet), and the cool-down
/// starts over, so that scaling down needs a whole cool-down of readable, lower lag.
pub fn decide_replicas(
    scaling: Scaling,
    lag: &LagReading,
    current: Option<i32>,
    partitions: i32,
    mut window: DownscaleWindow,
    now: Instant,
    cooldown: Duration,
) -> (i32, DownscaleWindow) {
    let Scaling::Autoscale { min, max, .. } = scaling else {
        return (
            replicas_for_lag(scaling, 0, partitions),
            DownscaleWindow::default(),
        );
    };
    match (lag.value(), current) {
        (Some(lag), Some(current)) => {
            let wanted = replicas_for_lag(scaling, lag, partitions);
            (window.decide(current, wanted, now, cooldown), window)
        }
        (Some(lag), None) => (
            replicas_for_lag(scaling, lag, partitions),
            DownscaleWindow::default(),
        ),
        (None, current) => {
            let held = current
                .unwrap_or(min)
                .clamp(min, max.max(min))
                .min(partitions.max(1));
            (held, DownscaleWindow::default())
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
        assert_eq!(replicas_for_lag(Scaling::Fixed { replicas: 2 }, 0, 3), 2);
        assert_eq!(replicas_for_lag(Scaling::Fixed { replicas: 8 }, 0, 3), 3);
        assert_eq!(replicas_for_lag(Scaling::Fixed { replicas: 0 }, 0, 3), 0);
    }

    #[test]
    fn autoscale_is_ceil_of_lag_over_lag_per_replica_clamped() {
        assert_eq!(replicas_for_lag(AUTO, 0, 10), 1);
        assert_eq!(replicas_for_lag(AUTO, 1, 10), 1);
        assert_eq!(replicas_for_lag(AUTO, 100, 10), 1);
        assert_eq!(replicas_for_lag(AUTO, 101, 10), 2);
        assert_eq!(replicas_for_lag(AUTO, 350, 10), 4);
        assert_eq!(replicas_for_lag(AUTO, 100_000, 10), 5);
        assert_eq!(replicas_for_lag(AUTO, i64::MAX, 10), 5);
    }

    #[test]
    fn autoscale_never_exceeds_partitions() {
        assert_eq!(replicas_for_lag(AUTO, 100_000, 3), 3);
    }

    fn decide(
        lag: LagReading,
        current: Option<i32>,
        window: DownscaleWindow,
    ) -> (i32, DownscaleWindow) {
        decide_replicas(
            AUTO,
            &lag,
            current,
            10,
            window,
            Instant::now(),
            Duration::from_secs(60),
        )
    }

    #[test]
    fn an_unreadable_lag_holds_the_current_count_and_never_scales_down() {
        let unreadable = || LagReading::Unreadable("broker down".into());
        assert_eq!(
            decide(unreadable(), Some(4), DownscaleWindow::default()).0,
            4
        );
        // Even once a cool-down that began before the incident has run out.
        let t0 = Instant::now();
        let mut window = DownscaleWindow::default();
        assert_eq!(window.decide(4, 1, t0, Duration::from_secs(60)), 4);
        let (held, window) = decide(unreadable(), Some(4), window);
        assert_eq!(held, 4);
        assert_eq!(
            window,
            DownscaleWindow::default(),
            "the cool-down starts over"
        );
        // Lag readable again and low: a whole new cool-down before scaling down.
        let later = t0 + Duration::from_secs(600);
        let mut window = window;
        assert_eq!(window.decide(4, 1, later, Duration::from_secs(60)), 4);
    }

    #[test]
    fn an_unreadable_lag_keeps_the_count_within_the_spec() {
        let unreadable = LagReading::Unreadable("timed out".into());
        // No Deployment yet: the minimum.
        assert_eq!(
            decide(unreadable.clone(), None, DownscaleWindow::default()).0,
            1
        );
        // maxReplicas lowered during the incident: the new maximum.
        assert_eq!(
            decide(unreadable.clone(), Some(9), DownscaleWindow::default()).0,
            5
        );
        let auto = Scaling::Autoscale {
            min: 2,
            max: 5,
            lag_per_replica: 10,
        };
        let now = Instant::now();
        let d = |current| {
            decide_replicas(
                auto,
                &unreadable,
                current,
                3,
                DownscaleWindow::default(),
                now,
                Duration::ZERO,
            )
            .0
        };
        assert_eq!(d(Some(1)), 2, "raised to the minimum");
        assert_eq!(d(Some(5)), 3, "capped by the partitions");
    }

    #[test]
    fn a_readable_lag_scales_up_at_once_and_down_after_the_cooldown() {
        assert_eq!(
            decide(LagReading::Read(350), Some(1), DownscaleWindow::default()).0,
            4
        );
        assert_eq!(
            decide(LagReading::Read(350), None, DownscaleWindow::default()).0,
            4
        );
        let (held, window) = decide(LagReading::Read(0), Some(4), DownscaleWindow::default());
        assert_eq!(held, 4);
        assert_ne!(window, DownscaleWindow::default(), "the cool-down runs");
    }

    #[test]
    fn fixed_scaling_ignores_the_lag() {
        for lag in [
            LagReading::NotRead,
            LagReading::Read(1_000_000),
            LagReading::Unreadable("x".into()),
        ] {
            let (replicas, _) = decide_replicas(
                Scaling::Fixed { replicas: 2 },
                &lag,
                Some(1),
                3,
                DownscaleWindow::default(),
                Instant::now(),
                Duration::ZERO,
            );
            assert_eq!(replicas, 2);
        }
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
