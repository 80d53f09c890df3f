//! Reconciling one DeviceType: validate -> topics -> lag and replicas -> enrichment Deployment ->
//! status. Every property is checked on every pass, whatever triggered it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};
use serde_json::json;

use super::conditions::Cond;
use super::deployment::{desired_enrichment_deployment, enrichment_deployment_name};
use super::error::{Error, Result};
use super::scaling::replicas_for_lag;
use super::status;
use super::{Context, FIELD_MANAGER, KIND_DEVICE_TYPE};
use crate::crd::{
    DeletionPolicy, DeviceType, ReplicaCounts, Scaling, TopicNames, parse_retention_ms, validate,
};
use crate::kafka::lag::consumer_group_lag;
use crate::kafka::topics::{DesiredTopic, TopicOutcome};

/// Finalizer that guards the Kafka topics of a DeviceType with `deletionPolicy: Delete`.
pub const TOPIC_FINALIZER: &str = "iotcloud.dev/topics";
/// Annotation that lets a DeviceType with `deletionPolicy: Delete` go without deleting its topics
/// (the escape hatch when the broker is gone for good).
pub const SKIP_TOPIC_CLEANUP_ANNOTATION: &str = "iotcloud.dev/skip-topic-cleanup";

pub const TOPICS_READY: &str = "TopicsReady";
pub const ENRICHMENT_READY: &str = "EnrichmentReady";
pub const SPEC_VALID: &str = "SpecValid";

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
    sync_finalizer(&dt, &api).await?;

    let invalid = validate::device_type(&dt.spec);
    if !invalid.is_empty() {
        let message = invalid
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        let spec = Cond::new(SPEC_VALID, false, "InvalidSpec", message.clone());
        status::write(&*dt, &api, &ctx, dt.status.as_ref(), vec![spec], |_| {}).await?;
        ctx.event(&*dt, EventType::Warning, "InvalidSpec", &message)
            .await;
        ctx.metrics
            .reconciles
            .with_label_values(&[KIND_DEVICE_TYPE, "invalid"])
            .inc();
        // Nothing to retry until the spec changes.
        return Ok(Action::await_change());
    }
    let spec_ok = Cond::new(SPEC_VALID, true, "Valid", "the spec is valid");

    // Topics: the shared ones first (the enrichment writes to them too), then this type's.
    let mut topic_error = None;
    let mut topics_cond = Cond::new(TOPICS_READY, true, "UpToDate", "topics match the spec");
    let mut partitions = dt.spec.topics.partitions;
    match ctx.ensure_shared_topics().await {
        Ok(()) => {}
        Err(e) => topic_error = Some(e),
    }
    if topic_error.is_none() {
        for topic in desired_topics(&dt, &ctx.config.topic_prefix) {
            match ctx.topics.ensure(&topic).await {
                Ok(TopicOutcome::UpToDate) => {}
                Ok(TopicOutcome::Created) => {
                    ctx.event(
                        &*dt,
                        EventType::Normal,
                        "TopicCreated",
                        &format!(
                            "created topic {} with {} partitions",
                            topic.name, topic.partitions
                        ),
                    )
                    .await;
                }
                Ok(TopicOutcome::Updated {
                    grew_partitions,
                    corrected_config,
                }) => {
                    if let Some((from, to)) = grew_partitions {
                        ctx.event(
                            &*dt,
                            EventType::Normal,
                            "PartitionsIncreased",
                            &format!("topic {}: partitions {from} -> {to}", topic.name),
                        )
                        .await;
                    }
                    if corrected_config {
                        ctx.event(
                            &*dt,
                            EventType::Normal,
                            "ConfigDriftCorrected",
                            &format!("topic {}: configuration put back to the spec", topic.name),
                        )
                        .await;
                    }
                }
                Ok(TopicOutcome::ShrinkRefused {
                    existing,
                    requested,
                }) => {
                    partitions = partitions.max(existing);
                    let message = format!(
                        "topic {} has {existing} partitions and spec.topics.partitions asks for \
                         {requested}: Kafka cannot remove partitions; set it to {existing} or more",
                        topic.name
                    );
                    if topics_cond.ok {
                        topics_cond =
                            Cond::new(TOPICS_READY, false, "PartitionShrinkRefused", message);
                    }
                }
                Err(e) => {
                    topic_error = Some(Error::Kafka(e));
                    break;
                }
            }
        }
    }
    if let Some(e) = &topic_error {
        topics_cond = Cond::new(TOPICS_READY, false, "KafkaUnavailable", e.to_string());
    }

    // Lag of the enrichment consumer group, and the replicas it asks for.
    let names = TopicNames::for_device_type(&ctx.config.topic_prefix, &dt.spec.device_type);
    let lag = if topic_error.is_none() {
        read_lag(&ctx, &dt.spec.device_type, &names.raw).await
    } else {
        None
    };
    let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &ns);
    let deployment_name = enrichment_deployment_name(&dt.name_any());
    let existing = deployments.get_opt(&deployment_name).await?;
    let current = existing
        .as_ref()
        .and_then(|d| d.spec.as_ref())
        .and_then(|s| s.replicas);
    let scaling = dt.spec.enrichment.scaling();
    let wanted = replicas_for_lag(scaling, lag, partitions);
    let replicas = match (scaling, current) {
        (Scaling::Autoscale { .. }, Some(current)) => ctx.downscale_decision(
            dt.uid().unwrap_or_default(),
            current,
            wanted,
            Instant::now(),
        ),
        _ => wanted,
    };
    if let Some(current) = current
        && current != replicas
    {
        ctx.event(
            &*dt,
            EventType::Normal,
            "Scaled",
            &format!(
                "enrichment replicas {current} -> {replicas} (lag {})",
                lag.map_or("unknown".to_string(), |l| l.to_string())
            ),
        )
        .await;
    }
    let id = dt.spec.device_type.as_str();
    ctx.metrics
        .desired_replicas
        .with_label_values(&[id])
        .set(replicas.into());
    if let Some(lag) = lag {
        ctx.metrics.consumer_lag.with_label_values(&[id]).set(lag);
    }

    let desired = desired_enrichment_deployment(&dt, &ctx.config, replicas);
    let applied = deployments
        .patch(
            &deployment_name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await?;
    let ready_replicas = applied
        .status
        .as_ref()
        .and_then(|s| s.ready_replicas)
        .unwrap_or(0);
    let enrichment_cond = if ready_replicas >= replicas {
        Cond::new(
            ENRICHMENT_READY,
            true,
            "Available",
            format!("{ready_replicas}/{replicas} replicas ready"),
        )
    } else {
        Cond::new(
            ENRICHMENT_READY,
            false,
            "Progressing",
            format!("{ready_replicas}/{replicas} replicas ready"),
        )
    };

    let applications = ctx.active_applications_for(id);
    let settled = topics_cond.ok && enrichment_cond.ok;
    status::write(
        &*dt,
        &api,
        &ctx,
        dt.status.as_ref(),
        vec![spec_ok, topics_cond, enrichment_cond],
        |s| {
            s.topics = Some(names.clone());
            s.partitions = Some(partitions);
            s.replicas = Some(ReplicaCounts {
                desired: replicas,
                ready: ready_replicas,
            });
            s.lag = lag;
            s.enrichment_deployment = Some(deployment_name.clone());
            s.applications = Some(applications);
        },
    )
    .await?;

    if let Some(e) = topic_error {
        return Err(e);
    }
    ctx.metrics
        .reconciles
        .with_label_values(&[KIND_DEVICE_TYPE, "ok"])
        .inc();
    ctx.reset_backoff(&*dt);
    Ok(match scaling {
        Scaling::Autoscale { .. } => Action::requeue(ctx.config.autoscale_interval),
        Scaling::Fixed { .. } if !settled => Action::requeue(Duration::from_secs(5)),
        Scaling::Fixed { .. } => Action::requeue(ctx.config.resync),
    })
}

/// Adds the topic finalizer when the topics are to be deleted with the resource, and removes it
/// when the policy changed back to `Retain`.
async fn sync_finalizer(dt: &DeviceType, api: &Api<DeviceType>) -> Result<()> {
    let has = dt.finalizers().iter().any(|f| f == TOPIC_FINALIZER);
    let wants = dt.spec.deletion_policy == DeletionPolicy::Delete;
    if has == wants {
        return Ok(());
    }
    set_topic_finalizer(dt, api, wants).await
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
    .await?;
    Ok(())
}

/// A DeviceType is being deleted: delete its topics if the policy says so, then let it go.
/// The Deployment goes with it through its owner reference.
async fn cleanup(dt: &DeviceType, api: &Api<DeviceType>, ctx: &Context) -> Result<Action> {
    if !dt.finalizers().iter().any(|f| f == TOPIC_FINALIZER) {
        return Ok(Action::await_change());
    }
    let skip = dt
        .annotations()
        .get(SKIP_TOPIC_CLEANUP_ANNOTATION)
        .is_some_and(|v| v == "true");
    let names = TopicNames::for_device_type(&ctx.config.topic_prefix, &dt.spec.device_type);
    // Another DeviceType may claim the same id (only one of them is in the registry); never
    // delete topics that are still in use.
    let shared = ctx.id_claimed_elsewhere(dt);
    if !skip && !shared {
        match ctx.topics.delete(&[&names.raw, &names.enriched]).await {
            Ok(()) => {
                ctx.event(
                    dt,
                    EventType::Normal,
                    "TopicsDeleted",
                    &format!("deleted topics {} and {}", names.raw, names.enriched),
                )
                .await;
            }
            Err(e) => {
                let waited = dt
                    .meta()
                    .deletion_timestamp
                    .as_ref()
                    .map(|t| k8s_openapi::jiff::Timestamp::now().duration_since(t.0))
                    .and_then(|d| Duration::try_from(d).ok())
                    .unwrap_or_default();
                if waited < ctx.config.topic_cleanup_timeout {
                    ctx.event(
                        dt,
                        EventType::Warning,
                        "TopicDeletionFailed",
                        &format!(
                            "{e}; retrying. To let the DeviceType go without deleting its topics, \
                         annotate it {SKIP_TOPIC_CLEANUP_ANNOTATION}=true"
                        ),
                    )
                    .await;
                    return Err(Error::Kafka(e));
                }
                ctx.event(dt, EventType::Warning, "TopicsLeftBehind", &format!(
                    "could not delete topics {} and {} for {}s ({e}); removing the finalizer anyway",
                    names.raw,
                    names.enriched,
                    waited.as_secs()
                ))
                .await;
            }
        }
    } else {
        let why = if skip {
            "skip annotation set"
        } else {
            "another DeviceType uses the same id"
        };
        ctx.event(
            dt,
            EventType::Normal,
            "TopicsKept",
            &format!(
                "not deleting topics {} and {}: {why}",
                names.raw, names.enriched
            ),
        )
        .await;
    }
    set_topic_finalizer(dt, api, false).await?;
    Ok(Action::await_change())
}

/// Lag of the enrichment group of `id` on `raw_topic`; `None` when it cannot be read.
async fn read_lag(ctx: &Context, id: &str, raw_topic: &str) -> Option<i64> {
    let bootstrap = ctx.config.kafka_bootstrap.clone();
    let group = ctx.config.enrichment_group(id);
    let topic = raw_topic.to_string();
    let timeout = ctx.config.kafka_timeout;
    let result = tokio::task::spawn_blocking(move || {
        consumer_group_lag(&bootstrap, &group, &[&topic], timeout)
    })
    .await;
    match result {
        Ok(Ok(lag)) => Some(lag.total()),
        Ok(Err(e)) => {
            tracing::warn!(device_type = id, error = %e, "reading consumer lag failed");
            None
        }
        Err(e) => {
            tracing::warn!(device_type = id, error = %e, "lag task failed");
            None
        }
    }
}
