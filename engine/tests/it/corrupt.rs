//! A damaged log fails the run with a read error naming the file, and does not hang: the reader's failure
//! stops every shard.

use std::os::unix::fs::FileExt;
use std::sync::Arc;

use catchup_engine::*;

use crate::util::*;

#[test]
fn corrupt_log_fails_the_run_without_hanging() {
    let log = temp_log(&LogSpec { n_events: 6000, n_keys: 30, skew: 1, seed: 51 });
    let mut segs: Vec<_> = std::fs::read_dir(log.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "seg"))
        .collect();
    segs.sort();
    assert!(segs.len() >= 3, "the log spans segments");
    // Flip a byte inside a batch of the second segment (not the last one, so it is not a torn tail).
    let victim = &segs[1];
    let f = std::fs::OpenOptions::new().read(true).write(true).open(victim).unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, 20_000).unwrap();
    f.write_all_at(&[b[0] ^ 0x40], 20_000).unwrap();
    drop(f);
    let ckpt = mem_tempdir();
    for n_shards in [1, 4] {
        let cfg = EngineConfig {
            n_shards,
            ring_size: 64,
            publish_batch: 16,
            checkpoint: checkpoint(ckpt.path(), 50),
            ..Default::default()
        };
        match run_keyed(log.path(), cfg, Arc::default()) {
            Err(ReplayError::Read(e)) => {
                let msg = e.to_string();
                let name = victim.file_name().unwrap().to_str().unwrap();
                assert!(msg.contains(name), "the error names the damaged segment: {msg}");
            }
            Err(e) => panic!("expected a read error, got {e}"),
            Ok(_) => panic!("a corrupt log replayed"),
        }
    }
}
