//! Reconcile errors, typed per stage. `category()` labels the error metric and names the Event
//! reason, so a failure is visible as what it is (broker down, API conflict, bad spec).

use rdkafka::error::KafkaError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Kafka: {0}")]
    Kafka(#[from] KafkaError),
    #[error("Kafka admin task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error("serialising {what}: {source}")]
    Serialize {
        what: &'static str,
        source: serde_json::Error,
    },
    #[error("object has no {0}")]
    MissingField(&'static str),
}

impl Error {
    /// A short, stable label: `kube`, `kafka`, `internal`.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Kafka(_) => "kafka",
            Error::Join(_) | Error::Serialize { .. } | Error::MissingField(_) => "internal",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
