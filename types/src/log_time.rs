//! The rule that turns the timestamps of one partition's records into its **log time**: the
//! time every rule that rejects or forgets is decided by (docs/architecture.md, "Log time").
//! One function, shared by the Kafka source and the oracle tests' random logs.

use crate::Millis;

/// The log time of a partition after a record stamped `stamp`, from `current`: log time never
/// goes back (an older stamp takes `current`), and one record moves it at most `max_step`
/// ahead (a producer whose clock runs a year ahead moves its partition's log time by
/// `max_step`, not a year). The first record of a partition (`current` 0) sets it. Returns the
/// new log time and whether the stamp was cut short.
pub fn next_log_time(current: Millis, stamp: Millis, max_step: Millis) -> (Millis, bool) {
    let limit = current.saturating_add(max_step);
    if current == 0 || stamp <= limit {
        (current.max(stamp), false)
    } else {
        (limit, true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_record_moves_log_time_at_most_max_step() {
        assert_eq!(
            next_log_time(0, 5_000, 10),
            (5_000, false),
            "the first sets it"
        );
        assert_eq!(next_log_time(100, 50, 10), (100, false), "never back");
        assert_eq!(next_log_time(100, 110, 10), (110, false));
        assert_eq!(next_log_time(100, 111, 10), (110, true), "cut short");
        assert_eq!(next_log_time(100, u64::MAX, 10), (110, true));
        assert_eq!(next_log_time(u64::MAX - 1, u64::MAX, 10), (u64::MAX, false));
    }
}
