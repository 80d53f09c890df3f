//! Status conditions: built fresh on every reconcile from what was observed, merged with the
//! previous list so `lastTransitionTime` only moves when a condition's status changes.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::events::EventType;

/// A condition as a reconcile decides it, without the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cond {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Cond {
    pub fn new(
        type_: &'static str,
        ok: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            ok,
            reason,
            message: message.into(),
        }
    }
}

/// The condition list to store: `new` in order, keeping the previous `lastTransitionTime` of each
/// condition whose status did not change.
pub fn merge(
    previous: &[Condition],
    new: &[Cond],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    new.iter()
        .map(|c| {
            let status = if c.ok { "True" } else { "False" };
            let last_transition_time = previous
                .iter()
                .find(|p| p.type_ == c.type_ && p.status == status)
                .map(|p| p.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: c.type_.to_string(),
                status: status.to_string(),
                reason: c.reason.to_string(),
                message: c.message.clone(),
                observed_generation: generation,
                last_transition_time,
            }
        })
        .collect()
}

/// `Ready` summarising `parts`: true when all are, else the first that is not, with its reason.
pub fn ready(parts: &[Cond]) -> Cond {
    match parts.iter().find(|c| !c.ok) {
        None => Cond::new(
            crate::crd::CONDITION_READY,
            true,
            "Reconciled",
            "all conditions are met",
        ),
        Some(c) => Cond::new(
            crate::crd::CONDITION_READY,
            false,
            c.reason,
            c.message.clone(),
        ),
    }
}

/// Whether the stored conditions say `Ready=True`.
pub fn is_ready(conds: &[Condition]) -> bool {
    conds
        .iter()
        .any(|c| c.type_ == crate::crd::CONDITION_READY && c.status == "True")
}

/// An Event a reconcile decided to publish about its resource.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    pub reason: &'static str,
    pub message: String,
}

impl Note {
    pub fn normal(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            message: message.into(),
        }
    }

    pub fn warning(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            message: message.into(),
        }
    }
}

/// The Event to publish when `Ready` flips between the stored conditions and the decided ones
/// (the last of `decided` is `Ready`); `None` when it did not flip. The same rule for every kind:
/// `Ready` ("all conditions are met"), or `NotReady` with the first failing condition's reason
/// and message.
pub fn ready_event(stored: &[Condition], decided: &[Cond]) -> Option<Note> {
    let now = decided.last().is_some_and(|c| c.ok);
    if now == is_ready(stored) {
        return None;
    }
    Some(match decided.iter().find(|c| !c.ok) {
        None => Note::normal("Ready", "all conditions are met"),
        Some(c) => Note::warning("NotReady", format!("{}: {}", c.reason, c.message)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_on_status_change() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T00:05:00Z".parse().unwrap();
        let first = merge(
            &[],
            &[Cond::new("TopicsReady", true, "Created", "")],
            Some(1),
            t0,
        );
        let same = merge(
            &first,
            &[Cond::new("TopicsReady", true, "UpToDate", "x")],
            Some(2),
            t1,
        );
        assert_eq!(same[0].last_transition_time, Time(t0));
        assert_eq!(same[0].reason, "UpToDate");
        assert_eq!(same[0].observed_generation, Some(2));
        let flipped = merge(
            &same,
            &[Cond::new("TopicsReady", false, "KafkaUnavailable", "")],
            Some(2),
            t1,
        );
        assert_eq!(flipped[0].last_transition_time, Time(t1));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn ready_transitions_are_reported_once() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let failing = [Cond::new("TopicsReady", false, "KafkaUnavailable", "down")];
        let mut decided = failing.to_vec();
        decided.push(ready(&failing));
        let stored = merge(&[], &decided, Some(1), t0);
        assert_eq!(
            ready_event(&[], &decided),
            None,
            "not ready before, not ready now"
        );
        let ok = [Cond::new("TopicsReady", true, "UpToDate", "")];
        let mut decided_ok = ok.to_vec();
        decided_ok.push(ready(&ok));
        assert_eq!(
            ready_event(&stored, &decided_ok),
            Some(Note::normal("Ready", "all conditions are met"))
        );
        let stored_ok = merge(&stored, &decided_ok, Some(1), t0);
        assert_eq!(
            ready_event(&stored_ok, &decided),
            Some(Note::warning("NotReady", "KafkaUnavailable: down")),
            "one reason for every kind: NotReady, naming the failing condition"
        );
    }

    #[test]
    fn ready_takes_the_first_failing_reason() {
        let parts = [
            Cond::new("TopicsReady", true, "UpToDate", ""),
            Cond::new(
                "EnrichmentReady",
                false,
                "Progressing",
                "1 of 2 replicas ready",
            ),
        ];
        let r = ready(&parts);
        assert!(!r.ok);
        assert_eq!(r.reason, "Progressing");
        assert!(ready(&parts[..1]).ok);
    }
}
