//! The dead-letter output as a JSON-lines file: one object per rejected record with `reason`,
//! `detail`, `source`, `partition`, `offset`, `key` and `value` (or `value_base64` when the
//! bytes are not UTF-8). Writers send through a bounded channel: when the file cannot keep up,
//! senders wait; a dead letter is never dropped.

use base64::Engine as _;
use crossbeam_channel::{bounded, Receiver, RecvTimeoutError, Sender};
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;
use thiserror::Error;

/// One rejected record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// The reason code (`stockflow_types::event::RejectReason::code`).
    pub reason: &'static str,
    /// What exactly was wrong.
    pub detail: String,
    /// Topic, file or generator.
    pub source: String,
    /// Partition (0 for files).
    pub partition: i32,
    /// Offset or line number.
    pub offset: i64,
    /// The original key.
    pub key: Option<Vec<u8>>,
    /// The original bytes.
    pub value: Vec<u8>,
}

#[derive(Serialize)]
struct Line<'a> {
    reason: &'a str,
    detail: &'a str,
    source: &'a str,
    partition: i32,
    offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    value_base64: Option<String>,
}

/// The dead-letter file could not be opened.
#[derive(Debug, Error)]
#[error("opening dead-letter file {path:?}")]
pub struct OpenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Where the ingest loop sends rejected records: this file, or the Kafka dead-letter topic
/// ([`crate::kafka::KafkaDeadLetters`]).
pub trait DeadLetters: Send + Sync {
    /// Hands over one dead letter, waiting if the output is behind; never drops it.
    fn send(&self, dl: DeadLetter);

    /// How many dead letters were sent so far.
    fn sent(&self) -> u64;

    /// How many of them are settled: durable, in the order they were sent. Once this reaches
    /// the value of [`DeadLetters::sent`] read at some moment, every dead letter sent before
    /// it is durable, and the source offsets that produced them may be stored.
    fn settled(&self) -> u64;
}

/// A cheap handle to send dead letters to the file from any thread.
#[derive(Clone, Debug)]
pub struct DeadLetterSender(Sender<DeadLetter>);

impl DeadLetters for DeadLetterSender {
    // The file is for sources without offsets (generator, files): nothing waits on it.
    fn sent(&self) -> u64 {
        0
    }

    fn settled(&self) -> u64 {
        0
    }

    fn send(&self, dl: DeadLetter) {
        metrics::counter!("stockflow_dead_letters_total", "reason" => dl.reason).increment(1);
        if let Err(e) = self.0.send(dl) {
            // Only after close(): a broken invariant, say it loudly.
            tracing::error!(reason = e.0.reason, source = %e.0.source, offset = e.0.offset, "dead letter sent after the writer stopped");
        }
    }
}

/// The writer thread and its channel.
pub struct DeadLetterFile {
    tx: Option<DeadLetterSender>,
    thread: Option<JoinHandle<()>>,
}

impl DeadLetterFile {
    /// Appends to `path`, creating it if needed.
    pub fn create(path: &Path) -> Result<Self, OpenError> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(|source| OpenError {
                path: path.into(),
                source,
            })?;
        let (tx, rx) = bounded(4096);
        let name = path.display().to_string();
        let thread = std::thread::Builder::new()
            .name("dead-letters".into())
            .spawn(move || write_loop(rx, BufWriter::new(file), &name))
            .expect("spawning a thread");
        Ok(DeadLetterFile {
            tx: Some(DeadLetterSender(tx)),
            thread: Some(thread),
        })
    }

    /// A sender for workers.
    pub fn sender(&self) -> DeadLetterSender {
        self.tx.clone().expect("open until close")
    }

    /// Writes out everything sent so far and stops (after every sender is dropped).
    pub fn close(mut self) {
        self.tx.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn write_loop(rx: Receiver<DeadLetter>, mut out: BufWriter<File>, name: &str) {
    loop {
        let dl = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(dl) => dl,
            Err(RecvTimeoutError::Timeout) => {
                flush(&mut out, name);
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let value = std::str::from_utf8(&dl.value).ok();
        let line = Line {
            reason: dl.reason,
            detail: &dl.detail,
            source: &dl.source,
            partition: dl.partition,
            offset: dl.offset,
            key: dl
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            value,
            value_base64: value
                .is_none()
                .then(|| base64::engine::general_purpose::STANDARD.encode(&dl.value)),
        };
        let written = serde_json::to_writer(&mut out, &line)
            .map_err(std::io::Error::from)
            .and_then(|_| out.write_all(b"\n"));
        if let Err(e) = written {
            tracing::error!(file = name, error = %e, reason = dl.reason, offset = dl.offset, "writing a dead letter failed");
        }
        if rx.is_empty() {
            flush(&mut out, name);
        }
    }
    flush(&mut out, name);
}

fn flush(out: &mut BufWriter<File>, name: &str) {
    if let Err(e) = out.flush() {
        tracing::error!(file = name, error = %e, "flushing dead letters failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_text_and_binary_values() {
        let path = std::env::temp_dir().join(format!("dlq-test-{}.jsonl", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let f = DeadLetterFile::create(&path).unwrap();
        let s = f.sender();
        s.send(DeadLetter {
            reason: "invalid_json",
            detail: "d".into(),
            source: "src".into(),
            partition: 1,
            offset: 2,
            key: Some(b"k".to_vec()),
            value: b"{x".to_vec(),
        });
        s.send(DeadLetter {
            reason: "invalid_json",
            detail: "d".into(),
            source: "src".into(),
            partition: 1,
            offset: 3,
            key: None,
            value: vec![0xff, 0x00],
        });
        drop(s);
        f.close();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["value"], "{x");
        assert_eq!(lines[0]["key"], "k");
        assert_eq!(lines[1]["value_base64"], "/wA=");
        let _ = std::fs::remove_file(&path);
    }
}
