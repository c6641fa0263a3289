//! Benchmarks of stockflow, each printed side by side with a plain baseline measured in the
//! same run. `engine-bench` measures the dataflow alone (no JSON, no HTTP) against a
//! single-thread `HashMap` fold that computes the same stock levels from the same events.

/// The same allocator as the stockflow binary, for every benchmark and its baselines.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub mod differential;
pub mod engine;
pub mod kafka;
pub mod load;
pub mod summary;

use hashbrown::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use stockflow_types::event::{Event, EventKind};

/// Starts a server process and waits for the address it serves on: stockflow's first
/// `curl -s http://ADDR/...` line, or a `listening on ADDR` line. Its standard output keeps
/// being drained; its logs are limited to stockflow's warnings (clients closing their
/// connections at the end of a run are not worth a line).
pub fn start_serving(mut cmd: Command) -> (Child, String) {
    let mut child = cmd
        .env("RUST_LOG", "stockflow=warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the server starts");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the server prints its address")
            .expect("utf-8");
        if let Some(rest) = line.trim().strip_prefix("curl -s http://") {
            break rest.split('/').next().expect("an address").to_string();
        }
        if let Some(rest) = line.trim().strip_prefix("listening on ") {
            break rest.to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

/// A checkpoint directory of its own for one run of the binary (`--set checkpoint.dir=...`):
/// a benchmark starts from an empty state, not from an earlier run's checkpoint.
pub fn fresh_checkpoint_dir() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static RUN: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "stockflow-bench-checkpoints-{}-{}",
        std::process::id(),
        RUN.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    format!("checkpoint.dir={}", dir.display())
}

/// A binary built beside the running one (`stockflow`, `handwritten`, ...).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .expect("own path")
        .with_file_name(name)
}

/// Reads this process's resident set size in bytes (Linux), or 0.
pub fn rss_bytes() -> u64 {
    rss_of(std::process::id())
}

/// Resident set size of process `pid` in bytes (Linux), or 0.
pub fn rss_of(pid: u32) -> u64 {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// The baseline: what a hand-written consumer keeps, stock per (sku, location), folded in
/// business-time order. A count overwrites and later movements at or before its `ts` are
/// ignored (the contract's rule, for a stream in time order); fulfilments look their
/// reservation up. No allocation among reservations, no expiry, no windows, no
/// de-duplication. Lookups borrow (`entry_ref`), so a hit allocates nothing.
#[derive(Default)]
pub struct HashMapFold {
    /// (on_hand, latest count's (ts, event_id)) per sku, then location.
    pub stock: HashMap<String, HashMap<String, Level>>,
    reservations: HashMap<String, (String, String, i64)>,
}

/// One (sku, location) of the fold.
#[derive(Default)]
pub struct Level {
    /// Units on hand.
    pub on_hand: i64,
    count: Option<(u64, String)>,
}

impl Level {
    fn movement(&mut self, ts: u64, qty: i64) {
        if self.count.as_ref().is_none_or(|(c, _)| ts > *c) {
            self.on_hand += qty;
        }
    }
}

impl HashMapFold {
    /// Applies one event.
    pub fn apply(&mut self, ev: &Event) {
        match &ev.kind {
            EventKind::Received { location, qty } | EventKind::Adjusted { location, qty } => {
                self.entry(&ev.sku, location).movement(ev.ts, *qty);
            }
            EventKind::Sold { location, qty } => {
                self.entry(&ev.sku, location).movement(ev.ts, -qty)
            }
            EventKind::Counted { location, qty } => {
                let level = self.entry(&ev.sku, location);
                if level
                    .count
                    .as_ref()
                    .is_none_or(|(ts, id)| (ev.ts, &ev.event_id) > (*ts, id))
                {
                    level.count = Some((ev.ts, ev.event_id.clone()));
                    level.on_hand = *qty;
                }
            }
            EventKind::Reserved {
                reservation_id,
                location,
                qty,
                ..
            } => {
                self.entry(&ev.sku, location);
                self.reservations.insert(
                    reservation_id.clone(),
                    (ev.sku.clone(), location.clone(), *qty),
                );
            }
            EventKind::Listed { .. } => {}
            EventKind::Released { reservation_id } => {
                self.reservations.remove(reservation_id);
            }
            EventKind::Fulfilled { reservation_id } => {
                if let Some((sku, location, qty)) = self.reservations.remove(reservation_id) {
                    self.entry(&sku, &location).movement(ev.ts, -qty);
                }
            }
        }
    }

    fn entry(&mut self, sku: &str, location: &str) -> &mut Level {
        self.stock
            .entry_ref(sku)
            .or_default()
            .entry_ref(location)
            .or_default()
    }

    /// Number of (sku, location) keys.
    pub fn keys(&self) -> usize {
        self.stock.values().map(HashMap::len).sum()
    }
}
