//! Invalid configurations are refused before anything starts, with a message saying what is wrong.

use std::path::PathBuf;
use std::time::Duration;

use catchup_engine::*;

use crate::util::*;

#[test]
fn invalid_configs_are_refused() {
    let log = temp_log(&LogSpec { n_events: 10, n_keys: 3, skew: 1, seed: 1 });
    let base = EngineConfig::default();
    let retry_skip = ErrorPolicy::Retry { attempts: 2, backoff: Duration::from_millis(1), then_skip: true };
    let cases: Vec<(EngineConfig, ConfigError)> = vec![
        (EngineConfig { n_shards: 0, ..base.clone() }, ConfigError::ShardCount(0)),
        (EngineConfig { n_shards: SHARDS_MAX + 1, ..base.clone() }, ConfigError::ShardCount(SHARDS_MAX + 1)),
        (EngineConfig { ring_size: 1000, ..base.clone() }, ConfigError::RingSize(1000)),
        (EngineConfig { ring_size: 1, publish_batch: 1, ..base.clone() }, ConfigError::RingSize(1)),
        (EngineConfig { ring_size: 0, ..base.clone() }, ConfigError::RingSize(0)),
        (EngineConfig { ring_size: 64, publish_batch: 65, ..base.clone() }, ConfigError::PublishBatch(65)),
        (EngineConfig { publish_batch: 0, ..base.clone() }, ConfigError::PublishBatch(0)),
        (EngineConfig { consume_batch_max: 0, ..base.clone() }, ConfigError::ZeroBatch("consume batch")),
        (EngineConfig { latency_sample_every: 0, ..base.clone() }, ConfigError::LatencySampling),
        (EngineConfig { on_error: ErrorPolicy::Skip, ..base.clone() }, ConfigError::NoDeadLetters),
        (EngineConfig { on_error: retry_skip, ..base.clone() }, ConfigError::NoDeadLetters),
        (
            EngineConfig {
                checkpoint: Some(CheckpointConfig {
                    dir: PathBuf::from("/nonexistent"),
                    every_events: Some(0),
                    every: None,
                }),
                ..base.clone()
            },
            ConfigError::SnapshotInterval,
        ),
        (
            EngineConfig {
                checkpoint: Some(CheckpointConfig {
                    dir: PathBuf::from("/nonexistent"),
                    every_events: None,
                    every: Some(Duration::ZERO),
                }),
                ..base.clone()
            },
            ConfigError::SnapshotInterval,
        ),
    ];
    for (cfg, want) in cases {
        let shown = format!("{cfg:?}");
        match Engine::run(log.path(), cfg, |_| FoldShard::default()) {
            Err(ReplayError::Config(got)) => assert_eq!(got, want, "{shown}: refused for another reason ({got})"),
            Err(e) => panic!("{shown}: expected a config error, got {e}"),
            Ok(_) => panic!("{shown}: accepted"),
        }
    }
    // The limits themselves are accepted.
    let ok = EngineConfig { n_shards: 2, ring_size: 2, publish_batch: 2, consume_batch_max: 1, ..base.clone() };
    assert_eq!(Engine::run(log.path(), ok, |_| FoldShard::default()).unwrap().progress.watermark, Position(10));
    let ok = EngineConfig { on_error: ErrorPolicy::Skip, dead_letters: Some(log.path().join("dl")), ..base };
    Engine::run(log.path(), ok, |_| FoldShard::default()).unwrap();
}

/// Opening something that is not a log is an `Open` error, not a panic.
#[test]
fn not_a_log_is_an_open_error() {
    let dir = tempfile::tempdir().unwrap();
    match Engine::run(dir.path(), EngineConfig::default(), |_| FoldShard::default()) {
        Err(ReplayError::Open(_)) => {}
        Err(e) => panic!("expected an open error, got {e}"),
        Ok(_) => panic!("an empty directory replayed"),
    }
}
