//! `forecast-bench`: replays a JSON-lines event file (the real M5 sales, written by
//! `benchmarks/forecast/m5.py prepare`) through the dataflow in-process, three times: without
//! forecasting (the baseline of the same run), with it, and with every forecast issued and
//! scored emitted as rows (as the ClickHouse sink receives them), which it keeps. Prints the
//! cost (events/s, the cost per row, keys, bytes per key) and writes the forecasts as CSV for
//! `m5.py score`, which scores them with M5's official scales and weights beside statsforecast's
//! models.
//!
//! `forecast-bench EVENTS.jsonl ROWS.csv [--workers N] [--model-file F] [--arms A:pooled:0.5,B:tsb:0.5]`

use std::cell::RefCell;
use std::io::{BufRead, Write};
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use stockflow_dataflow::forecast::model::{Model, ModelFile};
use stockflow_dataflow::forecast::{Arm, Experiment, ForecastConfig, ForecastRow};
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{Engine, EngineConfig, Record};
use stockflow_types::config::Settings;
use stockflow_types::event::{decode, Event};
use stockflow_types::rows::Change;
use stockflow_types::topology::sku_hash;

const DAY: u64 = 86_400_000;
/// Events per worker per pipeline tick.
const BATCH: usize = 2_000;

struct Args {
    events: String,
    rows: String,
    workers: usize,
    model_file: Option<String>,
    arms: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let mut a = Args {
        events: String::new(),
        rows: String::new(),
        workers: 2,
        model_file: None,
        arms: None,
    };
    let mut positional = Vec::new();
    while let Some(x) = it.next() {
        match x.as_str() {
            "--workers" => {
                a.workers = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .ok_or("--workers N")?
            }
            "--model-file" => a.model_file = Some(it.next().ok_or("--model-file F")?),
            "--arms" => a.arms = Some(it.next().ok_or("--arms NAME:MODEL:SHARE,…")?),
            _ => positional.push(x),
        }
    }
    if positional.len() != 2 {
        return Err("usage: forecast-bench EVENTS.jsonl ROWS.csv [--workers N] [--model-file F] [--arms A:pooled:0.5,B:tsb:0.5]".into());
    }
    a.rows = positional.pop().expect("two");
    a.events = positional.pop().expect("two");
    Ok(a)
}

fn experiment(arms: &str) -> Result<Experiment, String> {
    let arms = arms
        .split(',')
        .map(|a| {
            let p: Vec<&str> = a.split(':').collect();
            match p.as_slice() {
                [name, model, share] => Ok(Arm {
                    name: name.to_string(),
                    model: Model::parse(model).ok_or(format!("unknown model {model}"))?,
                    share: share.parse().map_err(|_| format!("bad share {share}"))?,
                }),
                _ => Err(format!("bad arm {a:?}: NAME:MODEL:SHARE")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok(Experiment {
        salt: "forecast-bench".into(),
        arms,
    })
}

/// One round of the replay: each worker's events, and the log time all of them have reached.
type Round = (Vec<Vec<Event>>, u64);

/// Replays `rounds` (every worker takes part in every round, so that their clocks and log
/// frontiers move together) and returns the seconds it took and every forecast row.
fn replay(
    cfg: &Arc<EngineConfig>,
    workers: usize,
    rounds: &[Round],
    end: u64,
) -> (f64, Vec<ForecastRow>, Arc<ViewStore>) {
    let store = Arc::new(ViewStore::new(workers, cfg.windows.clone(), cfg.top_k));
    let rounds = Arc::new(rounds.to_vec());
    let rows = Arc::new(Mutex::new(Vec::new()));
    let (c, s, r) = (Arc::clone(cfg), Arc::clone(&store), Arc::clone(&rows));
    let start = Instant::now();
    timely::execute(timely::Config::process(workers), move |worker| {
        let me = worker.index();
        // The forecast rows the ledger emits, as the ClickHouse sink would receive them.
        let kept = Rc::new(RefCell::new(Vec::new()));
        let sink = Rc::clone(&kept);
        let mut engine = Engine::build(worker, Arc::clone(&c), Arc::clone(&s), None, |x| {
            x.inspect(move |(c, _, d)| match c {
                Change::Forecast(r) if *d > 0 => sink.borrow_mut().push((**r).clone()),
                _ => {}
            })
        });
        let mut t = 1u64;
        engine.advance_to(t);
        let mut mine = Vec::new();
        for (shares, lt) in rounds.iter() {
            for ev in &shares[me] {
                engine.send(Record {
                    log_time: ev.ts,
                    event: ev.clone(),
                });
            }
            engine.advance_log(*lt);
            t += 1;
            engine.advance_to(t);
            while engine.pending(t.saturating_sub(20)) {
                worker.step();
            }
            mine.append(&mut kept.borrow_mut());
        }
        // Past the last day: every label final.
        engine.advance_log(end);
        t += 1;
        engine.advance_to(t);
        while engine.pending(t) {
            worker.step();
        }
        mine.append(&mut kept.borrow_mut());
        r.lock().unwrap().append(&mut mine);
        engine.shutdown(worker);
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|x| x.expect("worker ran"));
    let seconds = start.elapsed().as_secs_f64();
    let rows = std::mem::take(&mut *rows.lock().unwrap());
    (seconds, rows, store)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args()?;
    let file = std::fs::File::open(&a.events)?;
    let mut events = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        let line = line?;
        if !line.trim().is_empty() {
            events.push(decode(line.as_bytes()).map_err(|e| format!("{line}: {}", e.detail))?);
        }
    }
    events.sort_by_key(|e| e.ts);
    let n = events.len();
    let last = events.last().map_or(0, |e| e.ts);
    // Rounds of `BATCH × workers` events of the log, each worker taking the SKUs it reads.
    let mut rounds: Vec<Round> = Vec::new();
    for chunk in events.chunks(BATCH * a.workers) {
        let mut shares = vec![Vec::new(); a.workers];
        for e in chunk {
            shares[(sku_hash(&e.sku) % a.workers as u64) as usize].push(e.clone());
        }
        // Every later event is at or after the next one's log time.
        rounds.push((shares, chunk.last().map_or(0, |e| e.ts)));
    }
    let settings = Settings::default();
    let mut base = EngineConfig::from_settings(&settings)?;
    base.forecast = None;
    let base = Arc::new(base);
    let mut fc = ForecastConfig::from_settings(&settings)?.expect("on by default");
    fc.rows = Some(1.0); // every version
    if let Some(path) = &a.model_file {
        fc.model = toml::from_str::<ModelFile>(&std::fs::read_to_string(path)?)?;
        fc.model.validate()?;
    }
    if let Some(arms) = &a.arms {
        fc.experiment = experiment(arms)?;
    }
    // Forecasting alone (what serving costs), then with every forecast and its features
    // emitted as rows (what the ClickHouse sink's `all` adds before it writes anything).
    let quiet = Arc::new(ForecastConfig {
        rows: None,
        ..fc.clone()
    });
    let fc = Arc::new(fc);
    let engine =
        |f: &Arc<ForecastConfig>| -> Result<Arc<EngineConfig>, Box<dyn std::error::Error>> {
            let mut e = EngineConfig::from_settings(&settings)?;
            e.forecast = Some(Arc::clone(f));
            Ok(Arc::new(e))
        };
    let (quiet_cfg, with) = (engine(&quiet)?, engine(&fc)?);
    // Past the last day by the longest horizon and the windows' finality delay.
    let longest = *fc.horizons.iter().max().unwrap_or(&1) as u64;
    let end = (last / DAY + longest + 2) * DAY + fc.window_retention_ms;

    let (off_s, _, _) = replay(&base, a.workers, &rounds, end);
    let (quiet_s, _, _) = replay(&quiet_cfg, a.workers, &rounds, end);
    let (on_s, rows, store) = replay(&with, a.workers, &rounds, end);
    let (keys, pending, bytes) = store.forecast().sizes();
    println!("events {n}, workers {}", a.workers);
    println!(
        "replay without forecasting: {off_s:.2} s ({:.0} events/s); with: {quiet_s:.2} s ({:.0} events/s): {:+.1}%",
        n as f64 / off_s,
        n as f64 / quiet_s,
        (quiet_s / off_s - 1.0) * 100.0
    );
    println!(
        "with every forecast and its features emitted as rows: {on_s:.2} s, {:.2} µs per forecast row ({} rows)",
        (on_s - quiet_s) * 1e6 / rows.len().max(1) as f64,
        rows.len()
    );
    println!(
        "forecast keys {keys} (inputs pending {pending}), {:.0} B per key (counted), forecasts issued and scored: {} rows",
        bytes as f64 / keys.max(1) as f64,
        rows.len()
    );
    let mut out = std::io::BufWriter::new(std::fs::File::create(&a.rows)?);
    writeln!(out, "sku,location,model,arm,issued_day,buckets,mean,q50,q90,q95,q99,stockout,available,cold_start,actual,censored")?;
    for r in &rows {
        writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            r.sku,
            r.location,
            r.model.split(':').next().unwrap_or_default(),
            r.arm,
            r.issued_at / DAY,
            r.buckets,
            r.mean.0,
            r.q[0],
            r.q[1],
            r.q[2],
            r.q[3],
            r.stockout.0,
            r.available,
            u8::from(&*r.segment == "cold_start"),
            r.actual.map_or(String::new(), |v| v.to_string()),
            u8::from(r.censored),
        )?;
    }
    out.flush()?;
    Ok(())
}
