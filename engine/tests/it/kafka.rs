//! A Kafka topic under the engine's one handle (`kafka::start -> Running`), against librdkafka's mock
//! cluster: the summary holds each partition's handlers under `Part::Partition`, and the progress the
//! figures every source has plus its Kafka part.

use std::time::Duration;

use catchup_engine::kafka::{self, KafkaConfig, KafkaUrl};
use catchup_engine::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

/// Counts the events it handled.
#[derive(Default)]
struct Count(u64);

impl ShardHandler for Count {
    fn handle(&mut self, _e: &Event<'_>, _ctx: &Ctx) -> Result<(), HandlerError> {
        self.0 += 1;
        Ok(())
    }
    fn snapshot(&mut self) -> Result<Vec<u8>, HandlerError> {
        Ok(self.0.to_le_bytes().to_vec())
    }
    fn restore(&mut self, bytes: &[u8]) -> Result<(), HandlerError> {
        self.0 = u64::from_le_bytes(bytes.try_into().map_err(|_| HandlerError::new("bad count"))?);
        Ok(())
    }
}

#[test]
fn a_topic_runs_under_the_one_handle_with_handlers_per_partition() {
    const EVENTS: u64 = 900;
    let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
    let topic = "handle";
    mock.create_topic(topic, 3, 1).unwrap();
    let p: BaseProducer = ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().unwrap();
    for i in 0..EVENTS {
        let key = format!("k{}", i % 31);
        p.send(BaseRecord::to(topic).key(&key).payload(&i.to_le_bytes()[..])).unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();

    let url = KafkaUrl { brokers: mock.bootstrap_servers(), topic: topic.into() };
    let mut cfg = KafkaConfig::new(url, "handle-g");
    cfg.n_shards = 2;
    let running: Running<Count> =
        kafka::start(cfg, |_partition, n| (0..n).map(|_| Count::default()).collect::<Vec<_>>()).unwrap();
    let s = running.wait().unwrap();

    // One member owns every partition at the end: each has its own handlers, one per shard.
    let parts: Vec<Part> = s.handlers.keys().copied().collect();
    assert_eq!(parts, [Part::Partition(0), Part::Partition(1), Part::Partition(2)]);
    assert!(s.handlers.values().all(|hs| hs.len() == 2), "one handler per shard in every partition");
    let counted: u64 = s.handlers.values().flatten().map(|h| h.0).sum();
    assert_eq!(counted, EVENTS);
    assert_eq!(s.shards.iter().map(|x| x.handled).sum::<u64>(), EVENTS);

    // The figures every source has, then the Kafka part.
    assert_eq!(s.progress.handled, EVENTS);
    assert_eq!(s.progress.lag_events, 0);
    assert!(s.progress.caught_up);
    let k = s.progress.kafka.as_ref().expect("a Kafka run's progress has its Kafka part");
    assert_eq!(k.topic_partitions, [0, 1, 2]);
    assert!(k.group_done, "a run without follow ends when the group is done");
    assert_eq!(k.partitions.iter().map(|p| p.handled.max(0) as u64).sum::<u64>(), EVENTS);
    let all: Vec<Count> = s.into_handlers().collect();
    assert_eq!((all.len(), all.iter().map(|h| h.0).sum::<u64>()), (6, EVENTS));
}
