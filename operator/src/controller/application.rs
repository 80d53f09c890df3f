//! Reconciling one Application, in the same steps as a DeviceType: observe (the device types
//! defined by DeviceTypes, from the cache) -> decide ([`decide`], pure: conditions, the enriched
//! topics it may read, Events) -> status (the shared writer) -> Events. An Application owns no
//! other object, so there is nothing else to apply.

use std::sync::Arc;

use kube::runtime::controller::Action;
use kube::{Api, Resource, ResourceExt};

use super::conditions::{Cond, Note};
use super::error::{Error, Result};
use super::status;
use super::{Context, KIND_APPLICATION};
use crate::crd::{Application, TopicNames, validate};

pub const DEVICE_TYPES_RESOLVED: &str = "DeviceTypesResolved";
pub const SPEC_VALID: &str = "SpecValid";

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

/// What a reconcile of an Application writes and says.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Decision {
    pub conditions: Vec<Cond>,
    /// The enriched topics of its resolved device types.
    pub topics: Vec<String>,
    pub resolved: Vec<String>,
    pub missing: Vec<String>,
    /// Published after the status is written.
    pub events: Vec<Note>,
    /// The `result` label of the reconcile metric: `ok` or `invalid`.
    pub result: &'static str,
}

/// Decides the status of `app` given the device-type ids DeviceTypes define (`known`).
pub fn decide(app: &Application, known: &[String], prefix: &str) -> Decision {
    let invalid = validate::application(&app.spec);
    if !invalid.is_empty() {
        let message = validate::describe(&invalid);
        return Decision {
            conditions: vec![Cond::new(SPEC_VALID, false, "InvalidSpec", message.clone())],
            events: vec![Note::warning("InvalidSpec", message)],
            result: "invalid",
            ..Decision::default()
        };
    }
    let (resolved, missing) = resolve(&app.spec.device_types, known);
    let condition = if missing.is_empty() {
        Cond::new(
            DEVICE_TYPES_RESOLVED,
            true,
            "Resolved",
            format!("device types {} are defined", resolved.join(", ")),
        )
    } else {
        Cond::new(
            DEVICE_TYPES_RESOLVED,
            false,
            "MissingDeviceTypes",
            format!(
                "no DeviceType defines {}; create one (see deploy/samples/) or fix \
                 spec.deviceTypes",
                missing.join(", ")
            ),
        )
    };
    Decision {
        conditions: vec![condition],
        topics: resolved
            .iter()
            .map(|id| TopicNames::for_device_type(prefix, id).enriched)
            .collect(),
        resolved,
        missing,
        events: Vec::new(),
        result: "ok",
    }
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

    let known = ctx.known_device_type_ids();
    let decision = decide(&app, &known, &ctx.config.topic_prefix);
    status::write(
        &*app,
        &api,
        &ctx,
        app.status.as_ref(),
        decision.conditions.clone(),
        |s| {
            s.topics = decision.topics.clone();
            s.resolved_device_types = decision.resolved.clone();
            s.missing_device_types = decision.missing.clone();
        },
    )
    .await?;
    for note in &decision.events {
        ctx.publish(&*app, note).await;
    }
    ctx.metrics
        .reconciles
        .with_label_values(&[KIND_APPLICATION, decision.result])
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

    fn app(device_types: &[&str], active: bool) -> Application {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "iotcloud.dev/v1alpha1",
            "kind": "Application",
            "metadata": { "name": "billing", "namespace": "iot", "uid": "a-1", "generation": 1 },
            "spec": {
                "displayName": "Billing", "developer": "Example Ltd.", "platform": "web",
                "deviceTypes": device_types, "version": "1.0.0",
                "contactEmail": "billing@example.com", "active": active
            }
        }))
        .unwrap()
    }

    #[test]
    fn decide_table() {
        let known = ids(&["smart_breaker", "smart_meter"]);
        // (application, DeviceTypesResolved or SpecValid reason, topics, missing, events, result)
        let cases = [
            (
                app(&["smart_meter", "smart_breaker"], true),
                ("DeviceTypesResolved", true, "Resolved"),
                vec!["iot.smart_breaker.enriched", "iot.smart_meter.enriched"],
                vec![],
                vec![],
                "ok",
            ),
            (
                app(&["smart_meter", "ghost"], true),
                ("DeviceTypesResolved", false, "MissingDeviceTypes"),
                vec!["iot.smart_meter.enriched"],
                vec!["ghost"],
                vec![],
                "ok",
            ),
            (
                app(&["smart_meter"], false),
                ("DeviceTypesResolved", true, "Resolved"),
                vec!["iot.smart_meter.enriched"],
                vec![],
                vec![],
                "ok",
            ),
            (
                app(&[], true),
                ("SpecValid", false, "InvalidSpec"),
                vec![],
                vec![],
                vec!["InvalidSpec"],
                "invalid",
            ),
        ];
        for (app, (type_, ok, reason), topics, missing, events, result) in cases {
            let d = decide(&app, &known, "iot");
            let c = &d.conditions[0];
            assert_eq!(
                (c.type_, c.ok, c.reason),
                (type_, ok, reason),
                "{:?}",
                app.spec
            );
            assert_eq!(d.topics, topics, "{:?}", app.spec);
            assert_eq!(d.missing, missing, "{:?}", app.spec);
            assert_eq!(
                d.events.iter().map(|n| n.reason).collect::<Vec<_>>(),
                events,
                "{:?}",
                app.spec
            );
            assert_eq!(d.result, result);
        }
        let d = decide(&app(&["ghost"], true), &known, "iot");
        assert_eq!(
            d.conditions[0].message,
            "no DeviceType defines ghost; create one (see deploy/samples/) or fix spec.deviceTypes"
        );
    }
}
