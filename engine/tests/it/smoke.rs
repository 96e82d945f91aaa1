use std::collections::HashMap;

use catchup_engine::*;
use catchup_segments::{LogWriter, WriterOptions};

/// Records, per key, the sequence numbers it saw, so order can be checked.
#[derive(Default)]
struct Recorder {
    seen: HashMap<Vec<u8>, Vec<u64>>,
}

impl ShardHandler for Recorder {
    fn handle(&mut self, e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        self.seen.entry(e.key.to_vec()).or_default().push(u64::from_le_bytes(e.payload.try_into().unwrap()));
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(Vec::new())
    }
    fn restore(&mut self, _bytes: &[u8]) -> Result<(), HandlerError> {
        Ok(())
    }
}

#[test]
fn every_key_in_order_on_one_shard() {
    let dir = tempfile::tempdir().unwrap();
    let mut w =
        LogWriter::open(dir.path(), WriterOptions { segment_size_bytes: 1 << 20, ..Default::default() }).unwrap();
    let mut seq: HashMap<String, u64> = HashMap::new();
    for i in 0..50_000u64 {
        let k = format!("key-{}", (i * 7919) % 101);
        let s = seq.entry(k.clone()).or_default();
        *s += 1;
        w.append(k.as_bytes(), &s.to_le_bytes(), i).unwrap();
    }
    w.close().unwrap();
    for n in [1, 3, 8] {
        let cfg = EngineConfig { n_shards: n, ring_size: 1024, publish_batch: 64, ..Default::default() };
        let s = Engine::run(dir.path(), cfg, |_| Recorder::default()).unwrap();
        // A log is one part: its handlers, one per shard, under `Part::Log`.
        assert_eq!(s.handlers.keys().copied().collect::<Vec<_>>(), [Part::Log]);
        assert_eq!(s.log_handlers().len(), n);
        let mut owner: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut total = 0;
        for (i, h) in s.log_handlers().iter().enumerate() {
            for (k, v) in &h.seen {
                assert!(owner.insert(k.clone(), i).is_none(), "key on two shards");
                assert!(v.iter().copied().eq(1..=v.len() as u64), "out of order");
                total += v.len();
            }
        }
        assert_eq!(total, 50_000);
        assert_eq!(s.progress.watermark.0, 50_000);
        assert_eq!(s.progress.handled, 50_000);
        assert!(s.progress.caught_up);
    }
}
