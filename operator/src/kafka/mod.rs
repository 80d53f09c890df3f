//! Everything the operator asks of Kafka.

pub mod lag;
pub mod topics;
