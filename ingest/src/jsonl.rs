//! The JSON-lines source: one contract event per line, from a file or standard input. A reader
//! thread fills a bounded channel, so a slow pipeline slows the reader instead of filling memory.

use crate::{Polled, Position, RawRecord, Source};
use crossbeam_channel::{bounded, Receiver, TryRecvError};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use stockflow_types::event::MAX_RECORD_BYTES;
use stockflow_types::Millis;
use thiserror::Error;

/// The file could not be opened.
#[derive(Debug, Error)]
#[error("opening input file {path:?}")]
pub struct OpenError {
    path: PathBuf,
    #[source]
    source: std::io::Error,
}

/// Reads JSON lines on a background thread.
pub struct JsonLinesSource {
    rx: Receiver<RawRecord>,
}

impl JsonLinesSource {
    /// Opens `path` (`-` for standard input).
    pub fn open(path: &Path) -> Result<Self, OpenError> {
        let name = path.display().to_string();
        let reader: Box<dyn Read + Send> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path).map_err(|source| OpenError {
                path: path.into(),
                source,
            })?)
        };
        Ok(Self::from_reader(
            if name == "-" { "stdin".into() } else { name },
            reader,
        ))
    }

    /// Reads lines from any reader; `name` goes into record positions.
    pub fn from_reader(name: String, reader: Box<dyn Read + Send>) -> Self {
        let (tx, rx) = bounded(8192);
        std::thread::Builder::new()
            .name("jsonl-reader".into())
            .spawn(move || {
                let mut reader = BufReader::new(reader);
                let mut line = Vec::new();
                let mut number = 0i64;
                loop {
                    line.clear();
                    // At most one byte more than a record may have: longer lines are kept
                    // truncated (and rejected as too_large), the rest skipped.
                    let limit = MAX_RECORD_BYTES as u64 + 1;
                    match (&mut reader).take(limit).read_until(b'\n', &mut line) {
                        Ok(0) => break,
                        Ok(_) => {
                            number += 1;
                            if line.len() as u64 == limit && line.last() != Some(&b'\n') {
                                if let Err(e) = skip_line(&mut reader) {
                                    tracing::error!(file = %name, line = number, error = %e, "reading input stopped");
                                    break;
                                }
                            }
                            while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                                line.pop();
                            }
                            if line.iter().all(u8::is_ascii_whitespace) {
                                continue; // blank lines are not records
                            }
                            let rec = RawRecord::new(None, line.clone(), Position::new(name.clone(), 0, number));
                            if tx.send(rec).is_err() {
                                break;
                            }
                        }
                        Err(e) => {
                            tracing::error!(file = %name, line = number + 1, error = %e, "reading input stopped");
                            break;
                        }
                    }
                }
                tracing::info!(file = %name, lines = number, "input file fully read");
            })
            .expect("spawning a thread");
        JsonLinesSource { rx }
    }
}

/// Consumes the rest of an overlong line.
fn skip_line(reader: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = reader.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                reader.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                reader.consume(n);
            }
        }
    }
}

impl Source for JsonLinesSource {
    fn poll(&mut self, _t: Millis, max: usize, out: &mut Vec<RawRecord>) -> Polled {
        let start = out.len();
        while out.len() - start < max {
            match self.rx.try_recv() {
                Ok(rec) => out.push(rec),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if out.len() == start => return Polled::Done,
                Err(TryRecvError::Disconnected) => break,
            }
        }
        if out.len() > start {
            Polled::Records
        } else {
            Polled::Idle
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Polls until the source is exhausted (bounded in time).
    fn read_all(src: &mut JsonLinesSource) -> Vec<RawRecord> {
        let mut out = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while src.poll(0, 100, &mut out) != Polled::Done {
            assert!(
                std::time::Instant::now() < deadline,
                "reader never finished"
            );
            std::thread::yield_now();
        }
        out
    }

    #[test]
    fn reads_every_line_with_its_number() {
        let text = "{\"a\":1}\r\n\n  \nnot json\n{\"b\":2}";
        let mut src = JsonLinesSource::from_reader(
            "t".into(),
            Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
        );
        let out = read_all(&mut src);
        let lines: Vec<(i64, &[u8])> = out
            .iter()
            .map(|r| (r.position.offset, r.value.as_slice()))
            .collect();
        assert_eq!(
            lines,
            vec![(1, &b"{\"a\":1}"[..]), (4, b"not json"), (5, b"{\"b\":2}")]
        );
    }

    #[test]
    fn an_endless_line_is_cut_and_the_next_one_read() {
        let mut text = vec![b'x'; 3 * MAX_RECORD_BYTES];
        text.extend_from_slice(b"\n{\"c\":3}\n");
        let mut src =
            JsonLinesSource::from_reader("t".into(), Box::new(std::io::Cursor::new(text)));
        let out = read_all(&mut src);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value.len(), MAX_RECORD_BYTES + 1);
        assert_eq!(
            (out[1].position.offset, out[1].value.as_slice()),
            (2, &b"{\"c\":3}"[..])
        );
    }
}
