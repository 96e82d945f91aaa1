//! The Kafka source's typed errors ([`KafkaError`], inside `ReplayError::Kafka`).

use std::path::PathBuf;

use rdkafka::error::RDKafkaErrorCode;

/// The Kafka source failed: a broker, topic, group or offset problem.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KafkaError {
    /// A call to the Kafka client failed, with what was being done.
    #[error("{what}: {error}")]
    Client {
        /// What was being done ("subscribe to orders").
        what: String,
        /// The client's error.
        error: rdkafka::error::KafkaError,
    },
    /// The topic does not exist.
    #[error("{url}: no such topic")]
    NoSuchTopic {
        /// The source address.
        url: String,
    },
    /// The topic exists but cannot be read (no partitions, or an error in its metadata).
    #[error("{url}: topic not available ({code:?})")]
    TopicUnavailable {
        /// The source address.
        url: String,
        /// The broker's error code, if it gave one.
        code: Option<RDKafkaErrorCode>,
    },
    /// A partition has a committed offset but no snapshot: the state below the offset is not here.
    #[error(
        "partition {partition} of {topic} has offset {committed} committed by group {group} but no snapshot in \
         {}: the state of the records below it is not here (is the checkpoint directory shared by every member \
         of the group?)",
        dir.display()
    )]
    NoSnapshot {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The committed offset.
        committed: i64,
        /// The consumer group.
        group: String,
        /// The partition's snapshot directory.
        dir: PathBuf,
    },
    /// The group refused this many commits in a row.
    #[error("{refused} commits in a row refused for group {group}: {error}")]
    CommitsRefused {
        /// Commits refused in a row.
        refused: u32,
        /// The consumer group.
        group: String,
        /// The last refusal.
        error: rdkafka::error::KafkaError,
    },
}
