//! Process settings the binaries apply before anything else.

/// mimalloc's option that says how long freed memory stays with the process before it is
/// returned to the kernel (ms; -1 = never).
const PURGE_DELAY: &str = "MIMALLOC_PURGE_DELAY";

/// Keeps memory the allocator frees for the process to reuse, instead of returning it to the
/// kernel after mimalloc's default 10 ms: the workers free and allocate batches, rows and
/// growing tables all the time, and the kernel zeroing the pages that came back cost the engine
/// 10–20% of its throughput (engine-bench prints both; docs/benchmarks.md). mimalloc reads its options when the process loads, so this re-executes
/// the program once with `MIMALLOC_PURGE_DELAY=-1` (same pid, same arguments) unless the
/// variable is set already: set it yourself to choose otherwise. Memory that state once
/// needed is then kept: resident memory is the peak, not the current need.
#[cfg(unix)]
pub fn keep_freed_memory() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os(PURGE_DELAY).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    let err = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(PURGE_DELAY, "-1")
        .exec();
    eprintln!("warning: could not re-execute with {PURGE_DELAY}=-1 ({err}); continuing without");
}

/// Elsewhere: nothing to do.
#[cfg(not(unix))]
pub fn keep_freed_memory() {}
