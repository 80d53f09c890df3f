//! Leader election through a `coordination.k8s.io/v1` Lease, so that more than one operator
//! replica can run (for faster fail-over) while only one reconciles.
//!
//! The holder renews the Lease every `renew_every`; a candidate takes it over once it has not been
//! renewed for `lease_duration`. Every write carries the Lease's resourceVersion, so two candidates
//! racing for it cannot both win. A leader that fails to renew before its Lease would expire steps
//! down (the process then exits and is restarted as a candidate).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::watch;

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    pub lease_name: String,
    pub namespace: String,
    /// Unique per process: the pod name in a cluster.
    pub identity: String,
    pub lease_duration: Duration,
    pub renew_every: Duration,
    /// Owner of the Lease (the operator's Deployment), so that uninstalling removes it.
    pub owner: Option<OwnerReference>,
}

impl LeaderElection {
    pub fn new(namespace: &str, identity: &str) -> Self {
        Self {
            lease_name: "iot-operator-leader".into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
            owner: None,
        }
    }
}

/// What one attempt on the Lease decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold it (acquired or renewed).
    Leading,
    /// Someone else holds a live Lease.
    Following { holder: String },
}

/// Whether a Lease held by `holder` and last renewed at `renewed` is free for `me` at `now`.
pub fn may_take(
    holder: Option<&str>,
    renewed: Option<Timestamp>,
    duration: Duration,
    me: &str,
    now: Timestamp,
) -> bool {
    match (holder, renewed) {
        (None, _) | (Some(""), _) => true,
        (Some(h), _) if h == me => true,
        (Some(_), None) => true,
        (Some(_), Some(renewed)) => {
            now.duration_since(renewed)
                > SignedDuration::try_from(duration).unwrap_or(SignedDuration::MAX)
        }
    }
}

fn lease_duration_seconds(le: &LeaderElection) -> i32 {
    i32::try_from(le.lease_duration.as_secs()).unwrap_or(i32::MAX)
}

/// The Lease a candidate creates when there is none: held by it since `now`.
pub fn new_lease(le: &LeaderElection, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(le.lease_name.clone()),
            namespace: Some(le.namespace.clone()),
            owner_references: le.owner.clone().map(|o| vec![o]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(le.identity.clone()),
            lease_duration_seconds: Some(lease_duration_seconds(le)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        }),
    }
}

/// Adds `owner` to the owner references of `meta` unless it is there already (a Lease created
/// before the operator had an owner gets it at its next renewal).
fn add_owner(meta: &mut ObjectMeta, owner: Option<&OwnerReference>) {
    let Some(owner) = owner else { return };
    let refs = meta.owner_references.get_or_insert_with(Vec::new);
    if !refs.iter().any(|r| r.uid == owner.uid) {
        refs.push(owner.clone());
    }
}

/// One acquire-or-renew step.
pub async fn try_acquire(api: &Api<Lease>, le: &LeaderElection) -> Result<Attempt, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(&le.lease_name).await? {
        None => {
            match api
                .create(&PostParams::default(), &new_lease(le, now))
                .await
            {
                Ok(_) => Ok(Attempt::Leading),
                // Another candidate created it first.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following {
                    holder: "(another candidate)".into(),
                }),
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            let holder = spec.holder_identity.clone();
            let renewed = spec.renew_time.as_ref().map(|t| t.0);
            let duration = spec
                .lease_duration_seconds
                .map_or(le.lease_duration, |s| Duration::from_secs(s.max(0) as u64));
            if !may_take(holder.as_deref(), renewed, duration, &le.identity, now) {
                return Ok(Attempt::Following {
                    holder: holder.unwrap_or_default(),
                });
            }
            if holder.as_deref() != Some(le.identity.as_str()) {
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
                spec.holder_identity = Some(le.identity.clone());
            }
            spec.renew_time = Some(MicroTime(now));
            spec.lease_duration_seconds = Some(lease_duration_seconds(le));
            add_owner(&mut lease.metadata, le.owner.as_ref());
            // Replace carries metadata.resourceVersion: a concurrent writer makes this fail (409).
            match api
                .replace(&le.lease_name, &PostParams::default(), &lease)
                .await
            {
                Ok(_) => Ok(Attempt::Leading),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Following {
                    holder: "(another candidate)".into(),
                }),
                Err(e) => Err(e),
            }
        }
    }
}

/// Waits until this candidate leads, then keeps renewing in the background. The returned
/// receiver turns `true` when leadership is lost (renewal impossible before the Lease expires).
pub async fn acquire(client: Client, le: LeaderElection) -> watch::Receiver<bool> {
    let api: Api<Lease> = Api::namespaced(client, &le.namespace);
    loop {
        match try_acquire(&api, &le).await {
            Ok(Attempt::Leading) => break,
            Ok(Attempt::Following { holder }) => {
                tracing::info!(holder, "another operator replica leads; waiting");
            }
            Err(e) => tracing::warn!(error = %e, "leader election: lease not readable"),
        }
        tokio::time::sleep(le.renew_every).await;
    }
    tracing::info!(identity = le.identity, lease = le.lease_name, "leading");
    let (lost_tx, lost_rx) = watch::channel(false);
    tokio::spawn(async move {
        let mut last_renewal = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(le.renew_every).await;
            match try_acquire(&api, &le).await {
                Ok(Attempt::Leading) => last_renewal = tokio::time::Instant::now(),
                Ok(Attempt::Following { holder }) => {
                    tracing::error!(holder, "leadership lost to another replica");
                    let _ = lost_tx.send(true);
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lease renewal failed");
                    if last_renewal.elapsed() >= le.lease_duration {
                        tracing::error!("lease expired without renewal; stepping down");
                        let _ = lost_tx.send(true);
                        return;
                    }
                }
            }
        }
    });
    lost_rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_expired_or_own_leases_may_be_taken() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let recent: Timestamp = "2026-01-01T00:00:55Z".parse().unwrap();
        let old: Timestamp = "2026-01-01T00:00:30Z".parse().unwrap();
        let d = Duration::from_secs(15);
        assert!(may_take(None, None, d, "me", now));
        assert!(may_take(Some("me"), Some(recent), d, "me", now));
        assert!(!may_take(Some("other"), Some(recent), d, "me", now));
        assert!(may_take(Some("other"), Some(old), d, "me", now));
        assert!(may_take(Some("other"), None, d, "me", now));
    }

    fn operator_deployment(uid: &str) -> OwnerReference {
        OwnerReference {
            api_version: "apps/v1".into(),
            kind: "Deployment".into(),
            name: "iot-cloud-operator".into(),
            uid: uid.into(),
            controller: Some(false),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn a_new_lease_is_held_by_the_candidate_and_owned_by_the_operator_deployment() {
        let now: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut le = LeaderElection::new("iot", "pod-a");
        let lease = new_lease(&le, now);
        assert_eq!(lease.metadata.owner_references, None);
        let spec = lease.spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-a"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.renew_time, Some(MicroTime(now)));

        le.owner = Some(operator_deployment("uid-1"));
        let lease = new_lease(&le, now);
        assert_eq!(lease.metadata.name.as_deref(), Some("iot-operator-leader"));
        assert_eq!(
            lease.metadata.owner_references,
            Some(vec![operator_deployment("uid-1")])
        );
    }

    #[test]
    fn an_existing_lease_gains_the_owner_once() {
        let owner = operator_deployment("uid-1");
        let mut meta = ObjectMeta::default();
        add_owner(&mut meta, None);
        assert_eq!(meta.owner_references, None);
        add_owner(&mut meta, Some(&owner));
        add_owner(&mut meta, Some(&owner));
        assert_eq!(meta.owner_references, Some(vec![owner.clone()]));
        // Another owner someone added is kept.
        let mut meta = ObjectMeta {
            owner_references: Some(vec![operator_deployment("uid-0")]),
            ..ObjectMeta::default()
        };
        add_owner(&mut meta, Some(&owner));
        assert_eq!(
            meta.owner_references,
            Some(vec![operator_deployment("uid-0"), owner])
        );
    }
}
