//! Which pipeline time each Kafka offset was admitted at, for read-your-writes: a lookup that
//! names the offsets of its writes (`?min_offsets=`) waits until the answer's `as_of` is at or
//! past the time they were admitted at. Written by the workers that read the partitions (once
//! per poll and partition, not per record), read by HTTP only when a request asks.

use crate::Millis;
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

/// What this process knows of one partition's offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The offset was admitted at or before this pipeline time.
    At(Millis),
    /// This process reads the partition, but has not admitted the offset yet.
    NotYet,
}

#[derive(Debug, Default)]
struct Partition {
    /// `(t, next)`: every offset below `next` was admitted at or before `t`; oldest first,
    /// both increasing.
    recent: VecDeque<(Millis, i64)>,
    /// Every offset below `.1` was admitted at or before `.0`, which lookups have already seen
    /// completed (the entries folded out of `recent`).
    settled: (Millis, i64),
}

/// The admission times of the partitions this process reads, by topic and partition.
#[derive(Debug, Default)]
pub struct Admissions {
    parts: Mutex<HashMap<String, HashMap<i32, Partition>>>,
}

impl Admissions {
    /// Every offset of `topic`/`partition` below `next` is admitted at or before `t`. Entries
    /// at or before `completed` (the views' `as_of`) are folded into one.
    pub fn note(&self, topic: &str, partition: i32, next: i64, t: Millis, completed: Millis) {
        let mut topics = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if !topics.contains_key(topic) {
            topics.insert(topic.to_owned(), HashMap::new());
        }
        let p = topics
            .get_mut(topic)
            .expect("inserted")
            .entry(partition)
            .or_default();
        match p.recent.back_mut() {
            Some(last) if last.0 == t => last.1 = last.1.max(next),
            Some(last) if last.1 >= next => {}
            _ => p.recent.push_back((t, next)),
        }
        while p.recent.len() > 1 && p.recent.front().is_some_and(|f| f.0 <= completed) {
            let (t, next) = p.recent.pop_front().expect("non-empty");
            p.settled = (p.settled.0.max(t), p.settled.1.max(next));
        }
    }

    /// When `offset` of `topic`/`partition` was admitted, if this process has admitted it.
    pub fn admitted(&self, topic: &str, partition: i32, offset: i64) -> Admission {
        let topics = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = topics.get(topic).and_then(|t| t.get(&partition)) else {
            return Admission::NotYet;
        };
        if offset < p.settled.1 {
            return Admission::At(p.settled.0);
        }
        p.recent
            .iter()
            .find(|(_, next)| offset < *next)
            .map_or(Admission::NotYet, |(t, _)| Admission::At(*t))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_offset_maps_to_the_first_time_that_admitted_it() {
        let a = Admissions::default();
        assert_eq!(a.admitted("t", 0, 0), Admission::NotYet);
        a.note("t", 0, 5, 10, 0);
        a.note("t", 0, 9, 20, 0);
        a.note("t", 0, 9, 30, 0); // nothing new
        assert_eq!(a.admitted("t", 0, 4), Admission::At(10));
        assert_eq!(a.admitted("t", 0, 5), Admission::At(20));
        assert_eq!(a.admitted("t", 0, 9), Admission::NotYet);
        assert_eq!(a.admitted("t", 1, 0), Admission::NotYet);
        // Once 20 is completed, the entries up to it fold: the answer may be later than the
        // exact time, but it is completed already, so a wait for it ends at once.
        a.note("t", 0, 12, 40, 25);
        assert_eq!(a.admitted("t", 0, 3), Admission::At(20));
        assert_eq!(a.admitted("t", 0, 11), Admission::At(40));
    }
}
