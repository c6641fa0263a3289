//! Outputs of stockflow other than HTTP. For now: the dead-letter output, where every rejected
//! input lands with its reason, its original key and bytes and its source position.
//!
//! ```
//! use stockflow_sinks::dead_letter::{DeadLetter, DeadLetterFile};
//! let dir = std::env::temp_dir().join(format!("dlq-doc-{}", std::process::id()));
//! let path = dir.with_extension("jsonl");
//! let file = DeadLetterFile::create(&path).unwrap();
//! file.sender().send(DeadLetter { reason: "invalid_json", detail: "not JSON".into(), source: "doc".into(),
//!     partition: 0, offset: 7, key: None, value: b"{oops".to_vec() });
//! file.close();
//! assert!(std::fs::read_to_string(&path).unwrap().contains("\"offset\":7"));
//! ```

pub mod dead_letter;
