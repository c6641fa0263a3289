//! A stockflow pipeline as a library: [`Pipeline::start`] restores the newest checkpoint,
//! opens the sources, starts the timely workers (each running the ingest loop of
//! [`pipeline`]: poll → admit → step → durable frontier → offsets → checkpoint parts), the
//! ClickHouse sink, the checkpoint writer and the dead-letter output, and binds HTTP;
//! [`Pipeline::serve_until`] answers lookups until a future resolves, then stops everything in
//! order (workers drain and commit, the last checkpoint, the sink's last batch). The binary
//! (`stockflow run`) adds logging, the metrics recorder and the signals; a test can run a
//! pipeline in-process (`runtime/tests/in_process.rs`).

pub mod pipeline;
pub mod restore;

use anyhow::{Context, Result};
use metrics_exporter_prometheus::PrometheusHandle;
use pipeline::{run_worker, WorkerIo, WorkerOptions};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use stockflow_dataflow::clock::{Clock, SystemClock};
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::{Engine, EngineConfig, WorkerRestore};
use stockflow_ingest::generator::Generator;
use stockflow_ingest::jsonl::JsonLinesSource;
use stockflow_ingest::kafka::{
    check_brokers, ensure_topics, KafkaSource, PartitionWatch, SourceOptions,
};
use stockflow_ingest::{Rules, Source};
use stockflow_serve::ServeState;
use stockflow_sinks::checkpoint::{CheckpointWriter, Resume};
use stockflow_sinks::clickhouse::{self, ClickHouseSink};
use stockflow_sinks::dead_letter::{DeadLetterFile, DeadLetters};
use stockflow_sinks::kafka::KafkaDeadLetters;
use stockflow_types::admissions::Admissions;
use stockflow_types::config::{Settings, SourceKind};
use stockflow_types::progress::{Progress, NOT_YET};

/// A running pipeline: its workers, sinks and bound HTTP listener.
pub struct Pipeline {
    settings: Settings,
    runtime: tokio::runtime::Runtime,
    listener: Option<tokio::net::TcpListener>,
    state: Arc<ServeState>,
    shutdown: Arc<AtomicBool>,
    /// The timely workers, until stopped (dropping them joins them).
    guards: Option<timely::communication::WorkerGuards<()>>,
    writer: Option<CheckpointWriter>,
    sink: Option<ClickHouseSink>,
    dead_letters: Option<Arc<dyn DeadLetters>>,
    dead_letter_file: Option<DeadLetterFile>,
}

impl Pipeline {
    /// Starts everything `settings` describe and binds `http.listen`; `metrics` renders
    /// `/metrics` (the process's recorder, installed by the caller).
    pub fn start(settings: &Settings, metrics: Option<PrometheusHandle>) -> Result<Pipeline> {
        let settings = settings.clone();
        let cfg = Arc::new(EngineConfig::from_settings(&settings)?);
        let workers = settings.pipeline.workers;
        let topology = Topology::of(&settings);
        let store = Arc::new(ViewStore::new(workers, cfg.windows.clone(), cfg.top_k));
        if let Some(f) = &cfg.forecast {
            store.forecast().configure(Arc::clone(f)); // before the first request is answered
        }
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let shutdown = Arc::new(AtomicBool::new(false));
        let kafka = settings.source.kind == SourceKind::Kafka;
        let progress = Arc::new(Progress::new(workers, kafka, settings.clickhouse.enabled));
        stop_on_timely_panic(Arc::clone(&progress));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(settings.http.threads)
            .thread_name("http")
            .enable_all()
            .build()
            .context("starting the HTTP runtime")?;
        // Bound before anything else starts: a port in use is an error at once.
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(&settings.http.listen))
            .with_context(|| format!("listening on {}", settings.http.listen))?;

        // The newest valid checkpoint, routed to this run's workers.
        let restored = if settings.checkpoint.enabled {
            restore::load(&settings, &cfg, topology)?
        } else {
            None
        };
        let resume: Vec<Resume> = restored
            .as_ref()
            .map(|r| r.positions.clone())
            .unwrap_or_default();
        let restored_at = restored.as_ref().map(|r| r.at);
        if let Some(at) = restored_at {
            progress.set_checkpoint_written(at); // every process holds the one it restored
        }
        let sink_identity = restore::sink_identity(&settings);
        let restored_for_sink = restored.as_ref().map(|r| clickhouse::Restored {
            at: r.at,
            sink_changed: r.sink != sink_identity,
            owns: (topology.processes > 1).then(|| {
                let owns: clickhouse::Owns = Arc::new(move |sku: &str| topology.owns(sku));
                owns
            }),
        });
        let worker_restores: Arc<Mutex<Vec<Option<WorkerRestore>>>> =
            Arc::new(Mutex::new(match restored {
                Some(r) => r.workers.into_iter().map(Some).collect(),
                None => (0..workers).map(|_| None).collect(),
            }));

        // Rejected records go to the dead-letter topic with a Kafka source, else to a file.
        let (dead_letters, dead_letter_file): (Arc<dyn DeadLetters>, Option<DeadLetterFile>) =
            if kafka {
                check_brokers(&settings.kafka)?;
                runtime.block_on(ensure_topics(&settings.kafka))?;
                let producer = KafkaDeadLetters::new(&settings.kafka)
                    .context("creating the dead-letter producer")?;
                (Arc::new(producer), None)
            } else {
                let file = DeadLetterFile::create(&settings.dead_letter.path)?;
                (Arc::new(file.sender()), Some(file))
            };
        let sources = Arc::new(Mutex::new(open_sources(
            &settings, topology, &clock, &progress, &resume,
        )?));
        // What the restored checkpoint covers is admitted as of its time: a read-your-writes wait
        // for an offset before it ends at once, whether or not the partition sees new records.
        let admissions = Arc::new(Admissions::default());
        if let Some(at) = restored_at {
            for r in &resume {
                admissions.note(&r.source, r.partition, r.next, at, at);
            }
        }
        let sink = settings
            .clickhouse
            .enabled
            .then(|| {
                ClickHouseSink::start(
                    runtime.handle(),
                    &settings.clickhouse,
                    &cfg.windows,
                    workers,
                    Arc::clone(&progress),
                    restored_for_sink,
                    &settings.kafka.group_id,
                )
            })
            .transpose()?;
        let writer = settings.checkpoint.enabled.then(|| {
            CheckpointWriter::start(
                &settings.checkpoint,
                workers,
                restore::fingerprint(&cfg),
                sink_identity.clone(),
                Arc::clone(&progress),
            )
        });
        let final_checkpoint = Arc::new(AtomicU64::new(NOT_YET));
        let rules = Rules {
            retention_ms: cfg.retention_ms,
            max_skew_ms: settings.pipeline.max_clock_skew.as_millis() as u64,
        };
        let mut opts = WorkerOptions::new(cfg.tick_ms, rules);
        opts.checkpoint_every = settings.checkpoint.interval;
        opts.window_names = cfg.windows.iter().map(|w| w.name.clone()).collect();
        if settings.clickhouse.enabled {
            opts.max_sink_buffered = settings.clickhouse.buffer_rows;
            opts.drain_timeout = settings.clickhouse.flush_interval + Duration::from_secs(10);
        }

        let timely_config = if settings.cluster.addresses.is_empty() {
            if workers > 1 {
                timely::Config::process(workers)
            } else {
                timely::Config::thread()
            }
        } else {
            // timely's own cluster: every process connects to every other (this call returns once
            // all are connected), and a worker's index is `process × workers + local`.
            tracing::info!(
                process = topology.process,
                processes = topology.processes,
                "connecting to the other processes of the cluster"
            );
            timely_config(topology, &settings.cluster.addresses, workers)
        };
        let guards = {
            let (cfg, store, clock, shutdown, progress, dead_letters, admissions) = (
                Arc::clone(&cfg),
                Arc::clone(&store),
                Arc::clone(&clock),
                Arc::clone(&shutdown),
                Arc::clone(&progress),
                Arc::clone(&dead_letters),
                Arc::clone(&admissions),
            );
            let sink = sink.as_ref().map(ClickHouseSink::handle);
            let parts = writer.as_ref().map(CheckpointWriter::sender);
            let final_checkpoint = Arc::clone(&final_checkpoint);
            timely::execute(timely_config, move |worker| {
                let local = worker.index() % workers;
                let sink = sink.clone();
                let restore = worker_restores.lock().expect("not poisoned")[local].take();
                let mut engine =
                    Engine::build(worker, Arc::clone(&cfg), Arc::clone(&store), restore, |c| {
                        match sink {
                            Some(handle) => clickhouse::attach(c, handle, local),
                            None => c,
                        }
                    });
                let mine = std::mem::take(&mut sources.lock().expect("not poisoned")[local]);
                let io = WorkerIo {
                    dead_letters: dead_letters.as_ref(),
                    progress: &progress,
                    store: &store,
                    admissions: kafka.then_some(&*admissions),
                    checkpoints: parts.as_ref(),
                    final_checkpoint: &final_checkpoint,
                    shutdown: &shutdown,
                };
                run_worker(worker, &mut engine, mine, clock.as_ref(), &io, &opts);
                engine.shutdown(worker);
            })
            .map_err(|e| anyhow::anyhow!("starting timely workers: {e}"))?
        };

        let cluster = (!settings.cluster.addresses.is_empty()).then(|| {
            stockflow_serve::cluster::Cluster::new(
                topology.process,
                workers,
                settings.cluster.http.clone(),
                settings.cluster.forward_timeout,
            )
        });
        let state = Arc::new(ServeState {
            store,
            metrics,
            clock,
            ready_max_lag_ms: 5_000,
            progress: Arc::clone(&progress),
            routing: stockflow_serve::cluster::Routing {
                cluster,
                admissions,
                max_wait: settings.http.max_wait,
                topics: kafka.then(|| {
                    [
                        settings.kafka.inventory_topic.clone(),
                        settings.kafka.orders_topic.clone(),
                    ]
                }),
            },
        });
        Ok(Pipeline {
            settings,
            runtime,
            listener: Some(listener),
            state,
            shutdown,
            guards: Some(guards),
            writer,
            sink,
            dead_letters: Some(dead_letters),
            dead_letter_file,
        })
    }

    /// The address HTTP listens on.
    pub fn addr(&self) -> SocketAddr {
        self.listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
            .expect("a bound listener has an address until served")
    }

    /// What HTTP serves: the views, progress, routing.
    pub fn state(&self) -> &Arc<ServeState> {
        &self.state
    }

    /// Answers HTTP until `stop` resolves, then stops: the workers drain (what they read
    /// becomes durable, their offsets are committed), the last checkpoint is written, the sink
    /// writes its last batch. An error if the dataflow had stopped (a cluster peer lost).
    pub fn serve_until(mut self, stop: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        if let Some(listener) = self.listener.take() {
            self.runtime.block_on(stockflow_serve::serve(
                listener,
                Arc::clone(&self.state),
                stockflow_serve::ServeOptions::of(&self.settings),
                stop,
            ));
        }
        self.stop()
    }

    /// Stops everything in order (once; also when dropped without serving).
    fn stop(&mut self) -> Result<()> {
        let Some(guards) = self.guards.take() else {
            return Ok(());
        };
        tracing::info!("shutting down");
        self.shutdown.store(true, Ordering::Relaxed);
        // Joins the workers, which wait for durability and commit their offsets.
        let panicked = guards.join().into_iter().filter(Result::is_err).count();
        if let Some(writer) = self.writer.take() {
            writer.finish(Duration::from_secs(30));
        }
        if let Some(sink) = self.sink.take() {
            self.runtime.block_on(sink.finish(Duration::from_secs(10)));
        }
        self.dead_letters.take();
        if let Some(file) = self.dead_letter_file.take() {
            file.close();
        }
        if let Some(why) = self.state.progress.stopped() {
            anyhow::bail!("the dataflow stopped ({panicked} workers failed): {why}");
        }
        Ok(())
    }
}

impl Drop for Pipeline {
    /// A pipeline dropped without [`Pipeline::serve_until`] (an error, a panic) stops its
    /// workers rather than wait for them forever.
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            tracing::warn!(error = %e, "stopping the pipeline");
        }
    }
}

use stockflow_types::topology::Topology;

/// timely's configuration for process `topology.process` of the cluster at `addresses`, with
/// `threads` workers each.
pub fn timely_config(topology: Topology, addresses: &[String], threads: usize) -> timely::Config {
    timely::Config {
        communication: timely::CommunicationConfig::Cluster {
            threads,
            process: topology.process,
            addresses: addresses.to_vec(),
            report: false,
            zerocopy: false,
        },
        worker: timely::WorkerConfig::default(),
    }
}

/// How long a process whose dataflow failed keeps answering 503 before it ends.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// When a timely thread panics (in a cluster, the loss of a peer process breaks every
/// worker's and every connection thread's channels), marks the process stopped, so that
/// `/readyz` and lookups answer 503, and holds every panicking timely thread for
/// [`STOP_GRACE`] (timely's destructors then abort the process: it ends either way, but a load
/// balancer sees it unready first).
fn stop_on_timely_panic(progress: Arc<Progress>) {
    let previous = std::panic::take_hook();
    let first = Arc::new(Mutex::new(None::<std::time::Instant>));
    std::panic::set_hook(Box::new(move |info| {
        previous(info);
        let thread = std::thread::current();
        let name = thread.name().unwrap_or_default();
        if !name.starts_with("timely") {
            return;
        }
        progress.set_stopped(format!(
            "{name} failed ({}); in a cluster, another process was lost: restart every process of the cluster",
            info.payload()
                .downcast_ref::<&str>()
                .copied()
                .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
                .unwrap_or("a panic")
        ));
        let since = *first
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(std::time::Instant::now);
        std::thread::sleep(STOP_GRACE.saturating_sub(since.elapsed()));
    }));
}

/// Every local worker's sources: a share of the generator, the file (worker 0), or a share of
/// the Kafka partitions (of the whole cluster's: partition `p` goes to worker `p % peers`).
fn open_sources(
    settings: &Settings,
    topology: Topology,
    clock: &Arc<dyn Clock>,
    progress: &Arc<Progress>,
    resume: &[Resume],
) -> Result<Vec<Vec<Box<dyn Source>>>> {
    let workers = settings.pipeline.workers;
    let peers = topology.peers();
    let mut all: Vec<Vec<Box<dyn Source>>> = (0..workers).map(|_| Vec::new()).collect();
    match settings.source.kind {
        SourceKind::Generator => {
            for (w, sources) in all.iter_mut().enumerate() {
                let c = Arc::clone(clock);
                sources.push(Box::new(Generator::new(
                    &settings.generator,
                    topology.global(w),
                    peers,
                    Arc::new(move || c.now_ms()),
                )));
            }
        }
        SourceKind::File => {
            let path = settings
                .source
                .input_file
                .as_deref()
                .expect("validated: file needs input_file");
            all[0].push(Box::new(JsonLinesSource::open(path, resume)?));
        }
        SourceKind::Kafka => {
            let watch = PartitionWatch::start(&settings.kafka, Arc::clone(progress))
                .context("watching the topics for partitions added while running")?;
            for (w, sources) in all.iter_mut().enumerate() {
                let opts = SourceOptions {
                    worker: topology.global(w),
                    workers: peers,
                    allow_gap: settings.checkpoint.allow_gap,
                    max_skew_ms: settings.pipeline.max_clock_skew.as_millis() as u64,
                    watch: Some(Arc::clone(&watch)),
                };
                let src = KafkaSource::open(&settings.kafka, opts, Arc::clone(progress), resume)
                    .with_context(|| format!("opening the Kafka source of worker {w}"))?;
                sources.push(Box::new(src));
            }
        }
    }
    Ok(all)
}
