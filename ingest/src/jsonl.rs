//! The JSON-lines source: one contract event per line, from a file or standard input. A reader
//! thread fills a bounded channel, so a slow pipeline slows the reader instead of filling memory.
//!
//! A file is a log of one partition: a record's position is its line number, its log time the
//! latest `ts` of the valid events so far. A restart from a checkpoint skips the lines it covers.

use crate::{Admissions, Polled, Position, RawRecord, Source};
use crossbeam_channel::{bounded, Receiver, TryRecvError};
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use stockflow_types::event::{decode, MAX_RECORD_BYTES};
use stockflow_types::resume::Resume;
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
    name: String,
    /// The last line read and its log time.
    last: (i64, Millis),
    /// Where it stood after each admission time (offsets are line numbers).
    admitted: Admissions,
}

impl JsonLinesSource {
    /// Opens `path` (`-` for standard input), skipping the lines a checkpoint covers.
    pub fn open(path: &Path, resume: &[Resume]) -> Result<Self, OpenError> {
        let name = path.display().to_string();
        let reader: Box<dyn Read + Send> = if name == "-" {
            Box::new(std::io::stdin())
        } else {
            Box::new(std::fs::File::open(path).map_err(|source| OpenError {
                path: path.into(),
                source,
            })?)
        };
        let name = if name == "-" { "stdin".into() } else { name };
        let from = stockflow_types::resume::find(resume, &name, 0)
            .map_or((0, 0), |r| (r.next - 1, r.log_time));
        Ok(Self::from_reader(name, reader, from))
    }

    /// Reads lines from any reader; `name` goes into record positions. Lines up to
    /// `from.0` are skipped; `from.1` is the log time so far.
    pub fn from_reader(name: String, reader: Box<dyn Read + Send>, from: (i64, Millis)) -> Self {
        let (tx, rx) = bounded(8192);
        let thread_name = name.clone();
        let (skip, mut log_time) = from;
        std::thread::Builder::new()
            .name("jsonl-reader".into())
            .spawn(move || {
                let name = thread_name;
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
                            if number <= skip || line.iter().all(u8::is_ascii_whitespace) {
                                continue; // covered by the checkpoint, or blank: not a record
                            }
                            // Only a valid event moves log time: bad input changes nothing.
                            if let Ok(ev) = decode(&line) {
                                log_time = log_time.max(ev.ts);
                            }
                            let mut rec = RawRecord::new(None, line.clone(), Position::new(name.clone(), 0, number));
                            rec.log_time = log_time;
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
        JsonLinesSource {
            rx,
            name,
            last: (from.0, from.1),
            admitted: Admissions::new(from.0, from.1),
        }
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
    fn poll(&mut self, t: Millis, max: usize, out: &mut Vec<RawRecord>) -> Polled {
        let start = out.len();
        while out.len() - start < max {
            match self.rx.try_recv() {
                Ok(rec) => {
                    self.last = (rec.position.offset, rec.log_time);
                    self.admitted.admitted(t, self.last.0, self.last.1);
                    out.push(rec);
                }
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

    fn log_frontier(&self) -> Millis {
        self.last.1
    }

    fn positions_at(&self, t: Millis) -> Vec<Resume> {
        let (line, log_time) = self.admitted.at(t);
        vec![Resume {
            source: self.name.clone(),
            partition: 0,
            next: line + 1,
            log_time,
        }]
    }

    fn durable(&mut self, t: Millis) {
        self.admitted.durable(t);
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
            (0, 0),
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
    fn resumes_after_the_lines_a_checkpoint_covers_with_their_log_time() {
        let ev = |ts: u64| {
            format!(
                r#"{{"event_id":"e{ts}","type":"sold","sku":"A","ts":{ts},"location":"L","qty":1}}"#
            )
        };
        let text = format!("{}\n{}\n{{\"ts\":99}}\n{}\n", ev(5), ev(3), ev(9));
        let open = |from| {
            JsonLinesSource::from_reader(
                "t".into(),
                Box::new(std::io::Cursor::new(text.as_bytes().to_vec())),
                from,
            )
        };
        let all = read_all(&mut open((0, 0)));
        let times: Vec<(i64, Millis)> = all
            .iter()
            .map(|r| (r.position.offset, r.log_time))
            .collect();
        assert_eq!(
            times,
            vec![(1, 5), (2, 5), (3, 5), (4, 9)],
            "the latest valid ts so far"
        );
        let mut src = open((0, 0));
        let mut out = Vec::new();
        while out.len() < 2 {
            src.poll(10, 2 - out.len(), &mut out);
        }
        let at = src.positions_at(10);
        assert_eq!((at[0].next, at[0].log_time), (3, 5));
        let rest = read_all(&mut open((3, 5)));
        assert_eq!(rest.len(), 1);
        assert_eq!((rest[0].position.offset, rest[0].log_time), (4, 9));
    }

    #[test]
    fn an_endless_line_is_cut_and_the_next_one_read() {
        let mut text = vec![b'x'; 3 * MAX_RECORD_BYTES];
        text.extend_from_slice(b"\n{\"c\":3}\n");
        let mut src =
            JsonLinesSource::from_reader("t".into(), Box::new(std::io::Cursor::new(text)), (0, 0));
        let out = read_all(&mut src);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value.len(), MAX_RECORD_BYTES + 1);
        assert_eq!(
            (out[1].position.offset, out[1].value.as_slice()),
            (2, &b"{\"c\":3}"[..])
        );
    }
}
