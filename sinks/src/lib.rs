//! Outputs of stockflow other than HTTP: where a dataflow diff becomes a ClickHouse row
//! ([`clickhouse`]), where the pipeline's state becomes a checkpoint file and comes back at
//! the next start ([`checkpoint`]), and the dead-letter outputs where every rejected input lands with its
//! reason, its original key and bytes and its source position (a file, [`dead_letter`], or a
//! Kafka topic, [`kafka`]). [`kafka::client_config`] builds every rdkafka client of stockflow.
//!
//! ```
//! use stockflow_sinks::dead_letter::{DeadLetter, DeadLetterFile, DeadLetters};
//! let dir = std::env::temp_dir().join(format!("dlq-doc-{}", std::process::id()));
//! let path = dir.with_extension("jsonl");
//! let file = DeadLetterFile::create(&path).unwrap();
//! file.sender().send(DeadLetter { reason: "invalid_json", detail: "not JSON".into(), source: "doc".into(),
//!     partition: 0, offset: 7, key: None, value: b"{oops".to_vec() });
//! file.close();
//! assert!(std::fs::read_to_string(&path).unwrap().contains("\"offset\":7"));
//! ```

pub mod checkpoint;
pub mod clickhouse;
pub mod dead_letter;
pub mod kafka;
