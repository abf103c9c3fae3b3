//! The agent's clocks, in one place: CLOCK_MONOTONIC, which the kernel stamps records with (`bpf_ktime_get_ns`),
//! and the offset that turns such a stamp into Unix time for events. Safe wrappers over `clock_gettime` (rustix).
use rustix::time::{clock_gettime, ClockId, Timespec};

fn ns(t: Timespec) -> i128 {
    i128::from(t.tv_sec) * 1_000_000_000 + i128::from(t.tv_nsec)
}

/// CLOCK_MONOTONIC now, in ns: the clock of the kernel's record timestamps.
pub fn monotonic_ns() -> u64 {
    ns(clock_gettime(ClockId::Monotonic)) as u64
}

/// Current `CLOCK_REALTIME - CLOCK_MONOTONIC` in ns: added to a record's monotonic timestamp it gives Unix time
/// (`flow::FlowConfig::mono_to_unix_offset_ns`).
pub fn mono_to_unix_offset_ns() -> i64 {
    let mono = ns(clock_gettime(ClockId::Monotonic));
    let real = ns(clock_gettime(ClockId::Realtime));
    (real - mono) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_turns_monotonic_into_unix_time() {
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_nanos() as i128;
        let derived = i128::from(monotonic_ns()) + i128::from(mono_to_unix_offset_ns());
        // Two clock reads apart: equal to well within a second (not a timing assertion: the clocks agree).
        assert!(
            (derived - unix_now).abs() < 1_000_000_000,
            "{derived} vs {unix_now}"
        );
        let a = monotonic_ns();
        assert!(monotonic_ns() >= a, "monotonic");
    }
}
