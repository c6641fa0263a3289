//! Where a source resumes after a restart: the positions a checkpoint covers.

use crate::Millis;
use serde::{Deserialize, Serialize};

/// One partition of one source (a Kafka topic's partition, a file): the next record to read
/// and the log time of the record before it (log time is monotonic per partition, so it
/// continues from there).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Resume {
    /// The topic, or the file's name.
    pub source: String,
    /// The partition (0 for a file).
    pub partition: i32,
    /// The offset of the next record (a file's next line number).
    pub next: i64,
    /// The log time of the last record before `next` (0 if none).
    pub log_time: Millis,
}

/// The resume position of `source`/`partition` in `positions`, if there is one.
pub fn find<'a>(positions: &'a [Resume], source: &str, partition: i32) -> Option<&'a Resume> {
    positions
        .iter()
        .find(|r| r.source == source && r.partition == partition)
}
