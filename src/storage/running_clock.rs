//! A clock kept in a counter entry (the worker's busy time): while it runs, the
//! entry's timestamp is negative. An entry with value `v` and timestamp `t < 0`
//! is a clock settled at `v` that has run since `-t` (monotonic seconds, minus
//! what it had settled): at `now` it is worth `max(v, now + t)`. Readers in
//! other processes resolve it without the writer's help, and never see less
//! than the truth while the writer updates value and timestamp one at a time.

/// The timestamp of a stopped clock (and of every other counter).
pub const STOPPED: f64 = 0.0;

/// The timestamp that starts a clock worth `settled` seconds running at `now`.
#[inline]
pub fn encode(settled: f64, now: f64) -> f64 {
    settled - now
}

/// Whether `timestamp` marks a running clock.
#[inline]
pub fn is_running(timestamp: f64) -> bool {
    timestamp < 0.0
}

/// What an entry of `value` and `timestamp` is worth at `now`: a running
/// clock's time so far, anything else its value.
#[inline]
pub fn resolve(value: f64, timestamp: f64, now: f64) -> f64 {
    if is_running(timestamp) {
        value.max(now + timestamp)
    } else {
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_clock_is_worth_its_time_so_far_and_never_less_than_settled() {
        let ts = encode(5.0, 100.0);
        assert!(is_running(ts));
        assert_eq!(resolve(5.0, ts, 103.0), 8.0);
        // A reader that sees the new value before the new timestamp.
        assert_eq!(resolve(9.0, ts, 103.0), 9.0);
        assert_eq!(resolve(5.0, STOPPED, 103.0), 5.0);
        assert!(!is_running(STOPPED));
    }
}
