//! The dataflow driven in-process from pre-generated events: the engine-only runs of
//! `engine-bench` and the stockflow side of `pg-bench`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{Engine, EngineConfig, Record};
use stockflow_ingest::generator::Generator;
use stockflow_types::config::GeneratorConfig;
use stockflow_types::event::Event;

/// Events admitted per worker per millisecond of pipeline time: 1,000,000 events/s over two
/// workers.
pub const PER_MS: usize = 1_000;
/// Pipeline time of the first batch (epoch ms).
pub const BASE_MS: u64 = 1_800_000_000_000;

/// The pipeline tick of the run: events are admitted `PER_MS * tick` at a time.
#[derive(Clone, Copy)]
pub struct Pace {
    /// Milliseconds of pipeline time per batch.
    pub tick: u64,
}

impl Pace {
    /// Events per worker per tick.
    pub fn batch(self) -> usize {
        PER_MS * self.tick as usize
    }
    /// Business time of the `i`-th event of a worker.
    pub fn ts(self, i: usize) -> u64 {
        BASE_MS + (i / self.batch()) as u64 * self.tick
    }
}

/// The generator's valid events for `worker` of `peers`. Business time follows the pipeline
/// clock of the run: `PER_MS` events per millisecond per worker.
pub fn workload(
    cfg: &GeneratorConfig,
    events: usize,
    worker: usize,
    peers: usize,
    pace: Pace,
) -> Vec<Event> {
    let clock = Arc::new(AtomicU64::new(BASE_MS));
    let c = Arc::clone(&clock);
    let mut g = Generator::new(
        cfg,
        worker,
        peers,
        Arc::new(move || c.load(Ordering::Relaxed)),
    );
    (0..events)
        .map(|i| {
            clock.store(pace.ts(i), Ordering::Relaxed);
            g.next_event()
        })
        .collect()
}

/// What a run measured.
pub struct Run {
    /// Wall time of the run.
    pub seconds: f64,
    /// The views the run published.
    pub store: Arc<ViewStore>,
}

/// One worker's events.
pub type Input = Box<dyn Iterator<Item = Event> + Send>;

/// Runs the whole dataflow on one timely worker per input, `pace.batch()` events per tick,
/// until every event is absorbed.
pub fn run_engine(cfg: &Arc<EngineConfig>, per_worker: Vec<Input>, pace: Pace) -> Run {
    let workers = per_worker.len();
    let store = Arc::new(ViewStore::new(workers, cfg.windows.clone(), cfg.top_k));
    let inputs = Arc::new(Mutex::new(
        per_worker.into_iter().map(Some).collect::<Vec<_>>(),
    ));
    let start = Instant::now();
    let (c, s) = (Arc::clone(cfg), Arc::clone(&store));
    let config = if workers > 1 {
        timely::Config::process(workers)
    } else {
        timely::Config::thread()
    };
    timely::execute(config, move |worker| {
        let events = inputs.lock().unwrap()[worker.index()]
            .take()
            .expect("one share per worker");
        let mut engine = Engine::build(worker, Arc::clone(&c), Arc::clone(&s), None, |x| x);
        let mut t = BASE_MS;
        engine.advance_to(t);
        let mut events = events.peekable();
        // Log time as a producer's clock would stamp it: the business time, monotonic.
        let mut log_time = BASE_MS;
        while events.peek().is_some() {
            for ev in events.by_ref().take(pace.batch()) {
                log_time = log_time.max(ev.ts);
                engine.send(Record {
                    log_time,
                    event: ev,
                });
            }
            engine.advance_log(log_time);
            t += pace.tick;
            engine.advance_to(t);
            // Let the dataflow run at most 50 ticks behind the input.
            while engine.pending(t.saturating_sub(50)) {
                worker.step();
            }
            worker.step();
        }
        // Workers with fewer events keep the clock moving with the others.
        engine.advance_to(t + 1);
        while engine.pending(t + 1) {
            worker.step();
        }
        engine.shutdown(worker);
    })
    .expect("timely starts")
    .join()
    .into_iter()
    .for_each(|r| r.expect("worker ran"));
    Run {
        seconds: start.elapsed().as_secs_f64(),
        store,
    }
}

/// [`run_engine`] over pre-generated events, one vector per worker.
pub fn run_shares(cfg: &Arc<EngineConfig>, shares: Vec<Vec<Event>>, pace: Pace) -> Run {
    let inputs = shares
        .into_iter()
        .map(|s| Box::new(s.into_iter()) as Input)
        .collect();
    run_engine(cfg, inputs, pace)
}
