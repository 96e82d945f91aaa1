//! The threads of a Kafka-sourced run as the running handle ([`Running`](crate::Running)) sees them.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use catchup_segments::Position;

use super::shared::Shared;
use crate::error::InternalError;
use crate::policy;
use crate::run::{Part, Progress, RunState, SourceRun};

/// The poll thread (which joins the shards and the I/O thread itself and returns each owned partition's
/// handlers) and the state it shares with the handle.
pub(crate) struct KafkaRun<H> {
    pub(crate) shared: Arc<Shared>,
    pub(crate) poll: Option<JoinHandle<BTreeMap<i32, Vec<H>>>>,
}

impl<H> std::fmt::Debug for KafkaRun<H> {
    // By hand: a handle is `Debug` whatever the handler is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaRun").field("shared", &self.shared).field("poll", &self.poll).finish()
    }
}

impl<H: Send> SourceRun<H> for KafkaRun<H> {
    fn state(&self) -> &RunState {
        &self.shared.run
    }

    fn progress(&self) -> Progress {
        self.shared.progress()
    }

    fn passed(&self, _: usize) -> Position {
        // Positions are per partition (`Progress::kafka`), not per shard.
        Position(0)
    }

    fn is_finished(&self) -> bool {
        self.poll.as_ref().is_none_or(|t| t.is_finished())
    }

    fn join(&mut self) -> BTreeMap<Part, Vec<H>> {
        let Some(poll) = self.poll.take() else { return BTreeMap::new() };
        match poll.join() {
            Ok(partitions) => partitions.into_iter().map(|(p, hs)| (Part::Partition(p), hs)).collect(),
            Err(p) => {
                let message = policy::panic_message(&*p);
                self.shared.run.fail(InternalError::Panicked { thread: "poll".into(), message }.into());
                BTreeMap::new()
            }
        }
    }
}
