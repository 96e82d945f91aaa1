//! What the poll thread and the shards exchange: batches of copied records, control messages, answers.

/// One record as copied out of the consumer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Item {
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) timestamp_ns: u64,
    pub(crate) key_hash: u64,
    pub(crate) key_len: u32,
    pub(crate) payload_len: u32,
}

/// Records for one shard: their bytes back to back in `data`, in `items` order.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    pub(crate) data: Vec<u8>,
    pub(crate) items: Vec<Item>,
    /// Engine clock (ns since start) when the batch was handed over.
    pub(crate) sent_ns: u64,
}

impl Batch {
    /// Item `i`, whose key starts at `data_at` in `data`, with its key and payload.
    pub(crate) fn record(&self, i: usize, data_at: usize) -> (&Item, &[u8], &[u8]) {
        let it = &self.items[i];
        let key_end = data_at + it.key_len as usize;
        (it, &self.data[data_at..key_end], &self.data[key_end..key_end + it.payload_len as usize])
    }

    /// Keeps only the records whose partition passes `keep`.
    pub(crate) fn retain(&mut self, keep: impl Fn(i32) -> bool) {
        if self.items.iter().all(|it| keep(it.partition)) {
            return;
        }
        let mut data = Vec::with_capacity(self.data.len());
        let mut at = 0usize;
        self.items.retain(|it| {
            let len = it.key_len as usize + it.payload_len as usize;
            let span = at..at + len;
            at += len;
            if keep(it.partition) {
                data.extend_from_slice(&self.data[span]);
                true
            } else {
                false
            }
        });
        self.data = data;
    }
}

pub(crate) enum ToShard<H> {
    Events(Batch),
    /// Take over a partition's handler; skip its records below `start`; check per-key coverage if the
    /// state was redistributed from another shard count. Records below `replay_end` are replays (until
    /// `LiveFrom` says where the backlog ended, every record is).
    Install {
        partition: i32,
        handler: H,
        start: i64,
        check_covered: bool,
        replay_end: i64,
    },
    /// Answer once every earlier message is handled; with `snapshot`, include each partition's state.
    Barrier {
        id: u64,
        snapshot: bool,
    },
    /// Drop a partition's handler (after a barrier).
    Release {
        partition: i32,
    },
    /// The partition's records from `offset` on arrived after its end was reached: they are live, not replays.
    LiveFrom {
        partition: i32,
        offset: i64,
    },
}

pub(crate) struct Ack {
    pub(crate) shard: usize,
    pub(crate) id: u64,
    pub(crate) states: Vec<(i32, Result<Vec<u8>, String>)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_retain_keeps_bytes_aligned_with_items() {
        let mut b = Batch::default();
        for (p, key, payload) in [(0, "a", "one"), (1, "bb", "two!"), (0, "c", ""), (2, "", "x")] {
            b.data.extend_from_slice(key.as_bytes());
            b.data.extend_from_slice(payload.as_bytes());
            b.items.push(Item {
                partition: p,
                offset: 0,
                timestamp_ns: 0,
                key_hash: 0,
                key_len: key.len() as u32,
                payload_len: payload.len() as u32,
            });
        }
        b.retain(|p| p != 1);
        assert_eq!(b.items.iter().map(|i| i.partition).collect::<Vec<_>>(), [0, 0, 2]);
        assert_eq!(b.data, b"aonecx");
        b.retain(|p| p == 2);
        assert_eq!((b.items.len(), b.data.as_slice()), (1, &b"x"[..]));
    }
}
