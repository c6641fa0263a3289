//! `stockflow produce`: writes the generator's workload (duplicates and bad records included),
//! or JSON lines from a file, into the Kafka topics, keyed by SKU, as an upstream producer
//! would: valid events to the topic of their type, anything else to the inventory topic. For
//! demos, tests and the end-to-end benchmark.

use anyhow::{Context, Result};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflow::clock::{Clock, SystemClock};
use stockflow_ingest::generator::Generator;
use stockflow_ingest::jsonl::JsonLinesSource;
use stockflow_ingest::kafka::{check_brokers, ensure_topics};
use stockflow_ingest::{Polled, RawRecord, Source};
use stockflow_kafka::client_config;
use stockflow_types::config::Settings;
use stockflow_types::event::{decode, Stream};

/// Produces `generator.limit` records (0 = until interrupted) at `generator.rate` per second,
/// or, with `input`, the JSON lines of that file (`-`: standard input) as fast as possible.
pub fn produce(settings: &Settings, input: Option<&Path>) -> Result<()> {
    let k = &settings.kafka;
    check_brokers(k)?;
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(ensure_topics(k))?;
    let producer: ThreadedProducer<_> = client_config(k)
        // The partitioner of the Java client: a SKU lands where Java producers would put it.
        .set("partitioner", "murmur2_random")
        .set("linger.ms", "5")
        .set("acks", "all")
        .set("message.timeout.ms", "0")
        .create()
        .context("creating the Kafka producer")?;
    let clock = SystemClock;
    let started = clock.now_ms();
    let mut source: Box<dyn Source> = match input {
        Some(path) => Box::new(JsonLinesSource::open(path, &[])?),
        None => Box::new(Generator::new(
            &settings.generator,
            0,
            1,
            Arc::new(move || SystemClock.now_ms()),
        )),
    };
    let t0 = Instant::now();
    let mut sent = 0u64;
    let mut batch: Vec<RawRecord> = Vec::new();
    loop {
        match source.poll(started, 10_000, &mut batch) {
            Polled::Done => break,
            Polled::Idle => std::thread::sleep(Duration::from_millis(1)),
            Polled::Records => {}
        }
        for rec in batch.drain(..) {
            let event = decode(&rec.value).ok();
            // Malformed records go to the inventory topic: a producer bug, as seen in the wild.
            let topic = match event.as_ref().map(|ev| ev.kind.stream()) {
                Some(Stream::Orders) => &k.orders_topic,
                _ => &k.inventory_topic,
            };
            // The key is the SKU (contract §1); JSON lines carry none, so take it from the event.
            let key = rec.key.or_else(|| event.map(|ev| ev.sku.into_bytes()));
            let mut record = BaseRecord::<[u8], [u8]>::to(topic).payload(&rec.value[..]);
            if let Some(key) = &key {
                record = record.key(&key[..]);
            }
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(e).context("producing a record"),
                }
            }
            sent += 1;
        }
    }
    producer
        .flush(Duration::from_secs(60))
        .context("waiting for the broker to acknowledge every record")?;
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "produced {sent} records in {secs:.2} s ({:.0} records/s) to {:?} and {:?}",
        sent as f64 / secs,
        k.inventory_topic,
        k.orders_topic
    );
    Ok(())
}
