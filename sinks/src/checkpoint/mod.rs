//! Where the pipeline's state becomes a file, and comes back at the next start.
//!
//! Every `checkpoint.interval` (and at a clean stop) worker 0 asks every worker's ledger for its
//! state as of one completed pipeline time `T`; each worker hands its part, with the positions
//! its sources had reached at `T` ([`Resume`]), to the [`CheckpointWriter`]. Once every part of
//! `T` is in and everything admitted before `T` is durable (the ClickHouse sink and the
//! dead-letter topic hold it: a restart from `T` must not depend on what the sinks had not yet
//! written), the writer publishes one file:
//!
//! ```text
//! magic "SFCKPT\r\n" | format version (u32 LE) | header length (u32 LE) | header (bincode)
//! | the workers' parts, one after another | xxh3-128 of everything before (16 bytes LE)
//! ```
//!
//! written as a temporary file, fsynced, renamed into place, its directory fsynced; the last
//! `checkpoint.keep` are kept. A start lists the files newest first and takes the first whose
//! magic, version and checksum hold ([`read`]); a damaged one is skipped with a warning naming
//! it. A failed write (full or read-only directory) is retried at the next interval, counted in
//! `stockflow_checkpoint_failures_total` and reported by `/readyz`; the pipeline keeps serving.

mod file;
mod writer;

pub use file::{
    file_name, list, read, write_atomic, CheckpointError, Fingerprint, Header, Loaded,
    FORMAT_VERSION,
};
pub use writer::{CheckpointWriter, PartSender, WorkerPart};

pub use stockflow_types::resume::Resume;
