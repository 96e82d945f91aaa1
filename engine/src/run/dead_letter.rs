//! The dead-letter line: one JSON object per skipped event, the same schema for every source
//! (`docs/dead-letters.md`). Lines are built on the shard thread and written by the I/O thread.

use crate::error::printable_key;
use crate::handler::Event;
use crate::policy::json_string;
use crate::shard::ShardId;

/// Version of the dead-letter schema, the `"v"` field of every line (`docs/dead-letters.md`).
pub const DEAD_LETTER_VERSION: u32 = 1;

/// Where a dead-lettered event was read from.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub(crate) enum Origin<'a> {
    /// The local log: `position` is the log position.
    Log,
    /// Several logs replayed as one: `position` is the merge number; the record is at `log_position` of
    /// the log at index `log` (its place in the merged run's list).
    Merged {
        /// The log's index.
        log: usize,
        /// The record's position in that log.
        log_position: catchup_segments::Position,
    },
    /// A Kafka partition: `position` is the record's offset in it.
    Kafka {
        /// The topic.
        topic: &'a str,
        /// The partition.
        partition: i32,
    },
}

/// One dead-letter line (without the newline):
/// `{"v":1,"source":"log","position":P,"shard":S,"timestamp_ns":T,"key":K,"error":E}`, and for Kafka
/// `{"v":1,"source":"kafka","topic":T,"partition":P,"offset":O,"position":O,...}` with the same fields after.
pub(crate) fn dead_letter_line(origin: Origin<'_>, shard: ShardId, event: &Event<'_>, why: &str) -> String {
    let mut s = format!("{{\"v\":{DEAD_LETTER_VERSION},");
    match origin {
        Origin::Log => s.push_str("\"source\":\"log\","),
        Origin::Merged { log, log_position } => {
            s.push_str(&format!("\"source\":\"log\",\"log\":{log},\"log_position\":{},", log_position.0))
        }
        Origin::Kafka { topic, partition } => {
            s.push_str("\"source\":\"kafka\",\"topic\":");
            json_string(&mut s, topic);
            s.push_str(&format!(",\"partition\":{partition},\"offset\":{},", event.position.0));
        }
    }
    s.push_str(&format!(
        "\"position\":{},\"shard\":{shard},\"timestamp_ns\":{},\"key\":",
        event.position.0, event.timestamp_ns
    ));
    json_string(&mut s, &printable_key(event.key));
    s.push_str(",\"error\":");
    json_string(&mut s, why);
    s.push('}');
    s
}

#[cfg(test)]
mod tests {
    use catchup_segments::Position;

    use super::*;

    #[test]
    fn both_sources_write_one_schema() {
        let e = Event { position: Position(7), timestamp_ns: 9, key_hash: 0, key: b"k\"1", payload: b"" };
        assert_eq!(
            dead_letter_line(Origin::Log, ShardId(1), &e, "bad\nthing"),
            r#"{"v":1,"source":"log","position":7,"shard":1,"timestamp_ns":9,"key":"k\"1","error":"bad\nthing"}"#
        );
        assert_eq!(
            dead_letter_line(Origin::Kafka { topic: "t", partition: 2 }, ShardId(1), &e, "bad\nthing"),
            r#"{"v":1,"source":"kafka","topic":"t","partition":2,"offset":7,"position":7,"shard":1,"timestamp_ns":9,"key":"k\"1","error":"bad\nthing"}"#
        );
        assert_eq!(
            dead_letter_line(Origin::Merged { log: 1, log_position: Position(3) }, ShardId(1), &e, "x"),
            r#"{"v":1,"source":"log","log":1,"log_position":3,"position":7,"shard":1,"timestamp_ns":9,"key":"k\"1","error":"x"}"#
        );
    }
}
