//! Kafka topics as the operator wants them: created when missing, grown when more partitions are
//! asked for, their configuration put back when it drifted, never shrunk (Kafka cannot remove
//! partitions; the operator reports that instead of retrying forever).
//!
//! [`plan_topic`] decides what to do from the desired and observed state and is a pure function;
//! [`TopicAdmin`] is the seam through which the controllers observe and act, and
//! [`KafkaTopicAdmin`] implements it with the Kafka admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

/// A topic as it should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DesiredTopic {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    /// Topic-level configuration the operator owns (e.g. `retention.ms`). Keys not listed here are
    /// left to the broker defaults; a value set behind the operator's back on one of these keys is
    /// drift and is put back.
    pub config: BTreeMap<String, String>,
}

/// A topic as the broker reports it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedTopic {
    pub partitions: i32,
    /// Configuration entries not at their broker default (dynamic topic configs).
    pub config: BTreeMap<String, String>,
}

/// What to do about one topic.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPlan {
    Create,
    /// Everything matches.
    UpToDate,
    /// Change what differs; either part may be empty.
    Update {
        grow_partitions_to: Option<i32>,
        /// The full desired configuration, when any owned key differs (Kafka's non-incremental
        /// AlterConfigs replaces the topic's dynamic configuration as a whole).
        set_config: Option<BTreeMap<String, String>>,
    },
    /// The spec asks for fewer partitions than exist; nothing is changed.
    RefuseShrink {
        existing: i32,
        requested: i32,
    },
}

/// Decides what to do for `desired` given what the broker has (`None`: the topic does not exist).
pub fn plan_topic(desired: &DesiredTopic, observed: Option<&ObservedTopic>) -> TopicPlan {
    let Some(observed) = observed else {
        return TopicPlan::Create;
    };
    if desired.partitions < observed.partitions {
        return TopicPlan::RefuseShrink {
            existing: observed.partitions,
            requested: desired.partitions,
        };
    }
    let grow_partitions_to =
        (desired.partitions > observed.partitions).then_some(desired.partitions);
    let drifted = desired
        .config
        .iter()
        .any(|(k, v)| observed.config.get(k) != Some(v));
    let set_config = drifted.then(|| desired.config.clone());
    if grow_partitions_to.is_none() && set_config.is_none() {
        TopicPlan::UpToDate
    } else {
        TopicPlan::Update {
            grow_partitions_to,
            set_config,
        }
    }
}

/// What happened to a topic in one [`ensure`] call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicOutcome {
    Created,
    UpToDate,
    Updated {
        grew_partitions: Option<(i32, i32)>,
        corrected_config: bool,
    },
    ShrinkRefused {
        existing: i32,
        requested: i32,
    },
}

impl TopicOutcome {
    /// What carrying out `plan` on a topic observed as `observed` does.
    pub fn of(plan: &TopicPlan, observed: Option<&ObservedTopic>) -> Self {
        match plan {
            TopicPlan::Create => TopicOutcome::Created,
            TopicPlan::UpToDate => TopicOutcome::UpToDate,
            TopicPlan::RefuseShrink {
                existing,
                requested,
            } => TopicOutcome::ShrinkRefused {
                existing: *existing,
                requested: *requested,
            },
            TopicPlan::Update {
                grow_partitions_to,
                set_config,
            } => TopicOutcome::Updated {
                grew_partitions: grow_partitions_to
                    .map(|n| (observed.map_or(0, |o| o.partitions), n)),
                corrected_config: set_config.is_some(),
            },
        }
    }
}

/// The topic operations the controllers need: the seam between a reconcile and the broker, so
/// that scenario tests can run a reconcile against a scripted broker.
pub trait TopicAdmin: Send + Sync {
    /// Partition count and dynamic configuration of `topic`, or `None` when it does not exist.
    fn observe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, KafkaError>>;

    /// Carries out `plan` for `desired` (nothing for `UpToDate` and `RefuseShrink`).
    fn apply<'a>(
        &'a self,
        desired: &'a DesiredTopic,
        plan: &'a TopicPlan,
    ) -> BoxFuture<'a, Result<(), KafkaError>>;

    /// Deletes `topics`; topics that do not exist are not an error.
    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), KafkaError>>;
}

/// Observes `desired`, plans and carries out the plan, and says what it did.
pub async fn ensure(
    admin: &dyn TopicAdmin,
    desired: &DesiredTopic,
) -> Result<TopicOutcome, KafkaError> {
    let observed = admin.observe(&desired.name).await?;
    let plan = plan_topic(desired, observed.as_ref());
    admin.apply(desired, &plan).await?;
    Ok(TopicOutcome::of(&plan, observed.as_ref()))
}

/// [`TopicAdmin`] through librdkafka's admin API.
pub struct KafkaTopicAdmin {
    admin: Arc<AdminClient<DefaultClientContext>>,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaTopicAdmin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTopicAdmin").finish_non_exhaustive()
    }
}

impl KafkaTopicAdmin {
    pub fn new(bootstrap: &str, timeout: Duration) -> Result<Self, KafkaError> {
        let admin = ClientConfig::new()
            .set("bootstrap.servers", bootstrap)
            .set("client.id", "iot-operator")
            .create()?;
        Ok(Self {
            admin: Arc::new(admin),
            timeout,
        })
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new()
            .operation_timeout(Some(self.timeout))
            .request_timeout(Some(self.timeout))
    }

    async fn observe_topic(&self, topic: &str) -> Result<Option<ObservedTopic>, KafkaError> {
        // librdkafka's metadata call blocks: keep it off the async worker threads.
        let (admin, name, timeout) = (self.admin.clone(), topic.to_string(), self.timeout);
        let metadata =
            tokio::task::spawn_blocking(move || admin.inner().fetch_metadata(Some(&name), timeout))
                .await
                .map_err(|_| KafkaError::Canceled)??;
        let partitions = {
            match metadata.topics().iter().find(|t| t.name() == topic) {
                None => return Ok(None),
                Some(t) => match t.error() {
                    Some(e)
                        if RDKafkaErrorCode::from(e)
                            == RDKafkaErrorCode::UnknownTopicOrPartition =>
                    {
                        return Ok(None);
                    }
                    Some(e) => return Err(KafkaError::MetadataFetch(e.into())),
                    None => t.partitions().len() as i32,
                },
            }
        };
        let results = self
            .admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &self.options())
            .await?;
        let mut config = BTreeMap::new();
        for result in results {
            let resource = result.map_err(KafkaError::AdminOp)?;
            for entry in resource.entries {
                if entry.source == ConfigSource::DynamicTopic
                    && let Some(value) = entry.value
                {
                    config.insert(entry.name, value);
                }
            }
        }
        Ok(Some(ObservedTopic { partitions, config }))
    }

    async fn apply_plan(&self, desired: &DesiredTopic, plan: &TopicPlan) -> Result<(), KafkaError> {
        match plan {
            TopicPlan::UpToDate | TopicPlan::RefuseShrink { .. } => Ok(()),
            TopicPlan::Create => {
                let mut topic = NewTopic::new(
                    &desired.name,
                    desired.partitions,
                    TopicReplication::Fixed(desired.replication_factor),
                );
                for (k, v) in &desired.config {
                    topic = topic.set(k, v);
                }
                let results = self.admin.create_topics([&topic], &self.options()).await?;
                for r in results {
                    match r {
                        Ok(_) => {}
                        // Created concurrently (another reconcile, or a previous attempt whose
                        // answer was lost): converge on the next reconcile.
                        Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                        Err((_, code)) => return Err(KafkaError::AdminOp(code)),
                    }
                }
                Ok(())
            }
            TopicPlan::Update {
                grow_partitions_to,
                set_config,
            } => {
                if let Some(n) = grow_partitions_to {
                    let results = self
                        .admin
                        .create_partitions(
                            [&NewPartitions::new(&desired.name, *n as usize)],
                            &self.options(),
                        )
                        .await?;
                    for r in results {
                        r.map_err(|(_, code)| KafkaError::AdminOp(code))?;
                    }
                }
                if let Some(config) = set_config {
                    let mut alter = AlterConfig::new(ResourceSpecifier::Topic(&desired.name));
                    for (k, v) in config {
                        alter = alter.set(k, v);
                    }
                    let results = self.admin.alter_configs([&alter], &self.options()).await?;
                    for r in results {
                        r.map_err(|(_, code)| KafkaError::AdminOp(code))?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn delete_topics(&self, topics: &[String]) -> Result<(), KafkaError> {
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        let results = self.admin.delete_topics(&names, &self.options()).await?;
        for r in results {
            match r {
                Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
                Err((_, code)) => return Err(KafkaError::AdminOp(code)),
            }
        }
        Ok(())
    }
}

impl TopicAdmin for KafkaTopicAdmin {
    fn observe<'a>(
        &'a self,
        topic: &'a str,
    ) -> BoxFuture<'a, Result<Option<ObservedTopic>, KafkaError>> {
        Box::pin(self.observe_topic(topic))
    }

    fn apply<'a>(
        &'a self,
        desired: &'a DesiredTopic,
        plan: &'a TopicPlan,
    ) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(self.apply_plan(desired, plan))
    }

    fn delete<'a>(&'a self, topics: &'a [String]) -> BoxFuture<'a, Result<(), KafkaError>> {
        Box::pin(self.delete_topics(topics))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(partitions: i32, config: &[(&str, &str)]) -> DesiredTopic {
        DesiredTopic {
            name: "iot.smart_breaker.raw".into(),
            partitions,
            replication_factor: 1,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    fn observed(partitions: i32, config: &[(&str, &str)]) -> ObservedTopic {
        ObservedTopic {
            partitions,
            config: config
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn missing_topic_is_created() {
        assert_eq!(plan_topic(&desired(3, &[]), None), TopicPlan::Create);
    }

    #[test]
    fn matching_topic_is_left_alone() {
        let d = desired(3, &[("retention.ms", "1000")]);
        let o = observed(3, &[("retention.ms", "1000"), ("cleanup.policy", "delete")]);
        assert_eq!(plan_topic(&d, Some(&o)), TopicPlan::UpToDate);
    }

    #[test]
    fn more_partitions_grow_the_topic() {
        assert_eq!(
            plan_topic(&desired(6, &[]), Some(&observed(3, &[]))),
            TopicPlan::Update {
                grow_partitions_to: Some(6),
                set_config: None
            }
        );
    }

    #[test]
    fn fewer_partitions_are_refused_and_nothing_else_changes() {
        let d = desired(2, &[("retention.ms", "5")]);
        let o = observed(3, &[("retention.ms", "1")]);
        assert_eq!(
            plan_topic(&d, Some(&o)),
            TopicPlan::RefuseShrink {
                existing: 3,
                requested: 2
            }
        );
    }

    #[test]
    fn drifted_or_missing_owned_config_is_put_back() {
        let d = desired(
            3,
            &[("retention.ms", "1000"), ("max.message.bytes", "2000000")],
        );
        for o in [
            observed(
                3,
                &[("retention.ms", "5"), ("max.message.bytes", "2000000")],
            ),
            observed(3, &[("max.message.bytes", "2000000")]),
        ] {
            assert_eq!(
                plan_topic(&d, Some(&o)),
                TopicPlan::Update {
                    grow_partitions_to: None,
                    set_config: Some(d.config.clone())
                }
            );
        }
    }
}
