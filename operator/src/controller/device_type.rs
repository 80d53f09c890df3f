//! Reconciling one DeviceType, in four steps:
//!
//! 1. **observe** ([`observe`]): what the broker has for its topics, the enrichment group's lag
//!    (autoscaled types only), the replicas of its Deployment, the Applications registered for it;
//! 2. **decide** ([`decide`], [`decide_invalid`], [`decide_cleanup`]): pure functions from the
//!    resource and the observations to the topic changes, the replicas, the Deployment, the
//!    conditions, the Events and the status fields;
//! 3. **apply** ([`apply`]): topics, Deployment, Events;
//! 4. **status**: one writer for both kinds ([`super::status::write`]).
//!
//! Every property is checked on every pass, whatever triggered it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};
use rdkafka::error::KafkaError;
use serde_json::json;

use super::conditions::{Cond, Note};
use super::config::OperatorConfig;
use super::deployment::{desired_enrichment_deployment, enrichment_deployment_name};
use super::error::{Error, Result};
use super::scaling::{DownscaleWindow, LagReading, decide_replicas};
use super::status;
use super::{Context, FIELD_MANAGER, KIND_DEVICE_TYPE};
use crate::crd::{
    DeletionPolicy, DeviceType, ReplicaCounts, Scaling, TopicNames, parse_retention_ms, validate,
};
use crate::kafka::topics::{DesiredTopic, ObservedTopic, TopicOutcome, TopicPlan, plan_topic};

/// Finalizer that guards the Kafka topics of a DeviceType with `deletionPolicy: Delete`.
pub const TOPIC_FINALIZER: &str = "iotcloud.dev/topics";
/// Annotation that lets a DeviceType with `deletionPolicy: Delete` go without deleting its topics
/// (the escape hatch when the broker is gone for good).
pub const SKIP_TOPIC_CLEANUP_ANNOTATION: &str = "iotcloud.dev/skip-topic-cleanup";

pub const TOPICS_READY: &str = "TopicsReady";
pub const ENRICHMENT_READY: &str = "EnrichmentReady";
pub const SPEC_VALID: &str = "SpecValid";
/// Whether the enrichment group's lag could be read (autoscaled DeviceTypes only).
pub const LAG_READABLE: &str = "LagReadable";

/// The desired raw and enriched topics of `dt`.
pub fn desired_topics(dt: &DeviceType, prefix: &str) -> Vec<DesiredTopic> {
    let names = TopicNames::for_device_type(prefix, &dt.spec.device_type);
    let mut config = dt.spec.topics.config.clone();
    if let Some(ms) = dt
        .spec
        .topics
        .retention
        .as_deref()
        .and_then(|r| parse_retention_ms(r).ok())
    {
        config.insert("retention.ms".into(), ms.to_string());
    }
    [names.raw, names.enriched]
        .into_iter()
        .map(|name| DesiredTopic {
            name,
            partitions: dt.spec.topics.partitions,
            replication_factor: dt.spec.topics.replication_factor,
            config: config.clone(),
        })
        .collect()
}

/// Replicas of the existing enrichment Deployment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DeploymentReplicas {
    /// `spec.replicas`.
    pub desired: Option<i32>,
    /// `status.readyReplicas`.
    pub ready: i32,
}

/// What one reconcile reads from the world.
#[derive(Clone, Debug)]
pub struct Observed {
    /// Each desired topic with what the broker has (`None`: missing), or why Kafka could not be
    /// read.
    pub topics: Result<Vec<(DesiredTopic, Option<ObservedTopic>)>, KafkaError>,
    /// Total lag of the enrichment group on the raw topic; read for autoscaled DeviceTypes only.
    pub lag: LagReading,
    /// The enrichment Deployment, when it exists.
    pub deployment: Option<DeploymentReplicas>,
    /// Active Applications registered for the device type.
    pub applications: i32,
    /// The scale-down window kept between reconciles, and the time it is judged at.
    pub downscale: DownscaleWindow,
    pub now: Instant,
}

/// What a reconcile of a valid DeviceType does.
#[derive(Clone, Debug)]
pub struct Decision {
    /// Topic changes to carry out, in order; up-to-date topics and refused shrinks are not here.
    pub topic_changes: Vec<(DesiredTopic, TopicPlan)>,
    /// Events about the topic changes, published once they are carried out.
    pub topic_events: Vec<Note>,
    /// The enrichment Deployment to apply.
    pub deployment: Deployment,
    /// Events published after the Deployment is applied (scaling).
    pub events: Vec<Note>,
    /// The scale-down window to keep for the next reconcile.
    pub downscale: DownscaleWindow,
    /// `SpecValid`, `TopicsReady`, `EnrichmentReady`, and `LagReadable` when autoscaled.
    pub conditions: Vec<Cond>,
    pub topics: TopicNames,
    /// Partitions the raw topic has (more than the spec asks for after a refused shrink).
    pub partitions: i32,
    pub replicas: ReplicaCounts,
    /// The lag read, for the status (`None`: not read, or unreadable).
    pub lag: Option<i64>,
    pub applications: i32,
    /// When to look again.
    pub requeue: Duration,
}

impl Decision {
    /// The conditions when carrying out the topic changes failed with `e`.
    pub fn conditions_after_topic_failure(&self, e: &KafkaError) -> Vec<Cond> {
        self.conditions
            .iter()
            .map(|c| {
                if c.type_ == TOPICS_READY {
                    Cond::new(TOPICS_READY, false, "KafkaUnavailable", e.to_string())
                } else {
                    c.clone()
                }
            })
            .collect()
    }
}

/// Why a spec cannot be reconciled: its condition and Event; `None` when it is valid. The API
/// server refuses most invalid specs; this catches objects stored before a rule existed.
pub fn decide_invalid(dt: &DeviceType) -> Option<(Cond, Note)> {
    let problems = validate::device_type(&dt.spec);
    if problems.is_empty() {
        return None;
    }
    let message = validate::describe(&problems);
    Some((
        Cond::new(SPEC_VALID, false, "InvalidSpec", message.clone()),
        Note::warning("InvalidSpec", message),
    ))
}

/// The Event that announces a topic change once it is carried out.
fn topic_note(desired: &DesiredTopic, outcome: &TopicOutcome) -> Vec<Note> {
    let name = &desired.name;
    match outcome {
        TopicOutcome::Created => vec![Note::normal(
            "TopicCreated",
            format!(
                "created topic {name} with {} partitions",
                desired.partitions
            ),
        )],
        TopicOutcome::Updated {
            grew_partitions,
            corrected_config,
        } => {
            let mut notes = Vec::new();
            if let Some((from, to)) = grew_partitions {
                notes.push(Note::normal(
                    "PartitionsIncreased",
                    format!("topic {name}: partitions {from} -> {to}"),
                ));
            }
            if *corrected_config {
                notes.push(Note::normal(
                    "ConfigDriftCorrected",
                    format!("topic {name}: configuration put back to the spec"),
                ));
            }
            notes
        }
        TopicOutcome::UpToDate | TopicOutcome::ShrinkRefused { .. } => Vec::new(),
    }
}

/// Decides everything a reconcile of the valid `dt` does, from what `observed` found.
pub fn decide(dt: &DeviceType, observed: &Observed, config: &OperatorConfig) -> Decision {
    let names = TopicNames::for_device_type(&config.topic_prefix, &dt.spec.device_type);

    // Topics: create, grow or correct; never shrink.
    let mut topic_changes = Vec::new();
    let mut topic_events = Vec::new();
    let mut partitions = dt.spec.topics.partitions;
    let mut topics_cond = Cond::new(TOPICS_READY, true, "UpToDate", "topics match the spec");
    match &observed.topics {
        Err(e) => {
            topics_cond = Cond::new(TOPICS_READY, false, "KafkaUnavailable", e.to_string());
        }
        Ok(topics) => {
            for (desired, seen) in topics {
                let plan = plan_topic(desired, seen.as_ref());
                match plan {
                    TopicPlan::UpToDate => {}
                    TopicPlan::RefuseShrink {
                        existing,
                        requested,
                    } => {
                        partitions = partitions.max(existing);
                        if topics_cond.ok {
                            topics_cond = Cond::new(
                                TOPICS_READY,
                                false,
                                "PartitionShrinkRefused",
                                format!(
                                    "topic {} has {existing} partitions and \
                                     spec.topics.partitions asks for {requested}: Kafka cannot \
                                     remove partitions; set it to {existing} or more",
                                    desired.name
                                ),
                            );
                        }
                    }
                    TopicPlan::Create | TopicPlan::Update { .. } => {
                        topic_events
                            .extend(topic_note(desired, &TopicOutcome::of(&plan, seen.as_ref())));
                        topic_changes.push((desired.clone(), plan));
                    }
                }
            }
        }
    }

    // Replicas: what the scaling policy asks for, held up during an autoscaler's cool-down, and
    // held as they are while the lag cannot be read.
    let scaling = dt.spec.enrichment.scaling();
    let current = observed.deployment.and_then(|d| d.desired);
    let (replicas, downscale) = decide_replicas(
        scaling,
        &observed.lag,
        current,
        partitions,
        observed.downscale,
        observed.now,
        config.scale_down_cooldown,
    );
    let mut events = Vec::new();
    if let Some(current) = current
        && current != replicas
    {
        events.push(Note::normal(
            "Scaled",
            format!(
                "enrichment replicas {current} -> {replicas} (lag {})",
                observed
                    .lag
                    .value()
                    .map_or("unknown".to_string(), |l| l.to_string())
            ),
        ));
    }
    let lag_cond = lag_condition(dt, &observed.lag, config, replicas);
    if let Some(note) = lag_cond.as_ref().and_then(|c| lag_note(dt, c)) {
        events.push(note);
    }

    let ready = observed.deployment.map_or(0, |d| d.ready);
    let enrichment_cond = Cond::new(
        ENRICHMENT_READY,
        ready >= replicas,
        if ready >= replicas {
            "Available"
        } else {
            "Progressing"
        },
        format!("{ready}/{replicas} replicas ready"),
    );
    let settled = topics_cond.ok && enrichment_cond.ok;
    let mut conditions = vec![
        Cond::new(SPEC_VALID, true, "Valid", "the spec is valid"),
        topics_cond,
        enrichment_cond,
    ];
    conditions.extend(lag_cond);
    let requeue = match scaling {
        Scaling::Autoscale { .. } => config.autoscale_interval,
        Scaling::Fixed { .. } if !settled => Duration::from_secs(5),
        Scaling::Fixed { .. } => config.resync,
    };
    Decision {
        topic_changes,
        topic_events,
        deployment: desired_enrichment_deployment(dt, config, replicas),
        events,
        downscale,
        conditions,
        topics: names,
        partitions,
        replicas: ReplicaCounts {
            desired: replicas,
            ready,
        },
        lag: observed.lag.value(),
        applications: observed.applications,
        requeue,
    }
}

/// `LagReadable` of an autoscaled `dt` (`None` for fixed replicas, whose lag is not read), with
/// the `replicas` held while it is false.
fn lag_condition(
    dt: &DeviceType,
    lag: &LagReading,
    config: &OperatorConfig,
    replicas: i32,
) -> Option<Cond> {
    if let Scaling::Fixed { .. } = dt.spec.enrichment.scaling() {
        return None;
    }
    let group = config.enrichment_group(&dt.spec.device_type);
    match lag {
        LagReading::NotRead => None,
        LagReading::Read(_) => Some(Cond::new(
            LAG_READABLE,
            true,
            "LagRead",
            format!("the lag of consumer group {group} is read"),
        )),
        LagReading::Unreadable(why) => Some(Cond::new(
            LAG_READABLE,
            false,
            "LagUnreadable",
            format!(
                "cannot read the lag of consumer group {group}: {why}; holding {replicas} \
                 enrichment replicas until it can be read"
            ),
        )),
    }
}

/// The Event when `LagReadable` flips from what the stored status says: a warning when the lag
/// becomes unreadable (also on the first reading), a normal one when it is readable again.
fn lag_note(dt: &DeviceType, cond: &Cond) -> Option<Note> {
    let stored = dt
        .status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == LAG_READABLE))
        .map(|c| c.status == "True");
    match (stored, cond.ok) {
        (Some(false), true) => Some(Note::normal(
            "LagReadable",
            "the consumer lag is readable again; autoscaling resumes",
        )),
        (Some(true) | None, false) => Some(Note::warning("LagUnreadable", cond.message.clone())),
        _ => None,
    }
}

/// Reads the world of the valid `dt`.
pub async fn observe(
    dt: &DeviceType,
    ctx: &Context,
    deployments: &Api<Deployment>,
) -> Result<Observed> {
    let prefix = &ctx.config.topic_prefix;
    // The shared topics first: the enrichment writes to them too.
    let topics = match ctx.ensure_shared_topics().await {
        Err(Error::Kafka(e)) => Err(e),
        Err(other) => return Err(other),
        Ok(()) => {
            let mut seen = Vec::new();
            let mut failed = None;
            for desired in desired_topics(dt, prefix) {
                match ctx.topics.observe(&desired.name).await {
                    Ok(observed) => seen.push((desired, observed)),
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            failed.map_or(Ok(seen), Err)
        }
    };
    let id = dt.spec.device_type.as_str();
    let raw = TopicNames::for_device_type(prefix, id).raw;
    let raw_missing = topics
        .as_ref()
        .is_ok_and(|seen| seen.iter().any(|(d, t)| d.name == raw && t.is_none()));
    let lag = match (dt.spec.enrichment.scaling(), &topics) {
        (Scaling::Fixed { .. }, _) => LagReading::NotRead,
        (Scaling::Autoscale { .. }, Err(e)) => {
            LagReading::Unreadable(format!("Kafka is unavailable: {e}"))
        }
        // The raw topic is created by this reconcile: nothing in it yet.
        (Scaling::Autoscale { .. }, Ok(_)) if raw_missing => LagReading::Read(0),
        (Scaling::Autoscale { .. }, Ok(_)) => {
            let result = ctx.lag.lag(&ctx.config.enrichment_group(id), &raw).await;
            ctx.metrics.lag_read(result.is_ok());
            match result {
                Ok(lag) => LagReading::Read(lag),
                Err(e) => {
                    tracing::warn!(device_type = id, error = %e, "reading consumer lag failed");
                    LagReading::Unreadable(e.to_string())
                }
            }
        }
    };
    let deployment = deployments
        .get_opt(&enrichment_deployment_name(&dt.name_any()))
        .await
        .map_err(|source| Error::Observe {
            what: "the enrichment Deployment",
            source,
        })?
        .map(|d| DeploymentReplicas {
            desired: d.spec.as_ref().and_then(|s| s.replicas),
            ready: d
                .status
                .as_ref()
                .and_then(|s| s.ready_replicas)
                .unwrap_or(0),
        });
    Ok(Observed {
        topics,
        lag,
        deployment,
        applications: ctx.active_applications_for(id),
        downscale: ctx.downscale_window(&dt.uid().unwrap_or_default()),
        now: Instant::now(),
    })
}

/// Carries out `decision`: topic changes (their Events once done), the Deployment, the other
/// Events. A topic failure does not stop the Deployment from being applied; it is returned.
pub async fn apply(
    dt: &DeviceType,
    decision: &Decision,
    ctx: &Context,
    deployments: &Api<Deployment>,
) -> Result<Option<KafkaError>> {
    let mut topic_failure = None;
    for (desired, plan) in &decision.topic_changes {
        if let Err(e) = ctx.topics.apply(desired, plan).await {
            topic_failure = Some(e);
            break;
        }
    }
    if topic_failure.is_none() {
        for note in &decision.topic_events {
            ctx.publish(dt, note).await;
        }
    }
    let name = decision.deployment.name_any();
    deployments
        .patch(
            &name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&decision.deployment),
        )
        .await
        .map_err(|source| Error::Apply {
            what: "the enrichment Deployment",
            source,
        })?;
    for note in &decision.events {
        ctx.publish(dt, note).await;
    }
    Ok(topic_failure)
}

pub async fn reconcile(dt: Arc<DeviceType>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&[KIND_DEVICE_TYPE])
        .start_timer();
    let ns = dt
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<DeviceType> = Api::namespaced(ctx.client.clone(), &ns);

    if dt.meta().deletion_timestamp.is_some() {
        return cleanup(&dt, &api, &ctx).await;
    }
    if let Some(present) = finalizer_change(&dt) {
        set_topic_finalizer(&dt, &api, present).await?;
    }

    if let Some((cond, note)) = decide_invalid(&dt) {
        status::write(&*dt, &api, &ctx, dt.status.as_ref(), vec![cond], |_| {}).await?;
        ctx.publish(&*dt, &note).await;
        ctx.metrics
            .reconciles
            .with_label_values(&[KIND_DEVICE_TYPE, "invalid"])
            .inc();
        // Nothing to retry until the spec changes.
        return Ok(Action::await_change());
    }

    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let observed = observe(&dt, &ctx, &deployments).await?;
    let decision = decide(&dt, &observed, &ctx.config);
    let topic_failure = apply(&dt, &decision, &ctx, &deployments).await?;
    ctx.store_downscale_window(&dt.uid().unwrap_or_default(), decision.downscale);

    let id = dt.spec.device_type.as_str();
    ctx.metrics
        .desired_replicas
        .with_label_values(&[id])
        .set(decision.replicas.desired.into());
    match decision.lag {
        Some(lag) => ctx.metrics.consumer_lag.with_label_values(&[id]).set(lag),
        // Not read, or unreadable: no number rather than a stale one.
        None => {
            let _ = ctx.metrics.consumer_lag.remove_label_values(&[id]);
        }
    }

    // An unreadable broker is already in the decided conditions; a failed change is not.
    let conditions = match &topic_failure {
        Some(e) => decision.conditions_after_topic_failure(e),
        None => decision.conditions.clone(),
    };
    status::write(&*dt, &api, &ctx, dt.status.as_ref(), conditions, |s| {
        s.topics = Some(decision.topics.clone());
        s.partitions = Some(decision.partitions);
        s.replicas = Some(decision.replicas);
        s.lag = decision.lag;
        s.enrichment_deployment = Some(decision.deployment.name_any());
        s.applications = Some(decision.applications);
    })
    .await?;

    if let Some(e) = topic_failure.or_else(|| observed.topics.err()) {
        return Err(Error::Kafka(e));
    }
    ctx.metrics
        .reconciles
        .with_label_values(&[KIND_DEVICE_TYPE, "ok"])
        .inc();
    ctx.reset_backoff(&*dt);
    Ok(Action::requeue(decision.requeue))
}

/// Whether the topic finalizer is to be added (`Some(true)`) or removed (`Some(false)`): present
/// exactly when the topics are to be deleted with the resource.
pub fn finalizer_change(dt: &DeviceType) -> Option<bool> {
    let has = dt.finalizers().iter().any(|f| f == TOPIC_FINALIZER);
    let wants = dt.spec.deletion_policy == DeletionPolicy::Delete;
    (has != wants).then_some(wants)
}

/// Adds or removes the topic finalizer, keeping every other finalizer. A JSON merge patch with the
/// resourceVersion fails on a concurrent change instead of overwriting someone else's finalizer.
async fn set_topic_finalizer(dt: &DeviceType, api: &Api<DeviceType>, present: bool) -> Result<()> {
    let mut finalizers: Vec<&str> = dt
        .finalizers()
        .iter()
        .map(String::as_str)
        .filter(|f| *f != TOPIC_FINALIZER)
        .collect();
    if present {
        finalizers.push(TOPIC_FINALIZER);
    }
    let patch = json!({
        "metadata": { "finalizers": finalizers, "resourceVersion": dt.resource_version() }
    });
    api.patch(
        &dt.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(|source| Error::Apply {
        what: "the topic finalizer",
        source,
    })?;
    Ok(())
}

/// What deleting a DeviceType does about its topics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cleanup {
    /// No finalizer of ours: nothing to do.
    Nothing,
    /// Delete these topics, then remove the finalizer.
    DeleteTopics(Vec<String>),
    /// Keep the topics (the Event says why) and remove the finalizer.
    KeepTopics(Note),
}

/// Decides what deleting `dt` does; `claimed_elsewhere`: another DeviceType uses the same id.
pub fn decide_cleanup(dt: &DeviceType, prefix: &str, claimed_elsewhere: bool) -> Cleanup {
    if !dt.finalizers().iter().any(|f| f == TOPIC_FINALIZER) {
        return Cleanup::Nothing;
    }
    let names = TopicNames::for_device_type(prefix, &dt.spec.device_type);
    let skip = dt
        .annotations()
        .get(SKIP_TOPIC_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    // Another DeviceType may claim the same id (only one of them is in the registry); never
    // delete topics that are still in use.
    let why = if skip {
        "skip annotation set"
    } else if claimed_elsewhere {
        "another DeviceType uses the same id"
    } else {
        return Cleanup::DeleteTopics(vec![names.raw, names.enriched]);
    };
    Cleanup::KeepTopics(Note::normal(
        "TopicsKept",
        format!(
            "not deleting topics {} and {}: {why}",
            names.raw, names.enriched
        ),
    ))
}

/// After deleting the topics failed with `error` `waited` after the deletion was asked for:
/// retry (`Err`, the Event says how to let go) or give up and remove the finalizer anyway
/// (`Ok`, the Event says what was left behind).
pub fn after_failed_topic_deletion(
    topics: &[String],
    error: &KafkaError,
    waited: Duration,
    timeout: Duration,
) -> std::result::Result<Note, Note> {
    if waited < timeout {
        return Err(Note::warning(
            "TopicDeletionFailed",
            format!(
                "{error}; retrying. To let the DeviceType go without deleting its topics, \
                 annotate it {SKIP_TOPIC_CLEANUP_ANNOTATION}=true"
            ),
        ));
    }
    Ok(Note::warning(
        "TopicsLeftBehind",
        format!(
            "could not delete topics {} for {}s ({error}); removing the finalizer anyway",
            topics.join(" and "),
            waited.as_secs()
        ),
    ))
}

/// A DeviceType is being deleted: delete its topics if the policy says so, then let it go.
/// The Deployment goes with it through its owner reference.
async fn cleanup(dt: &DeviceType, api: &Api<DeviceType>, ctx: &Context) -> Result<Action> {
    let decision = decide_cleanup(dt, &ctx.config.topic_prefix, ctx.id_claimed_elsewhere(dt));
    match decision {
        Cleanup::Nothing => return Ok(Action::await_change()),
        Cleanup::KeepTopics(note) => ctx.publish(dt, &note).await,
        Cleanup::DeleteTopics(topics) => match ctx.topics.delete(&topics).await {
            Ok(()) => {
                let note = Note::normal(
                    "TopicsDeleted",
                    format!("deleted topics {}", topics.join(" and ")),
                );
                ctx.publish(dt, &note).await;
            }
            Err(e) => {
                let waited = dt
                    .meta()
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or_default();
                match after_failed_topic_deletion(
                    &topics,
                    &e,
                    waited,
                    ctx.config.topic_cleanup_timeout,
                ) {
                    Err(retry) => {
                        ctx.publish(dt, &retry).await;
                        return Err(Error::Kafka(e));
                    }
                    Ok(give_up) => ctx.publish(dt, &give_up).await,
                }
            }
        },
    }
    set_topic_finalizer(dt, api, false).await?;
    Ok(Action::await_change())
}

#[cfg(test)]
#[path = "device_type_tests.rs"]
mod tests;
