//! The checkpoint file: format, atomic write, listing and verified reading.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use stockflow_types::resume::Resume;
use stockflow_types::Millis;
use thiserror::Error;
use xxhash_rust::xxh3::Xxh3;

/// The version of the file format this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
const MAGIC: &[u8; 8] = b"SFCKPT\r\n";
const SUFFIX: &str = ".sfc";

/// What must not change between the run that wrote a checkpoint and the one that restores it:
/// the windows (their state is kept by size), the tick, and the horizons (de-duplication
/// generations are numbered by `dedup_window`; a longer `retention` would admit counts older
/// than movements already folded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    /// The pipeline tick, ms.
    pub tick_ms: u64,
    /// The configured windows: (name, size ms).
    pub windows: Vec<(String, u64)>,
    /// (retention, window_retention, dedup_window), ms.
    pub horizons: (u64, u64, u64),
}

/// What a checkpoint is.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// The pipeline time the state is as of.
    pub at: Millis,
    /// The wall clock when it was written, epoch ms.
    pub written_at: Millis,
    /// Where every partition resumes.
    pub positions: Vec<Resume>,
    /// The length of each worker's part, in order.
    pub part_lengths: Vec<u64>,
    /// The configuration it needs.
    pub fingerprint: Fingerprint,
    /// The ClickHouse database that held everything before `at` when it was written
    /// (`url/database`), if the sink was on: a restart with another one writes the whole state.
    pub sink: Option<String>,
}

/// A checkpoint read back.
#[derive(Debug)]
pub struct Loaded {
    /// Its file.
    pub path: PathBuf,
    /// Its header.
    pub header: Header,
    /// The file's bytes.
    bytes: Vec<u8>,
    /// Where each worker's part is in `bytes`.
    ranges: Vec<std::ops::Range<usize>>,
}

impl Loaded {
    /// The workers' parts (slices of the file, not copies).
    pub fn parts(&self) -> Vec<&[u8]> {
        self.ranges.iter().map(|r| &self.bytes[r.clone()]).collect()
    }
}

/// Writing or reading a checkpoint failed.
#[derive(Debug, Error)]
pub enum CheckpointError {
    /// The file system refused.
    #[error("{what} {path:?}")]
    Io {
        /// What was being attempted.
        what: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a whole checkpoint of this format.
    #[error("checkpoint {path:?} is damaged: {problem}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The file was written by a build with another format.
    #[error("checkpoint {path:?} has format version {found}; this build reads {FORMAT_VERSION}")]
    Version {
        /// The file.
        path: PathBuf,
        /// Its version.
        found: u32,
    },
}

fn io<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> CheckpointError + 'a {
    move |source| CheckpointError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// The file name of the checkpoint as of `at` (names sort by time).
pub fn file_name(at: Millis) -> String {
    format!("checkpoint-{at:020}{SUFFIX}")
}

/// The checkpoints in `dir`, newest first: (time, path). A missing directory has none.
pub fn list(dir: &Path) -> Result<Vec<(Millis, PathBuf)>, CheckpointError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("listing the checkpoint directory", dir)(e)),
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let at = name
            .strip_prefix("checkpoint-")
            .and_then(|n| n.strip_suffix(SUFFIX))
            .and_then(|n| n.parse::<Millis>().ok());
        if let Some(at) = at {
            out.push((at, entry.path()));
        }
    }
    out.sort_by(|a, b| b.cmp(a));
    Ok(out)
}

/// Writes a checkpoint of `header` and `parts` (the workers' parts one after another, each in
/// any number of pieces: `header.part_lengths` says where each ends) into `dir` atomically: a
/// temporary file, fsync, rename, fsync of the directory. Returns the file and its size.
pub fn write_atomic(
    dir: &Path,
    header: &Header,
    parts: &[&[u8]],
) -> Result<(PathBuf, u64), CheckpointError> {
    std::fs::create_dir_all(dir).map_err(io("creating the checkpoint directory", dir))?;
    let path = dir.join(file_name(header.at));
    let tmp = dir.join(format!(".{}.tmp", file_name(header.at)));
    let result = (|| {
        let file = File::create(&tmp).map_err(io("creating", &tmp))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let mut hash = Xxh3::new();
        let mut size = 0u64;
        let header_bytes = bincode::serialize(header).expect("a header serializes");
        let mut put = |w: &mut std::io::BufWriter<File>, bytes: &[u8]| {
            hash.update(bytes);
            size += bytes.len() as u64;
            w.write_all(bytes).map_err(io("writing", &tmp))
        };
        put(&mut w, MAGIC)?;
        put(&mut w, &FORMAT_VERSION.to_le_bytes())?;
        put(&mut w, &(header_bytes.len() as u32).to_le_bytes())?;
        put(&mut w, &header_bytes)?;
        for part in parts {
            put(&mut w, part)?;
        }
        let sum = hash.digest128().to_le_bytes();
        w.write_all(&sum).map_err(io("writing", &tmp))?;
        let file = w
            .into_inner()
            .map_err(|e| io("writing", &tmp)(e.into_error()))?;
        file.sync_all().map_err(io("syncing", &tmp))?;
        Ok::<u64, CheckpointError>(size + 16)
    })();
    let size = match result {
        Ok(size) => size,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    if let Err(e) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(io("renaming the checkpoint into place", &path)(e));
    }
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("syncing the checkpoint directory", dir))?;
    Ok((path, size))
}

/// Reads a checkpoint, verifying its magic, version, checksum and layout.
pub fn read(path: &Path) -> Result<Loaded, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io("reading", path))?;
    let corrupt = |problem: &str| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    };
    if bytes.len() < MAGIC.len() + 8 + 16 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(corrupt("not a checkpoint file (too short or no magic)"));
    }
    let (body, sum) = bytes.split_at(bytes.len() - 16);
    if xxhash_rust::xxh3::xxh3_128(body).to_le_bytes() != sum {
        return Err(corrupt(
            "the checksum does not match (truncated or changed)",
        ));
    }
    let word = |at: usize| u32::from_le_bytes(body[at..at + 4].try_into().expect("4 bytes"));
    let version = word(8);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::Version {
            path: path.to_path_buf(),
            found: version,
        });
    }
    let header_len = word(12) as usize;
    let start = 16usize;
    let header_bytes = body
        .get(start..start + header_len)
        .ok_or_else(|| corrupt("the header is cut short"))?;
    let header: Header =
        bincode::deserialize(header_bytes).map_err(|e| corrupt(&format!("the header: {e}")))?;
    let mut at = start + header_len;
    let mut ranges = Vec::with_capacity(header.part_lengths.len());
    for len in &header.part_lengths {
        let end = at
            .checked_add(*len as usize)
            .filter(|end| *end <= body.len())
            .ok_or_else(|| corrupt("a part is cut short"))?;
        ranges.push(at..end);
        at = end;
    }
    if at != body.len() {
        return Err(corrupt("bytes after the last part"));
    }
    Ok(Loaded {
        path: path.to_path_buf(),
        header,
        bytes,
        ranges,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(at: Millis) -> Header {
        Header {
            at,
            written_at: 1,
            positions: vec![Resume {
                source: "inventory".into(),
                partition: 3,
                next: 42,
                log_time: 7,
            }],
            part_lengths: vec![3, 0, 2],
            fingerprint: Fingerprint {
                tick_ms: 1,
                windows: vec![("1m".into(), 60_000)],
                horizons: (3_600_000, 7_200_000, 3_600_000),
            },
            sink: None,
        }
    }

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("sf-ckpt-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn round_trip_and_listing() {
        let d = dir("rt");
        let (path, size) = write_atomic(&d, &header(5), &[b"abc", b"", b"de"]).unwrap();
        write_atomic(&d, &header(12), &[b"abc", b"", b"de"]).unwrap();
        assert_eq!(size, std::fs::metadata(&path).unwrap().len());
        let listed: Vec<Millis> = list(&d).unwrap().into_iter().map(|(at, _)| at).collect();
        assert_eq!(listed, vec![12, 5]);
        let l = read(&path).unwrap();
        assert_eq!(l.header, header(5));
        assert_eq!(l.parts(), vec![&b"abc"[..], &b""[..], &b"de"[..]]);
        assert!(std::fs::read_dir(&d).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .ends_with(".tmp")));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn truncated_or_flipped_files_are_refused() {
        let d = dir("bad");
        let (path, _) = write_atomic(&d, &header(5), &[b"abc", b"", b"de"]).unwrap();
        let good = std::fs::read(&path).unwrap();
        for cut in [0, 5, good.len() / 2, good.len() - 1] {
            std::fs::write(&path, &good[..cut]).unwrap();
            assert!(
                matches!(read(&path), Err(CheckpointError::Corrupt { .. })),
                "cut at {cut}"
            );
        }
        for flip in [0, 9, 20, good.len() - 3] {
            let mut bad = good.clone();
            bad[flip] ^= 0x10;
            std::fs::write(&path, &bad).unwrap();
            assert!(read(&path).is_err(), "flipped byte {flip}");
        }
        let _ = std::fs::remove_dir_all(&d);
    }
}
