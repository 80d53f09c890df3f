//! Reconciling one Application: its spec is valid and every device type it registers for is
//! defined by a DeviceType; its status lists the enriched topics it may read.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, Resource, ResourceExt};

use super::conditions::Cond;
use super::error::{Error, Result};
use super::status;
use super::{Context, KIND_APPLICATION};
use crate::crd::{Application, ApplicationStatus, TopicNames, validate};

pub const DEVICE_TYPES_RESOLVED: &str = "DeviceTypesResolved";

/// Splits `wanted` into the ids that `known` defines and those it does not, each sorted.
pub fn resolve(wanted: &[String], known: &[String]) -> (Vec<String>, Vec<String>) {
    let mut resolved = Vec::new();
    let mut missing = Vec::new();
    for id in wanted {
        if known.contains(id) {
            resolved.push(id.clone());
        } else {
            missing.push(id.clone());
        }
    }
    for list in [&mut resolved, &mut missing] {
        list.sort();
        list.dedup();
    }
    (resolved, missing)
}

pub async fn reconcile(app: Arc<Application>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx
        .metrics
        .reconcile_duration
        .with_label_values(&[KIND_APPLICATION])
        .start_timer();
    if app.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let ns = app
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let api: Api<Application> = Api::namespaced(ctx.client.clone(), &ns);

    let invalid = validate::application(&app.spec);
    // The fields this reconcile decides besides the conditions.
    let mut decided = ApplicationStatus::default();
    let mut conds = Vec::new();
    let result;
    if !invalid.is_empty() {
        let message = invalid
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ");
        conds.push(Cond::new(
            "SpecValid",
            false,
            "InvalidSpec",
            message.clone(),
        ));
        ctx.event(&*app, EventType::Warning, "InvalidSpec", &message)
            .await;
        result = "invalid";
    } else {
        let (resolved, missing) = resolve(&app.spec.device_types, &ctx.known_device_type_ids());
        decided.topics = resolved
            .iter()
            .map(|id| TopicNames::for_device_type(&ctx.config.topic_prefix, id).enriched)
            .collect();
        conds.push(if missing.is_empty() {
            Cond::new(DEVICE_TYPES_RESOLVED, true, "Resolved", format!(
                "device types {} are defined", resolved.join(", ")
            ))
        } else {
            Cond::new(DEVICE_TYPES_RESOLVED, false, "MissingDeviceTypes", format!(
                "no DeviceType defines {}; create one (see deploy/samples/) or fix spec.deviceTypes",
                missing.join(", ")
            ))
        });
        decided.resolved_device_types = resolved;
        decided.missing_device_types = missing;
        result = "ok";
    }
    status::write(&*app, &api, &ctx, app.status.as_ref(), conds, |s| {
        s.topics = decided.topics;
        s.resolved_device_types = decided.resolved_device_types;
        s.missing_device_types = decided.missing_device_types;
    })
    .await?;
    ctx.metrics
        .reconciles
        .with_label_values(&[KIND_APPLICATION, result])
        .inc();
    ctx.reset_backoff(&*app);
    Ok(Action::requeue(ctx.config.resync))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn resolve_splits_known_and_missing() {
        let (resolved, missing) = resolve(
            &ids(&["smart_meter", "smart_breaker", "ghost", "smart_breaker"]),
            &ids(&["smart_breaker", "smart_meter", "environmental_sensor"]),
        );
        assert_eq!(resolved, ids(&["smart_breaker", "smart_meter"]));
        assert_eq!(missing, ids(&["ghost"]));
    }
}
