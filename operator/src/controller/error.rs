//! Reconcile errors, one variant per step that can fail: observe (the resource itself and the
//! Kubernetes objects around it), Kafka (observing or changing topics), apply (the Deployment and
//! the finalizer) and status. `category()` labels the error metric and names the Event reason, so
//! a failure is visible as what it is (broker down, API conflict).

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The resource lacks a field every reconcile needs.
    #[error("object has no {0}")]
    MissingField(&'static str),
    /// Reading the objects the resource owns from the Kubernetes API.
    #[error("observing {what}: {source}")]
    Observe {
        what: &'static str,
        source: kube::Error,
    },
    /// Observing, creating, changing or deleting topics.
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// Writing what was decided to the Kubernetes API.
    #[error("applying {what}: {source}")]
    Apply {
        what: &'static str,
        source: kube::Error,
    },
    /// Writing the resource's status.
    #[error("writing the status: {0}")]
    Status(kube::Error),
}

impl Error {
    /// A short, stable label: `kube`, `kafka`, `internal`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Observe { .. } | Error::Apply { .. } | Error::Status(_) => "kube",
            Error::Kafka(_) => "kafka",
            Error::MissingField(_) => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
