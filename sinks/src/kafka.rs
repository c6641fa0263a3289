//! The dead-letter topic (its clients are configured by `stockflow_kafka::client_config`).
//!
//! A dead letter is produced to `kafka.dead_letter_topic` with the original key and bytes and
//! these headers (UTF-8 values):
//!
//! | header | value |
//! |---|---|
//! | `stockflow.reason` | the reason code, e.g. `missing_field` |
//! | `stockflow.detail` | what exactly was wrong |
//! | `stockflow.source.topic` | the topic it was read from |
//! | `stockflow.source.partition` | its partition |
//! | `stockflow.source.offset` | its offset |

use crate::dead_letter::{DeadLetter, DeadLetters};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use stockflow_kafka::client_config;
use stockflow_types::config::KafkaConfig;

/// Delivery reports of the dead-letter producer.
#[derive(Default)]
pub struct DeadLetterContext {
    settled: AtomicU64,
}

impl ClientContext for DeadLetterContext {}

impl ProducerContext for DeadLetterContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.settled.fetch_add(1, Ordering::AcqRel);
        if let Err((e, _)) = result {
            // Retriable errors are retried without end (message.timeout.ms = 0): only a
            // permanent refusal by the broker ends here, and then the dead letter is lost.
            metrics::counter!("stockflow_dead_letter_failures_total").increment(1);
            tracing::error!(error = %e, "the broker refused a dead letter");
        }
    }
}

/// The dead-letter topic: a producer shared by every worker of the process.
pub struct KafkaDeadLetters {
    producer: ThreadedProducer<DeadLetterContext>,
    topic: String,
    sent: AtomicU64,
}

impl KafkaDeadLetters {
    /// A producer to `k.dead_letter_topic`.
    pub fn new(k: &KafkaConfig) -> Result<Self, KafkaError> {
        let producer = client_config(k)
            // A dead letter is retried until the broker takes it: it must never be dropped.
            .set("message.timeout.ms", "0")
            .set("enable.idempotence", "false")
            .set("acks", "all")
            .set("linger.ms", "5")
            // In order, so that a count of settled deliveries says which ones are durable.
            .set("max.in.flight.requests.per.connection", "1")
            .create_with_context(DeadLetterContext::default())?;
        Ok(KafkaDeadLetters {
            producer,
            topic: k.dead_letter_topic.clone(),
            sent: AtomicU64::new(0),
        })
    }
}

impl DeadLetters for KafkaDeadLetters {
    fn send(&self, dl: DeadLetter) {
        metrics::counter!("stockflow_dead_letters_total", "reason" => dl.reason).increment(1);
        let (partition, offset) = (dl.partition.to_string(), dl.offset.to_string());
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "stockflow.reason",
                value: Some(dl.reason),
            })
            .insert(Header {
                key: "stockflow.detail",
                value: Some(&dl.detail),
            })
            .insert(Header {
                key: "stockflow.source.topic",
                value: Some(&dl.source),
            })
            .insert(Header {
                key: "stockflow.source.partition",
                value: Some(&partition),
            })
            .insert(Header {
                key: "stockflow.source.offset",
                value: Some(&offset),
            });
        let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
            .payload(&dl.value[..])
            .headers(headers);
        if let Some(key) = &dl.key {
            record = record.key(&key[..]);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => {
                    self.sent.fetch_add(1, Ordering::AcqRel);
                    return;
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    // The local queue is full: wait for deliveries rather than drop.
                    record = r;
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err((e, _)) => {
                    metrics::counter!("stockflow_dead_letter_failures_total").increment(1);
                    tracing::error!(error = %e, reason = dl.reason, source = %dl.source, partition = dl.partition, offset = dl.offset, "producing a dead letter failed");
                    return;
                }
            }
        }
    }

    fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    fn settled(&self) -> u64 {
        self.producer.context().settled.load(Ordering::Acquire)
    }
}
