//! restart-bench: what a checkpoint costs and what it buys, in process (the broker is not what
//! is measured: tansu could not hold the history).
//!
//!   restart-bench [EVENTS] [SKUS]     default 10,000,000 events over SKUS × 20 locations
//!                                     (SKUS = 50,000: about a million live (sku, location) keys)
//!
//! 1. **History**: the generator's events (uniform SKUs) through the dataflow on 2 workers, log
//!    time = business time; this is also what a full replay costs.
//! 2. **Checkpoint** at the end of the history while a tail (the last 1% of the events) keeps
//!    arriving: time until every worker's part is serialized, the file's write time and size,
//!    bytes per live key; the longest worker step and the p99 of view lookups (a reader thread:
//!    stock and reservation lookups, as HTTP does them) while the part is written, beside the
//!    same figures just before it in the same run.
//! 3. **Restart to ready**: read the file, route it to 2 new workers, rebuild, read the tail
//!    until it is absorbed; beside a full replay of history and tail.
//! 4. **Memory of a replay** (child processes, peak RSS): history of half and all the events,
//!    with the default horizons (1 h) and with horizons of 20 ms of log time (and holds of
//!    20 ms, so that reservations end and can be forgotten), the history spanning 5 s of it.

use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use stockflow_benchmarks::engine::{workload, Pace, BASE_MS};
use stockflow_benchmarks::summary;
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{ledger, Engine, EngineConfig, Part, Record, WorkerRestore};
use stockflow_ingest::generator::{reservation_name, sku_name};
use stockflow_sinks::checkpoint::{self, Fingerprint, Header, Resume};
use stockflow_types::config::{GeneratorConfig, Settings, WindowSpec};
use stockflow_types::event::Event;

const WORKERS: usize = 2;
const PACE: Pace = Pace { tick: 1 };

fn config(short_horizons: bool) -> EngineConfig {
    let mut cfg = EngineConfig::from_settings(&Settings::default()).expect("defaults are valid");
    if short_horizons {
        // The history's log time spans events / 2,000 ms: these horizons are a small part of it.
        cfg.retention_ms = 20;
        cfg.window_retention_ms = 20;
        cfg.dedup_window_ms = 20;
        cfg.windows = vec![WindowSpec {
            name: "10ms".into(),
            size_ms: 10,
        }];
    }
    cfg
}

/// The workload; with `short_holds`, reservations expire after 20 ms of business time (the
/// history's log time spans events / 2,000 ms), so that ended ones can be forgotten.
fn shares(events: usize, skus: u64, short_holds: bool) -> Vec<Vec<Event>> {
    let default = GeneratorConfig::default();
    let gen = GeneratorConfig {
        skus,
        locations: 20,
        zipf: 0.0,
        rate: 0,
        hold: if short_holds {
            Duration::from_millis(20)
        } else {
            default.hold
        },
        ..default
    };
    (0..WORKERS)
        .map(|w| workload(&gen, events / WORKERS, w, WORKERS, PACE))
        .collect()
}

/// Per-step timings and lookup latencies, split by whether a checkpoint part was being written.
#[derive(Default)]
struct Observed {
    max_step: [Duration; 2],
    steps: [u64; 2],
    /// The longest checkpoint work in one activation of a ledger (LedgerStats).
    checkpoint_stall: Duration,
}

struct RunOutcome {
    seconds: f64,
    store: Arc<ViewStore>,
    parts: Vec<Part>,
    positions: Vec<Resume>,
    checkpoint_seconds: f64,
    observed: Observed,
    lookups: [Histogram<u64>; 2],
}

/// Runs `shares` (from `from[w]` on) through 2 workers. With `checkpoint_at`, worker 0 asks for
/// a checkpoint once every worker has fed that many of its events, and the rest keeps arriving
/// `tail_batch` events per tick.
#[allow(clippy::too_many_arguments)]
fn run(
    skus: u64,
    cfg: &Arc<EngineConfig>,
    shares: &Arc<Vec<Vec<Event>>>,
    from: [usize; WORKERS],
    restore: Option<Vec<WorkerRestore>>,
    checkpoint_at: Option<usize>,
    start: u64,
    tail_batch: usize,
) -> RunOutcome {
    let store = Arc::new(ViewStore::new(WORKERS, cfg.windows.clone(), cfg.top_k));
    let parts: Arc<Mutex<Vec<Option<(Part, Resume)>>>> = Arc::new(Mutex::new(vec![None, None]));
    let observed = Arc::new(Mutex::new(Observed::default()));
    let writing = Arc::new(AtomicBool::new(false));
    let requested = Arc::new(AtomicU64::new(0));
    let finished = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let restore = Arc::new(Mutex::new(
        restore.map(|r| r.into_iter().map(Some).collect::<Vec<_>>()),
    ));
    // The reader: lookups as HTTP does them, split by whether a part is being written.
    let reader = {
        let (store, writing, done) = (Arc::clone(&store), Arc::clone(&writing), Arc::clone(&done));
        std::thread::spawn(move || {
            let mut hist = [
                Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
                Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap(),
            ];
            let mut rng = rand::rngs::SmallRng::seed_from_u64(3);
            while !done.load(Ordering::Relaxed) {
                let sku = sku_name(rng.random_range(1..=skus.max(1)));
                let res =
                    reservation_name(rng.random_range(0..WORKERS), rng.random_range(1..100_000));
                let t0 = Instant::now();
                std::hint::black_box(store.stock(&sku));
                std::hint::black_box(store.reservation(&res));
                let ns = t0.elapsed().as_nanos() as u64;
                hist[usize::from(writing.load(Ordering::Relaxed))]
                    .record(ns.max(1))
                    .ok();
                std::thread::sleep(Duration::from_micros(50));
            }
            hist
        })
    };
    let started = Instant::now();
    let end_time = Arc::new(AtomicU64::new(0));
    // Workers that are done (fed everything and, with a checkpoint, handed over their part):
    // every worker keeps the clock moving until all are.
    let done_workers = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let dw = Arc::clone(&done_workers);
    let barrier = Arc::new(std::sync::Barrier::new(WORKERS));
    let (et, ba) = (Arc::clone(&end_time), Arc::clone(&barrier));
    let (c, s, sh, p, o, wr, rq, fi, rs) = (
        Arc::clone(cfg),
        Arc::clone(&store),
        Arc::clone(shares),
        Arc::clone(&parts),
        Arc::clone(&observed),
        Arc::clone(&writing),
        Arc::clone(&requested),
        Arc::clone(&finished),
        Arc::clone(&restore),
    );
    timely::execute(timely::Config::process(WORKERS), move |worker| {
        let me = worker.index();
        let mine = rs.lock().unwrap().as_mut().and_then(|r| r[me].take());
        let restore_run = mine.is_some();
        let mut engine = Engine::build(worker, Arc::clone(&c), Arc::clone(&s), mine, |x| x);
        let events = &sh[me];
        let mut t = start;
        engine.advance_to(t);
        let mut i = from[me];
        let mut log_time = events.get(i.saturating_sub(1)).map_or(BASE_MS, |e| e.ts);
        let mut my_part: Option<Part> = None;
        let mut asked = false;
        let mut counted = false;
        let mut local = Observed::default();
        let mut position_at: Option<(u64, Resume)> = None;
        // (pipeline time, events fed by the end of it, log time): where a checkpoint resumes.
        let mut fed: Vec<(u64, usize, u64)> = Vec::new();
        loop {
            // From the checkpoint on, the tail arrives `tail_batch` events per tick.
            let batch = if checkpoint_at.is_some_and(|at| i >= at) || (restore_run && i > from[me])
            {
                tail_batch
            } else {
                PACE.batch()
            };
            let end = (i + batch).min(events.len());
            for ev in &events[i..end] {
                log_time = log_time.max(ev.ts);
                engine.send(Record {
                    log_time,
                    event: ev.clone(),
                });
            }
            i = end;
            fed.push((t, i, log_time));
            engine.advance_log(log_time);
            if me == 0 && !asked && checkpoint_at.is_some_and(|at| i >= at) {
                engine.request_checkpoint();
                rq.store(started.elapsed().as_micros() as u64, Ordering::Release);
                asked = true;
            }
            t += PACE.tick;
            engine.advance_to(t);
            loop {
                let busy = engine.writing_checkpoint();
                wr.store(busy, Ordering::Relaxed);
                let s0 = Instant::now();
                worker.step();
                let took = s0.elapsed();
                let k = usize::from(busy);
                local.max_step[k] = local.max_step[k].max(took);
                local.steps[k] += 1;
                for at in engine.take_begun() {
                    let (next, lt) = fed
                        .iter()
                        .rev()
                        .find(|f| f.0 <= at)
                        .map_or((from[me], log_time), |f| (f.1, f.2));
                    position_at = Some((
                        at,
                        Resume {
                            source: "bench".into(),
                            partition: me as i32,
                            next: next as i64,
                            log_time: lt,
                        },
                    ));
                }
                if let Some(part) = engine.take_part() {
                    fi.fetch_max(started.elapsed().as_micros() as u64, Ordering::AcqRel);
                    my_part = Some(part);
                }
                // Once every worker is done, the others may already have stopped stepping:
                // waiting here for times they will not complete would never end.
                if !engine.pending(t.saturating_sub(50)) || dw.load(Ordering::Acquire) == WORKERS {
                    break;
                }
            }
            if !counted && i >= events.len() && (checkpoint_at.is_none() || my_part.is_some()) {
                dw.fetch_add(1, Ordering::AcqRel);
                counted = true;
            }
            if counted && dw.load(Ordering::Acquire) == WORKERS {
                break;
            }
        }
        // Every worker runs to the same last time before any stops.
        et.fetch_max(t + 1, Ordering::AcqRel);
        ba.wait();
        let last = et.load(Ordering::Acquire);
        engine.advance_to(last);
        while engine.pending(last) {
            worker.step();
        }
        ba.wait();
        if let (Some(part), Some((at, pos))) = (my_part, position_at) {
            assert_eq!(part.at, at);
            p.lock().unwrap()[me] = Some((part, pos));
        }
        let mut o = o.lock().unwrap();
        o.checkpoint_stall = o.checkpoint_stall.max(Duration::from_micros(
            engine.stats().checkpoint_stall_max_us,
        ));
        for k in 0..2 {
            o.max_step[k] = o.max_step[k].max(local.max_step[k]);
            o.steps[k] += local.steps[k];
        }
        engine.shutdown(worker);
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    let seconds = started.elapsed().as_secs_f64();
    done.store(true, Ordering::Relaxed);
    let lookups = reader.join().expect("reader");
    let (parts, positions) = parts.lock().unwrap().drain(..).flatten().unzip();
    let observed = std::mem::take(&mut *observed.lock().unwrap());
    RunOutcome {
        seconds,
        store,
        parts,
        positions,
        checkpoint_seconds: finished
            .load(Ordering::Acquire)
            .saturating_sub(requested.load(Ordering::Acquire)) as f64
            / 1e6,
        observed,
        lookups,
    }
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--restore") {
        // Profiling aid: restore a kept checkpoint (RESTART_BENCH_KEEP) and stop.
        let path = std::path::Path::new(&args[2]);
        let t0 = Instant::now();
        let loaded = checkpoint::read(path).expect("reads back");
        let restores = ledger::route(&loaded.parts(), WORKERS).expect("routes");
        println!("read and routed in {:.2} s", t0.elapsed().as_secs_f64());
        let cfg = Arc::new(config(false));
        let at = loaded.header.at;
        let store = Arc::new(ViewStore::new(WORKERS, cfg.windows.clone(), cfg.top_k));
        let (c, st) = (Arc::clone(&cfg), Arc::clone(&store));
        let restores = Arc::new(Mutex::new(
            restores.into_iter().map(Some).collect::<Vec<_>>(),
        ));
        let t1 = Instant::now();
        timely::execute(timely::Config::process(WORKERS), move |worker| {
            let mine = restores.lock().unwrap()[worker.index()].take();
            let mut engine = Engine::build(worker, Arc::clone(&c), Arc::clone(&st), mine, |x| x);
            engine.advance_log(at);
            engine.advance_to(at + 2);
            while engine.pending(at + 2) {
                worker.step();
            }
            engine.shutdown(worker);
        })
        .expect("timely starts")
        .join();
        let r = RunOutcome {
            seconds: t1.elapsed().as_secs_f64(),
            store,
            parts: Vec::new(),
            positions: Vec::new(),
            checkpoint_seconds: 0.0,
            observed: Observed::default(),
            lookups: [
                Histogram::<u64>::new(3).unwrap(),
                Histogram::<u64>::new(3).unwrap(),
            ],
        };
        println!(
            "rebuilt in {:.2} s: {} keys",
            r.seconds,
            r.store.location_count()
        );
        return;
    }
    if args.get(1).map(String::as_str) == Some("--memory") {
        // A child: replay EVENTS with short or default horizons, print the peak RSS.
        let events: usize = args[2].parse().expect("events");
        let skus: u64 = args[3].parse().expect("skus");
        let short = args[4] == "short";
        let cfg = Arc::new(config(short));
        let shares = Arc::new(shares(events, skus, short));
        let before = peak_rss_kib();
        let r = run(
            skus,
            &cfg,
            &shares,
            [0; WORKERS],
            None,
            None,
            BASE_MS,
            PACE.batch(),
        );
        println!(
            "{} {} {}",
            before,
            peak_rss_kib(),
            r.store.reservation_count()
        );
        return;
    }
    let events: usize = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000_000);
    let skus: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let cfg = Arc::new(config(false));
    println!("restart-bench: {events} events over {skus} SKUs × 20 locations (uniform), {WORKERS} workers");
    let t0 = Instant::now();
    let shares = Arc::new(shares(events, skus, false));
    println!("  generated in {:.1} s", t0.elapsed().as_secs_f64());
    let per_worker = shares[0].len();
    // The tail: the last 1% of every worker's events arrive while the checkpoint is written.
    let history = per_worker - per_worker / 100;

    // 1 + 2: history, then the checkpoint under continuing ingest.
    let first = run(
        skus,
        &cfg,
        &shares,
        [0; WORKERS],
        None,
        Some(history),
        BASE_MS,
        PACE.batch(),
    );
    let keys = first.store.location_count();
    let at = first.parts.first().map(|p| p.at).expect("a checkpoint");
    let dir = std::env::temp_dir().join(format!("restart-bench-{}", std::process::id()));
    let header = Header {
        at,
        written_at: 0,
        positions: first.positions.clone(),
        part_lengths: first.parts.iter().map(|p| p.len() as u64).collect(),
        fingerprint: Fingerprint {
            tick_ms: cfg.tick_ms,
            windows: cfg
                .windows
                .iter()
                .map(|w| (w.name.clone(), w.size_ms))
                .collect(),
            horizons: (
                cfg.retention_ms,
                cfg.window_retention_ms,
                cfg.dedup_window_ms,
            ),
        },
        sink: None,
    };
    let w0 = Instant::now();
    let bytes: Vec<&[u8]> = first
        .parts
        .iter()
        .flat_map(|p| p.chunks.iter().map(Vec::as_slice))
        .collect();
    let (path, size) = checkpoint::write_atomic(&dir, &header, &bytes).expect("written");
    let write_seconds = w0.elapsed().as_secs_f64();
    let history_seconds = first.seconds; // includes the tail and the checkpoint
    println!(
        "  history: {:.1} s ({:.0} events/s); {keys} live (sku, location) keys, {} reservations held",
        history_seconds,
        events as f64 / history_seconds,
        first.store.reservation_count()
    );
    println!(
        "  checkpoint: every part serialized {:.2} s after the request (while ingest goes on), file written in {:.2} s; {:.1} MiB = {:.0} bytes per live key",
        first.checkpoint_seconds,
        write_seconds,
        size as f64 / 1048576.0,
        size as f64 / keys.max(1) as f64
    );
    let p99 = |h: &Histogram<u64>| h.value_at_quantile(0.99) as f64 / 1000.0;
    let o = &first.observed;
    println!(
        "  checkpoint work in one activation of a ledger, at most: {:.1} ms (its slice plus what it copied out before changing it)",
        o.checkpoint_stall.as_secs_f64() * 1000.0
    );
    println!(
        "  while a part is written: longest worker step {:.1} ms ({} steps), lookup p99 {:.1} µs ({} lookups); otherwise: {:.1} ms, {:.1} µs",
        o.max_step[1].as_secs_f64() * 1000.0,
        o.steps[1],
        p99(&first.lookups[1]),
        first.lookups[1].len(),
        o.max_step[0].as_secs_f64() * 1000.0,
        p99(&first.lookups[0]),
    );

    // 3: restart to ready from the file, beside a full replay.
    let r0 = Instant::now();
    let loaded = checkpoint::read(&path).expect("reads back");
    let restores = ledger::route(&loaded.parts(), WORKERS).expect("routes");
    let load_seconds = r0.elapsed().as_secs_f64();
    let mut from = [0usize; WORKERS];
    for p in &loaded.header.positions {
        from[p.partition as usize] = p.next as usize;
    }
    let restarted = run(
        skus,
        &cfg,
        &shares,
        from,
        Some(restores),
        None,
        at + 1,
        PACE.batch(),
    );
    let restart_seconds = r0.elapsed().as_secs_f64();
    assert_eq!(
        restarted.store.location_count(),
        keys,
        "the restart holds every key"
    );
    let replay = run(
        skus,
        &cfg,
        &shares,
        [0; WORKERS],
        None,
        None,
        BASE_MS,
        PACE.batch(),
    );
    // The same checkpoint under a steady load instead of a catch-up: the tail at 5 events per
    // tick per worker (10,000 events/s), from the restored state.
    let loaded = checkpoint::read(&path).expect("reads back");
    let restores = ledger::route(&loaded.parts(), WORKERS).expect("routes");
    let steady = run(
        skus,
        &cfg,
        &shares,
        from,
        Some(restores),
        Some(0),
        at + 1,
        5,
    );
    println!(
        "  under a steady 10,000 events/s: checkpoint work in one activation at most {:.2} ms; longest worker step {:.2} ms while a part is written, {:.2} ms otherwise; lookup p99 {:.1} µs vs {:.1} µs",
        steady.observed.checkpoint_stall.as_secs_f64() * 1000.0,
        steady.observed.max_step[1].as_secs_f64() * 1000.0,
        steady.observed.max_step[0].as_secs_f64() * 1000.0,
        steady.lookups[1].value_at_quantile(0.99) as f64 / 1000.0,
        steady.lookups[0].value_at_quantile(0.99) as f64 / 1000.0,
    );
    println!(
        "  restart to ready from the checkpoint: {:.2} s (reading and routing the file {:.2} s, rebuilding and the tail {:.2} s); full replay: {:.2} s",
        restart_seconds,
        load_seconds,
        restarted.seconds,
        replay.seconds
    );
    if std::env::var_os("RESTART_BENCH_KEEP").is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    } else {
        println!("  kept {}", path.display());
    }

    // 4: memory of a replay by history length and horizon, in child processes.
    let me = std::env::current_exe().expect("own path");
    let child = |events: usize, horizons: &str| -> (u64, u64) {
        let out = std::process::Command::new(&me)
            .args(["--memory", &events.to_string(), &skus.to_string(), horizons])
            .output()
            .expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let mut it = text
            .split_whitespace()
            .map(|v| v.parse::<u64>().unwrap_or(0));
        let before = it.next().unwrap_or(0);
        (before, it.next().unwrap_or(0))
    };
    let mut memory = Vec::new();
    for horizons in ["default", "short"] {
        for n in [events / 2, events] {
            let (before, peak) = child(n, horizons);
            println!(
                "  replay of {n} events with {horizons} horizons: peak RSS {:.0} MiB ({:.0} MiB of it the pre-generated events)",
                peak as f64 / 1024.0,
                before as f64 / 1024.0
            );
            memory.push(peak.saturating_sub(before));
        }
    }

    summary::record(
        &format!(
            "restart to ready, {} M events, {:.1} M keys: checkpoint vs full replay",
            events / 1_000_000,
            keys as f64 / 1e6
        ),
        &format!("{restart_seconds:.1} s"),
        &format!("{:.1} s", replay.seconds),
        restart_seconds / replay.seconds,
        "≤ 10 s from a checkpoint",
    );
    summary::record(
        "checkpoint size per live key; write time",
        &format!(
            "{:.0} B/key; {:.2} s",
            size as f64 / keys.max(1) as f64,
            write_seconds
        ),
        "-",
        0.0,
        "-",
    );
    summary::record(
        "checkpoint work in one worker step, at most: steady 10k events/s vs catching up (as fast as it goes)",
        &format!(
            "{:.2} ms",
            steady.observed.checkpoint_stall.as_secs_f64() * 1000.0
        ),
        &format!("{:.1} ms", o.checkpoint_stall.as_secs_f64() * 1000.0),
        steady.observed.checkpoint_stall.as_secs_f64() / o.checkpoint_stall.as_secs_f64().max(1e-9),
        "no stall over 50 ms",
    );
    summary::record(
        "view lookup p99 while a checkpoint is written, steady load",
        &format!(
            "{:.1} µs",
            steady.lookups[1].value_at_quantile(0.99) as f64 / 1000.0
        ),
        &format!(
            "{:.1} µs",
            steady.lookups[0].value_at_quantile(0.99) as f64 / 1000.0
        ),
        steady.lookups[1].value_at_quantile(0.99) as f64
            / (steady.lookups[0].value_at_quantile(0.99) as f64).max(1.0),
        "≤ 2 ms",
    );
    summary::record(
        "longest worker step while a checkpoint is written vs before (catch-up)",
        &format!("{:.1} ms", o.max_step[1].as_secs_f64() * 1000.0),
        &format!("{:.1} ms", o.max_step[0].as_secs_f64() * 1000.0),
        o.max_step[1].as_secs_f64() / o.max_step[0].as_secs_f64().max(1e-9),
        "-",
    );
    summary::record(
        "view lookup p99 while a checkpoint is written vs before (catch-up)",
        &format!("{:.1} µs", p99(&first.lookups[1])),
        &format!("{:.1} µs", p99(&first.lookups[0])),
        p99(&first.lookups[1]) / p99(&first.lookups[0]).max(1e-9),
        "≤ 2 ms",
    );
    summary::record(
        "replay peak memory growth, history ×2: 20 ms horizons vs 1 h",
        &format!("{:.2}x", memory[3] as f64 / memory[2].max(1) as f64),
        &format!("{:.2}x", memory[1] as f64 / memory[0].max(1) as f64),
        (memory[3] as f64 / memory[2].max(1) as f64) / (memory[1] as f64 / memory[0].max(1) as f64),
        "bounded by retention",
    );
}
