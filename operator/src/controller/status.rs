//! Writing the status of a DeviceType or an Application, one way for both: the decided
//! conditions plus their `Ready` summary, merged with the stored ones, the observed generation,
//! a merge patch only when something changed (removing the fields that were cleared), and the
//! `Ready` transition's Event
//! ([`conditions::ready_event`]).

use std::fmt::Debug;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::Context;
use super::conditions::{self, Cond};
use super::error::{Error, Result};
use crate::crd::{ApplicationStatus, DeviceTypeStatus};

/// A status with conditions and an observed generation.
pub trait ConditionedStatus: Clone + Default + PartialEq + Serialize {
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, conditions: Vec<Condition>);
    fn set_observed_generation(&mut self, generation: Option<i64>);
}

macro_rules! conditioned_status {
    ($($status:ty),*) => {$(
        impl ConditionedStatus for $status {
            fn conditions(&self) -> &[Condition] {
                &self.conditions
            }
            fn set_conditions(&mut self, conditions: Vec<Condition>) {
                self.conditions = conditions;
            }
            fn set_observed_generation(&mut self, generation: Option<i64>) {
                self.observed_generation = generation;
            }
        }
    )*};
}
conditioned_status!(DeviceTypeStatus, ApplicationStatus);

/// Writes `obj`'s status when it differs from `stored`: `conds` plus a `Ready` summary, and
/// whatever `fill` sets on a copy of the stored status; publishes the Event of a `Ready`
/// transition after the write.
pub async fn write<K, S>(
    obj: &K,
    api: &Api<K>,
    ctx: &Context,
    stored: Option<&S>,
    conds: Vec<Cond>,
    fill: impl FnOnce(&mut S),
) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: ConditionedStatus,
{
    let previous = stored.cloned().unwrap_or_default();
    let mut status = previous.clone();
    fill(&mut status);
    let mut all = conds;
    all.push(conditions::ready(&all));
    status.set_conditions(conditions::merge(
        previous.conditions(),
        &all,
        obj.meta().generation,
        k8s_openapi::jiff::Timestamp::now(),
    ));
    status.set_observed_generation(obj.meta().generation);
    if status == previous {
        return Ok(());
    }
    let mut patch = json!(status);
    // A merge patch keeps what it does not mention: a field the reconcile cleared (a lag that
    // is no longer read) is removed explicitly.
    if let (Some(fields), serde_json::Value::Object(stored)) =
        (patch.as_object_mut(), json!(previous))
    {
        for key in stored.keys() {
            if !fields.contains_key(key) {
                fields.insert(key.clone(), serde_json::Value::Null);
            }
        }
    }
    api.patch_status(
        &obj.name_any(),
        &PatchParams::default(),
        &Patch::Merge(&json!({ "status": patch })),
    )
    .await
    .map_err(Error::Status)?;
    if let Some(note) = conditions::ready_event(previous.conditions(), &all) {
        ctx.publish(obj, &note).await;
    }
    Ok(())
}
