//! Where to consume from ([`KafkaUrl`]) and the settings of a Kafka-sourced run ([`KafkaConfig`]).

use std::path::PathBuf;
use std::time::Duration;

use crate::error::ConfigError;
use crate::run::{CheckpointConfig, ErrorPolicy, validate_common};

/// Broker list and topic, from `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaUrl {
    /// Comma-separated `host:port` list (librdkafka's `bootstrap.servers`).
    pub brokers: String,
    /// Topic name.
    pub topic: String,
}

impl KafkaUrl {
    /// Parses `kafka://HOST:PORT[,HOST:PORT...]/TOPIC`.
    pub fn parse(s: &str) -> Result<KafkaUrl, String> {
        let rest =
            s.strip_prefix("kafka://").ok_or_else(|| format!("`{s}` is not a kafka://HOST:PORT/TOPIC address"))?;
        let (brokers, topic) =
            rest.split_once('/').ok_or_else(|| format!("`{s}` names no topic: use kafka://HOST:PORT/TOPIC"))?;
        if brokers.is_empty()
            || brokers
                .split(',')
                .any(|b| b.rsplit_once(':').is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err()))
        {
            return Err(format!("`{s}`: brokers must be HOST:PORT[,HOST:PORT...]"));
        }
        // Kafka's own rule for topic names.
        let legal = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if topic.is_empty() || topic.len() > 249 || !topic.chars().all(legal) || topic == "." || topic == ".." {
            return Err(format!("`{s}`: `{topic}` is not a valid topic name (1-249 of a-z A-Z 0-9 . _ -)"));
        }
        Ok(KafkaUrl { brokers: brokers.to_string(), topic: topic.to_string() })
    }
}

impl std::fmt::Display for KafkaUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kafka://{}/{}", self.brokers, self.topic)
    }
}

/// Settings of a Kafka-sourced run.
#[derive(Debug, Clone)]
pub struct KafkaConfig {
    /// Brokers and topic.
    pub url: KafkaUrl,
    /// Consumer group (`group.id`).
    pub group: String,
    /// Shards (threads running handlers) in this process.
    pub n_shards: usize,
    /// Snapshots per partition. Without it, the handlers are taken to be stateless (side effects only) and
    /// offsets are committed every `commit_every`.
    pub checkpoint: Option<CheckpointConfig>,
    /// How often offsets are committed when there is no checkpoint directory. With one, offsets are
    /// committed with each snapshot: by its count and time rules, at the end of the backlog, when
    /// partitions are revoked, and at a clean stop.
    pub commit_every: Duration,
    /// Poison-event policy.
    pub on_error: ErrorPolicy,
    /// Dead-letter log (JSON Lines), required by the skipping policies.
    pub dead_letters: Option<PathBuf>,
    /// Keep consuming after the backlog; otherwise stop once every partition of the topic is handled and
    /// committed by the group up to its end (records appended meanwhile included).
    pub follow: bool,
    /// Identity of the handler configuration, stored in snapshots and checked on restore.
    pub fingerprint: u64,
    /// Time one event in this many for the latency histograms.
    pub latency_sample_every: u32,
    /// Events per hand-off to a shard.
    pub batch_max: usize,
    /// Dispatch at most this many events per second: a token bucket that saves up at most `rate/50` events of
    /// credit while idle (see `wait::Pacer`); None = no limit.
    pub max_rate: Option<u64>,
    /// Extra librdkafka properties (for example `session.timeout.ms`).
    pub client: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Settings with defaults for everything but the source.
    pub fn new(url: KafkaUrl, group: impl Into<String>) -> KafkaConfig {
        KafkaConfig {
            url,
            group: group.into(),
            n_shards: 1,
            checkpoint: None,
            commit_every: Duration::from_secs(1),
            on_error: ErrorPolicy::Stop,
            dead_letters: None,
            follow: false,
            fingerprint: 0,
            latency_sample_every: 64,
            batch_max: 512,
            max_rate: None,
            client: Vec::new(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        validate_common(
            self.n_shards,
            self.on_error,
            self.dead_letters.as_deref(),
            self.latency_sample_every,
            self.checkpoint.as_ref(),
        )?;
        if self.group.is_empty() {
            return Err(ConfigError::NoGroup);
        }
        if self.batch_max == 0 {
            return Err(ConfigError::ZeroBatch("batch size"));
        }
        Ok(())
    }

    /// How often barriers run by time: with a checkpoint directory its time rule (if any: snapshots cost what
    /// the state weighs, and their count rule may be enough), else `commit_every`.
    pub(crate) fn barrier_every(&self) -> Option<Duration> {
        match &self.checkpoint {
            Some(c) => c.every,
            None => Some(self.commit_every),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = KafkaUrl::parse("kafka://127.0.0.1:9092,b2:9093/orders.v1").unwrap();
        assert_eq!(u.brokers, "127.0.0.1:9092,b2:9093");
        assert_eq!(u.topic, "orders.v1");
        assert_eq!(u.to_string(), "kafka://127.0.0.1:9092,b2:9093/orders.v1");
        for bad in [
            "http://h:1/t",
            "kafka://h:1",
            "kafka://h/t",
            "kafka://h:x/t",
            "kafka://:1/t",
            "kafka://h:1/",
            "kafka://h:1/a b",
            "kafka://h:1/..",
        ] {
            assert!(KafkaUrl::parse(bad).is_err(), "{bad} was accepted");
        }
    }

    /// The Kafka source's settings go through the checks the log source's do, plus its own.
    #[test]
    fn kafka_configs_are_validated() {
        use crate::error::ConfigError;
        let base = KafkaConfig::new(KafkaUrl::parse("kafka://h:1/t").unwrap(), "g");
        assert_eq!(base.validate(), Ok(()));
        let cases = [
            (KafkaConfig { n_shards: 0, ..base.clone() }, ConfigError::ShardCount(0)),
            (KafkaConfig { group: String::new(), ..base.clone() }, ConfigError::NoGroup),
            (KafkaConfig { batch_max: 0, ..base.clone() }, ConfigError::ZeroBatch("batch size")),
            (KafkaConfig { latency_sample_every: 0, ..base.clone() }, ConfigError::LatencySampling),
            (KafkaConfig { on_error: ErrorPolicy::Skip, ..base.clone() }, ConfigError::NoDeadLetters),
            (
                KafkaConfig {
                    checkpoint: Some(CheckpointConfig { dir: "ck".into(), every_events: Some(0), every: None }),
                    ..base.clone()
                },
                ConfigError::SnapshotInterval,
            ),
        ];
        for (cfg, want) in cases {
            assert_eq!(cfg.validate(), Err(want));
        }
    }
}
