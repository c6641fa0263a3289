//! The Kafka source: where a Kafka message becomes a [`RawRecord`].
//!
//! Each timely worker owns one consumer and a fixed share of the partitions: partition `p` of
//! either topic goes to worker `p % workers` (static assignment, no rebalancing: the state a
//! partition feeds lives with the SKUs' owners, not with the reader, so nothing moves when a
//! partition does). Partitions added while running are seen by a [`PartitionWatch`] and read by
//! the worker the same rule names, from their beginning. Offsets are committed under `kafka.group_id`, and only once everything the
//! records produced is durable: the worker calls [`Source::durable`] with the time before which
//! the dataflow, the ClickHouse sink and the dead-letter topic hold everything, and the source
//! stores the offsets of the records admitted before it (`enable.auto.offset.store=false`,
//! auto-commit of stored offsets, a final synchronous commit in [`Source::close`]).
//!
//! A start reads each partition from where the restored checkpoint left it ([`Resume`]), or
//! from the beginning without one. If the broker has already deleted records the start needs
//! (its log start offset is above the resume offset), opening fails with
//! [`KafkaSourceError::Gap`] naming them, unless the configuration allows the gap. The same
//! holds while running (`auto.offset.reset=error`: librdkafka never jumps on its own): if the
//! broker deletes records before they are read (the pipeline fell behind the topic's
//! retention), that partition stops, `/readyz` says which records are missing and
//! `stockflow_kafka_gap_stops_total` counts it; with `checkpoint.allow_gap` it goes on from the
//! broker's first offset and `stockflow_kafka_gap_records_total` counts what was skipped. The
//! committed offsets tell which records an earlier run already sent to the dead-letter topic,
//! so that a replay does not send them twice. The end offsets as of the start tell when the
//! worker has caught up ([`Source::caught_up`], `/readyz`).
//!
//! Log time: each record's timestamp (CreateTime or LogAppendTime), made monotonic per
//! partition (a record without one, or older than its predecessor, takes its predecessor's). A
//! `CreateTime` stamp more than `pipeline.max_clock_skew` ahead of its partition's log time
//! (a producer's wrong clock) moves it by that much only ([`next_log_time`],
//! `stockflow_kafka_timestamps_cut_total`); the broker's `LogAppendTime` is trusted.
//!
//! Idle partitions: a partition that delivered nothing for `kafka.idle_heartbeat` gets a
//! heartbeat record written into it by its reader (empty value, header
//! [`HEARTBEAT_HEADER`], stamped with the clock). Reading it moves the partition's log time
//! like any record and admits nothing: the log frontier moves while a topic is quiet, and a
//! replay reads the same heartbeats at the same offsets, so it decides what the first run did
//! (docs/architecture.md, "Idle partitions"). The gauge
//! `stockflow_kafka_log_time_lag_seconds{topic,partition}` says how far each partition's log
//! time trails the clock; `/readyz` names one that trails far.
//!
//! Lag per partition comes from librdkafka's statistics, every second: the gauge
//! `stockflow_kafka_consumer_lag{topic,partition}` counts the records after the committed
//! offset (the consumer group's lag: what is read but not yet durable, or not yet read).

use crate::{Admissions, Polled, Position, RawRecord, Source};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, DeliveryResult, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, ProducerContext};
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::ClientContext;
use rdkafka::Timestamp;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use stockflow_kafka::client_config;
use stockflow_types::config::KafkaConfig;
use stockflow_types::event::Stream;
use stockflow_types::log_time::next_log_time;
use stockflow_types::progress::Progress;
use stockflow_types::resume::{self, Resume};
use stockflow_types::topology::reader;
use stockflow_types::Millis;
use thiserror::Error;

/// The header that marks a heartbeat record (its value: the consumer group that wrote it).
pub const HEARTBEAT_HEADER: &str = "stockflow-heartbeat";

/// Whether `m` is a heartbeat record (see the module documentation).
fn is_heartbeat(m: &BorrowedMessage<'_>) -> bool {
    m.headers()
        .is_some_and(|h| h.iter().any(|h| h.key == HEARTBEAT_HEADER))
}

/// Delivery reports of heartbeat records: counted, a failure logged (a heartbeat that is not
/// written is written again after the next idle interval).
struct HeartbeatContext;

impl ClientContext for HeartbeatContext {}

impl ProducerContext for HeartbeatContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let outcome = match result {
            Ok(_) => "written",
            Err((e, m)) => {
                tracing::warn!(error = %e, topic = m.topic(), partition = m.partition(), "writing a heartbeat into an idle partition failed (the log frontier waits for it)");
                "failed"
            }
        };
        metrics::counter!("stockflow_kafka_heartbeats_total", "outcome" => outcome).increment(1);
    }
}

/// Writes heartbeats into the idle partitions of one worker.
struct Heartbeats {
    producer: BaseProducer<HeartbeatContext>,
    /// A partition idle this long gets one.
    every: Duration,
    /// Written as the header's value.
    group: String,
    /// Idleness is looked at this often at most.
    next_look: Instant,
}

/// How far a partition's log time may trail the clock before `/readyz` names it: a few missed
/// heartbeats, never less than ten seconds.
fn lag_to_report(every: Duration) -> u64 {
    (every.as_millis() as u64 * 5).max(10_000)
}

fn wall_ms() -> Millis {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as Millis)
}

/// Metadata and offsets are asked for at start with this timeout (generous: a busy broker may
/// take seconds, and failing the start is worse than waiting).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Opening the Kafka source failed.
#[derive(Debug, Error)]
pub enum KafkaSourceError {
    /// The consumer could not be created or asked.
    #[error("{what}")]
    Kafka {
        /// What was being attempted.
        what: String,
        /// The client's error.
        #[source]
        source: KafkaError,
    },
    /// The brokers did not answer, or refused the connection (TLS, SASL).
    #[error(
        "cannot reach Kafka at {brokers} ({protocol}): {problem} (check kafka.brokers, \
         kafka.security_protocol, [kafka.tls] and [kafka.sasl])"
    )]
    Unreachable {
        /// `kafka.brokers`.
        brokers: String,
        /// `kafka.security_protocol`.
        protocol: &'static str,
        /// What the client said last.
        problem: String,
    },
    /// A topic does not exist.
    #[error("topic {0:?} does not exist (create it, or set kafka.create_partitions)")]
    MissingTopic(String),
    /// Records the start needs were deleted by the broker.
    #[error(
        "records {from}..{first} of {topic}/{partition} were deleted by the broker and no \
         checkpoint holds their effects (the partition starts at offset {first}); restore them, \
         or start with checkpoint.allow_gap = true to accept answers without them"
    )]
    Gap {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The first offset needed.
        from: i64,
        /// The partition's first offset on the broker.
        first: i64,
    },
    /// The checkpoint resumes beyond the end of a partition.
    #[error(
        "the checkpoint resumes {topic}/{partition} at offset {from} but the partition ends at \
         {end}: was the topic recreated? (move the checkpoint directory away to rebuild from the log)"
    )]
    BeyondEnd {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The resume offset.
        from: i64,
        /// The partition's end offset.
        end: i64,
    },
}

fn kafka(what: impl Into<String>) -> impl FnOnce(KafkaError) -> KafkaSourceError {
    let what = what.into();
    move |source| KafkaSourceError::Kafka { what, source }
}

/// Statistics and errors of a consumer: the lag gauge and Kafka's health for `/readyz`.
pub struct SourceContext {
    progress: Arc<Progress>,
}

impl ClientContext for SourceContext {
    fn stats(&self, stats: Statistics) {
        let up = stats
            .brokers
            .values()
            .any(|b| b.nodeid >= 0 && b.state == "UP");
        self.progress.set_kafka_ok(up);
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                if p.partition < 0 {
                    continue; // librdkafka's internal "unassigned" partition
                }
                let labels = [
                    ("topic", topic.clone()),
                    ("partition", partition.to_string()),
                ];
                // Consumer-group lag: records after the committed (durable) offset.
                if p.consumer_lag >= 0 {
                    metrics::gauge!("stockflow_kafka_consumer_lag", &labels)
                        .set(p.consumer_lag as f64);
                }
            }
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::AllBrokersDown)
        ) {
            self.progress.set_kafka_ok(false);
        }
        tracing::warn!(%error, reason, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {}

struct Part {
    topic: usize,
    partition: i32,
    /// The end offset when the source opened.
    end_at_start: i64,
    /// The committed offset when the source opened: records before it were dead-lettered.
    committed_at_start: i64,
    /// The next offset to read.
    next: i64,
    /// The log time of the last record read (or of the record before the resume offset).
    log_time: Millis,
    /// Where it stood after each admission time.
    admitted: Admissions,
    /// The latest offset stored for commit.
    stored: Option<i64>,
    /// Stopped because the broker deleted records before they were read.
    stopped: bool,
    /// The consumer's position (past markers) when last asked, while not caught up.
    position: i64,
    /// When a record (or heartbeat) of it was last read, or the source opened.
    last_read: Instant,
    /// When this source last wrote a heartbeat into it.
    heartbeat_sent: Option<Instant>,
    /// Waiting for the broker's word on a jump in offsets to `jump_to` (paused meanwhile).
    checking: bool,
    jump_to: i64,
    /// A jump to an offset up to this one is known to skip no record (markers, aborted records).
    holes_until: i64,
}

/// Asks the broker for a partition's watermarks off the worker thread. A jump in offsets is
/// usually holes (a transactional producer's commit markers, aborted records, compaction), but
/// on a broker that answers a fetch below its first offset with the records after it (tansu
/// does) it may be records deleted before they were read; the partition waits for the answer,
/// the worker does not.
struct GapChecker {
    ask: std::sync::mpsc::Sender<(usize, i32)>,
    answers: std::sync::mpsc::Receiver<((usize, i32), Result<(i64, i64), KafkaError>)>,
}

impl GapChecker {
    fn start(k: &KafkaConfig, topics: [String; 2]) -> Result<Self, KafkaSourceError> {
        let client: BaseConsumer = client_config(k)
            .create()
            .map_err(kafka("creating the Kafka client that checks offset jumps"))?;
        let (ask, asked) = std::sync::mpsc::channel::<(usize, i32)>();
        let (answer, answers) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kafka-gap-check".into())
            .spawn(move || {
                // Ends when the source (the asking side) is dropped.
                for (ti, partition) in asked {
                    let w = client.fetch_watermarks(&topics[ti], partition, START_TIMEOUT);
                    if answer.send(((ti, partition), w)).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| KafkaSourceError::Kafka {
                what: format!("starting the offset-jump checker: {e}"),
                source: KafkaError::Canceled,
            })?;
        Ok(GapChecker { ask, answers })
    }
}

/// One worker's share of the partitions of the inventory and orders topics.
pub struct KafkaSource {
    consumer: BaseConsumer<SourceContext>,
    topics: [(String, Stream); 2],
    parts: Vec<Part>,
    index: HashMap<(usize, i32), usize>,
    caught_up: bool,
    progress: Arc<Progress>,
    allow_gap: bool,
    /// How far one `CreateTime` stamp may move a partition's log time, ms.
    max_skew_ms: Millis,
    heartbeats: Option<Heartbeats>,
    /// This worker's index in the cluster, and the cluster's workers: partition `p` is this
    /// worker's when `p % workers == worker`.
    worker: usize,
    workers: usize,
    /// Partitions per topic as this source knows them, and the watch that sees more.
    known: [i32; 2],
    watch: Option<Arc<PartitionWatch>>,
    gaps: GapChecker,
    /// Heartbeats, new partitions and caught-up are looked at by then at the latest.
    next_housekeeping: Instant,
    /// A catch-up request being read to: (request, end offset by (topic, partition)).
    catch_up: Option<(u64, HashMap<(usize, i32), i64>)>,
    /// The latest catch-up request read to.
    caught_up_to: u64,
}

/// How often a source that always has records to deliver still looks at idle partitions, new
/// partitions and whether it has caught up.
const HOUSEKEEPING: Duration = Duration::from_millis(100);

/// How a worker's Kafka source reads, beside the `[kafka]` settings.
#[derive(Clone)]
pub struct SourceOptions {
    /// This worker's index in the cluster.
    pub worker: usize,
    /// The cluster's workers.
    pub workers: usize,
    /// Go on from the broker's first offset when records a start needs are gone.
    pub allow_gap: bool,
    /// How far one `CreateTime` stamp may move a partition's log time, ms.
    pub max_skew_ms: Millis,
    /// Partitions added to the topics while running (one watch per process).
    pub watch: Option<Arc<PartitionWatch>>,
}

/// Watches the inventory and orders topics for partitions added while running
/// (`kafka-topics --alter --partitions`): a thread of its own asks the broker for the topics'
/// metadata every `kafka.metadata_refresh`, so that no worker ever waits for that round trip;
/// each worker's source then starts reading the new partitions that are its own (partition `p`
/// of worker `p % workers`, the rule every process of a cluster follows) from their beginning.
pub struct PartitionWatch {
    counts: [std::sync::atomic::AtomicI32; 2],
    /// The log's end for the latest catch-up request answered: (request, [(topic, partition,
    /// high watermark)]).
    ends: std::sync::Mutex<(u64, Vec<(usize, i32, i64)>)>,
    stop: Arc<std::sync::atomic::AtomicBool>,
}

/// How often the watch looks for a catch-up request.
const WATCH_SLICE: Duration = Duration::from_millis(100);

impl PartitionWatch {
    /// Starts watching (the thread ends when the watch is dropped). It also answers catch-up
    /// requests (`progress.ask_catch_up`): it reads every partition's high watermark, the end
    /// each worker's source then reads to.
    pub fn start(k: &KafkaConfig, progress: Arc<Progress>) -> Result<Arc<Self>, KafkaSourceError> {
        use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
        let client: BaseConsumer = client_config(k)
            .create()
            .map_err(kafka("creating the Kafka metadata client"))?;
        let watch = Arc::new(PartitionWatch {
            counts: [AtomicI32::new(0), AtomicI32::new(0)],
            ends: std::sync::Mutex::new((0, Vec::new())),
            stop: Arc::new(AtomicBool::new(false)),
        });
        let w = Arc::downgrade(&watch);
        let stop = Arc::clone(&watch.stop);
        let topics = [k.inventory_topic.clone(), k.orders_topic.clone()];
        let every = k.metadata_refresh;
        std::thread::Builder::new()
            .name("kafka-partitions".into())
            .spawn(move || {
                let mut next_metadata = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let Some(watch) = w.upgrade() else { return };
                    if Instant::now() >= next_metadata {
                        next_metadata = Instant::now() + every;
                        watch.refresh_counts(&client, &topics);
                    }
                    let asked = progress.catch_up_asked();
                    if asked > watch.answered() {
                        watch.read_ends(&client, &topics, asked);
                    }
                    drop(watch);
                    std::thread::sleep(WATCH_SLICE);
                }
            })
            .map_err(|e| KafkaSourceError::Kafka {
                what: format!("starting the partition watch: {e}"),
                source: KafkaError::Canceled,
            })?;
        Ok(watch)
    }

    fn refresh_counts(&self, client: &BaseConsumer, topics: &[String; 2]) {
        use std::sync::atomic::Ordering;
        for (i, topic) in topics.iter().enumerate() {
            match client.fetch_metadata(Some(topic), START_TIMEOUT) {
                Ok(meta) => {
                    let n = meta
                        .topics()
                        .iter()
                        .find(|m| m.name() == topic && m.error().is_none())
                        .map_or(0, |m| m.partitions().len() as i32);
                    self.counts[i].fetch_max(n, Ordering::AcqRel);
                    metrics::gauge!("stockflow_kafka_partitions", "topic" => topic.clone())
                        .set(f64::from(self.counts[i].load(Ordering::Acquire)));
                }
                Err(e) => {
                    tracing::debug!(%topic, error = %e, "reading the topic's metadata failed; asking again later")
                }
            }
        }
    }

    /// Reads every partition's high watermark for catch-up request `asked` (all or nothing: a
    /// failure is retried at the next look).
    fn read_ends(&self, client: &BaseConsumer, topics: &[String; 2], asked: u64) {
        self.refresh_counts(client, topics);
        let mut ends = Vec::new();
        for (i, topic) in topics.iter().enumerate() {
            for partition in 0..self.count(i) {
                match client.fetch_watermarks(topic, partition, START_TIMEOUT) {
                    Ok((_, high)) => ends.push((i, partition, high)),
                    Err(e) => {
                        tracing::debug!(%topic, partition, error = %e, "reading the log's end failed; asking again");
                        return;
                    }
                }
            }
        }
        *self.ends.lock().unwrap_or_else(|e| e.into_inner()) = (asked, ends);
    }

    /// The latest catch-up request whose ends are known.
    fn answered(&self) -> u64 {
        self.ends.lock().unwrap_or_else(|e| e.into_inner()).0
    }

    /// The ends of the latest catch-up request answered.
    fn ends(&self) -> (u64, Vec<(usize, i32, i64)>) {
        self.ends.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Partitions of topic `i` (0 inventory, 1 orders) as last seen (0 before the first look).
    fn count(&self, i: usize) -> i32 {
        self.counts[i].load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Drop for PartitionWatch {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

impl KafkaSource {
    /// Opens worker `opts.worker`'s share (of `opts.workers` in the cluster), reading each
    /// partition from its position in `resume` (from the beginning if it has none); with
    /// `allow_gap`, from the broker's first offset when records it would need are gone.
    pub fn open(
        k: &KafkaConfig,
        opts: SourceOptions,
        progress: Arc<Progress>,
        resume: &[Resume],
    ) -> Result<Self, KafkaSourceError> {
        let SourceOptions {
            worker,
            workers,
            allow_gap,
            max_skew_ms,
            watch,
        } = opts;
        let mut config = client_config(k);
        if !k.options.contains_key("fetch.wait.max.ms") {
            // Freshness: a broker may hold a fetch for this long when little data is waiting
            // (librdkafka's 500 ms default; tansu holds every fetch that long). 10 ms costs an
            // idle consumer ~100 small requests a second per broker. `kafka.options` overrides it.
            config.set("fetch.wait.max.ms", "10");
        }
        let consumer: BaseConsumer<SourceContext> = config
            .set("group.id", &k.group_id)
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                k.commit_interval.as_millis().to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "error") // a jump would skip records: see `out_of_range`
            // Transactional producers: only committed records are read; markers and aborted
            // records take offsets and are never delivered (librdkafka's default, made explicit).
            .set("isolation.level", "read_committed")
            .set("enable.partition.eof", "false")
            .set("statistics.interval.ms", "1000")
            .create_with_context(SourceContext {
                progress: progress.clone(),
            })
            .map_err(kafka("creating the Kafka consumer"))?;
        let topics = [
            (k.inventory_topic.clone(), Stream::Inventory),
            (k.orders_topic.clone(), Stream::Orders),
        ];
        let mut parts = Vec::new();
        let mut assignment = TopicPartitionList::new();
        let mut known = [0; 2];
        for (ti, (topic, _)) in topics.iter().enumerate() {
            let meta = consumer
                .fetch_metadata(Some(topic), START_TIMEOUT)
                .map_err(kafka(format!("reading the metadata of topic {topic:?}")))?;
            let Some(m) = meta.topics().iter().find(|m| m.name() == topic) else {
                return Err(KafkaSourceError::MissingTopic(topic.clone()));
            };
            if m.error().is_some() || m.partitions().is_empty() {
                return Err(KafkaSourceError::MissingTopic(topic.clone()));
            }
            known[ti] = m.partitions().len() as i32;
            for p in m.partitions() {
                let partition = p.id();
                if reader(partition, workers) != worker {
                    continue;
                }
                let (first, end) = consumer
                    .fetch_watermarks(topic, partition, START_TIMEOUT)
                    .map_err(kafka(format!("reading the offsets of {topic}/{partition}")))?;
                let (mut from, log_time) =
                    resume::find(resume, topic, partition).map_or((0, 0), |r| (r.next, r.log_time));
                if from > end {
                    return Err(KafkaSourceError::BeyondEnd {
                        topic: topic.clone(),
                        partition,
                        from,
                        end,
                    });
                }
                if from < first {
                    if !allow_gap {
                        return Err(KafkaSourceError::Gap {
                            topic: topic.clone(),
                            partition,
                            from,
                            first,
                        });
                    }
                    tracing::warn!(%topic, partition, from, first, "records deleted by the broker are missing from the state (checkpoint.allow_gap)");
                    metrics::counter!("stockflow_kafka_gap_records_total")
                        .increment((first - from) as u64);
                    from = first;
                }
                assignment
                    .add_partition_offset(topic, partition, Offset::Offset(from))
                    .map_err(kafka("assigning partitions"))?;
                parts.push(Part {
                    topic: ti,
                    partition,
                    end_at_start: end,
                    committed_at_start: 0,
                    next: from,
                    log_time,
                    admitted: Admissions::new(from, log_time),
                    stored: None,
                    stopped: false,
                    position: from,
                    last_read: Instant::now(),
                    heartbeat_sent: None,
                    checking: false,
                    jump_to: 0,
                    holes_until: -1,
                });
            }
        }
        if !parts.is_empty() {
            let committed = consumer
                .committed_offsets(assignment.clone(), START_TIMEOUT)
                .map_err(kafka(format!(
                    "reading the offsets committed by group {:?}",
                    k.group_id
                )))?;
            for part in &mut parts {
                if let Some(Offset::Offset(o)) = committed
                    .find_partition(&topics[part.topic].0, part.partition)
                    .map(|e| e.offset())
                {
                    part.committed_at_start = o;
                }
            }
        }
        consumer
            .assign(&assignment)
            .map_err(kafka("assigning partitions"))?;
        let index = parts
            .iter()
            .enumerate()
            .map(|(i, p)| ((p.topic, p.partition), i))
            .collect();
        let heartbeats = if k.idle_heartbeat.is_zero() || parts.is_empty() {
            None
        } else {
            Some(Heartbeats {
                producer: client_config(k)
                    .set("linger.ms", "0")
                    .create_with_context(HeartbeatContext)
                    .map_err(kafka("creating the heartbeat producer"))?,
                every: k.idle_heartbeat,
                group: k.group_id.clone(),
                next_look: Instant::now(),
            })
        };
        let gaps = GapChecker::start(k, [topics[0].0.clone(), topics[1].0.clone()])?;
        let caught_up = parts.iter().all(|p| p.end_at_start <= p.next);
        tracing::info!(
            worker,
            partitions = parts.len(),
            backlog = parts.iter().map(|p| p.end_at_start - p.next).sum::<i64>(),
            resumed = !resume.is_empty(),
            "Kafka source assigned"
        );
        Ok(KafkaSource {
            consumer,
            topics,
            parts,
            index,
            caught_up,
            progress,
            allow_gap,
            max_skew_ms,
            heartbeats,
            worker,
            workers,
            known,
            watch,
            gaps,
            next_housekeeping: Instant::now(),
            catch_up: None,
            caught_up_to: 0,
        })
    }

    /// Applies the broker's answers about jumps in offsets: holes (go on from the jump), or
    /// records deleted before they were read (stop the partition, or with `allow_gap` go on
    /// from the broker's first offset). A failed question is asked again at the jump.
    fn judge_jumps(&mut self, t: Millis) {
        while let Ok(((ti, partition), answer)) = self.gaps.answers.try_recv() {
            let Some(&i) = self.index.get(&(ti, partition)) else {
                continue;
            };
            let part = &mut self.parts[i];
            part.checking = false;
            let topic = &self.topics[ti].0;
            let judged = answer.and_then(|w| {
                judge_gap(
                    &self.consumer,
                    topic,
                    part,
                    w,
                    self.allow_gap,
                    &self.progress,
                    t,
                )
            });
            match judged {
                Ok(false) => part.holes_until = part.jump_to,
                Ok(true) => {}
                Err(e) => {
                    tracing::warn!(%topic, partition, error = %e, "checking a jump in offsets failed; asking again");
                }
            }
            if part.stopped {
                continue;
            }
            // Read again from the next offset (what arrived while paused was left unread).
            let _ = self
                .consumer
                .seek(topic, partition, Offset::Offset(part.next), START_TIMEOUT);
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition(topic, partition);
            let _ = self.consumer.resume(&tpl);
        }
    }

    /// Starts reading the partitions added to the topics since this source last looked that
    /// are this worker's, from their beginning (they are new: nothing of them is in any
    /// checkpoint). The consumer's assignment is replaced by the whole list, every partition
    /// at the next offset to read.
    fn adopt_new_partitions(&mut self) {
        let Some(watch) = &self.watch else {
            return;
        };
        let mut added = false;
        for ti in 0..2 {
            let now = watch.count(ti);
            if now <= self.known[ti] {
                continue;
            }
            for partition in self.known[ti]..now {
                if reader(partition, self.workers) != self.worker {
                    continue;
                }
                tracing::info!(topic = %self.topics[ti].0, partition, "reading a partition added while running, from its beginning");
                self.index.insert((ti, partition), self.parts.len());
                self.parts.push(Part {
                    topic: ti,
                    partition,
                    end_at_start: 0,
                    committed_at_start: 0,
                    next: 0,
                    log_time: 0,
                    admitted: Admissions::new(0, 0),
                    stored: None,
                    stopped: false,
                    position: 0,
                    last_read: Instant::now(),
                    heartbeat_sent: None,
                    checking: false,
                    jump_to: 0,
                    holes_until: -1,
                });
                added = true;
            }
            self.known[ti] = now;
        }
        if !added {
            return;
        }
        let mut tpl = TopicPartitionList::new();
        for part in self.parts.iter().filter(|p| !p.stopped) {
            let topic = &self.topics[part.topic].0;
            if let Err(e) =
                tpl.add_partition_offset(topic, part.partition, Offset::Offset(part.next))
            {
                tracing::warn!(error = %e, "assigning partitions");
            }
        }
        if let Err(e) = self.consumer.assign(&tpl) {
            tracing::error!(error = %e, "assigning the partitions added while running failed");
        }
    }

    /// Whether every partition has been read to where it ended when the source opened. A
    /// partition whose last records are a transaction's commit marker (never delivered) counts
    /// by the consumer's position, which librdkafka moves past markers and aborted records.
    fn read_to_start_end(&mut self) -> bool {
        self.read_to(|p| Some(p.end_at_start))
    }

    /// Whether every partition has been read to its `end` (none: no end to reach), counting the
    /// consumer's position, which librdkafka moves past markers and aborted records.
    fn read_to(&mut self, end: impl Fn(&Part) -> Option<i64>) -> bool {
        let reached = |p: &Part, at: i64| p.stopped || end(p).is_none_or(|e| at >= e);
        if self.parts.iter().all(|p| reached(p, p.next)) {
            return true;
        }
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        for part in &mut self.parts {
            let topic = &self.topics[part.topic].0;
            if let Some(Offset::Offset(at)) = positions
                .find_partition(topic, part.partition)
                .map(|e| e.offset())
            {
                part.position = part.position.max(at);
            }
        }
        self.parts
            .iter()
            .all(|p| reached(p, p.next.max(p.position)))
    }

    /// Takes up the latest catch-up request the watch has the log's ends for, and notes when
    /// this source has read to them.
    fn follow_catch_up(&mut self) {
        let Some(watch) = &self.watch else {
            return;
        };
        let answered = watch.answered();
        let pending = self
            .catch_up
            .as_ref()
            .map_or(self.caught_up_to, |(r, _)| *r);
        if answered > pending {
            let (request, ends) = watch.ends();
            let ends = ends
                .into_iter()
                .filter(|(topic, partition, _)| self.index.contains_key(&(*topic, *partition)))
                .map(|(topic, partition, end)| ((topic, partition), end))
                .collect();
            self.catch_up = Some((request, ends));
        }
        let Some((request, ends)) = self.catch_up.take() else {
            return;
        };
        if self.read_to(|p| ends.get(&(p.topic, p.partition)).copied()) {
            self.caught_up_to = request;
        } else {
            self.catch_up = Some((request, ends));
        }
    }

    /// Writes a heartbeat into every partition that delivered nothing for the idle interval
    /// (and got none from this source within it). Called when the consumer had nothing more to
    /// deliver; never waits for the broker.
    fn heartbeat_idle(&mut self) {
        let Some(h) = &mut self.heartbeats else {
            return;
        };
        h.producer.poll(Duration::ZERO); // delivery reports
        let now = Instant::now();
        if now < h.next_look {
            return;
        }
        h.next_look = now + h.every / 4;
        let stamp = wall_ms() as i64;
        for part in self.parts.iter_mut().filter(|p| !p.stopped) {
            let idle = now.duration_since(part.last_read) >= h.every;
            let recent = part
                .heartbeat_sent
                .is_some_and(|at| now.duration_since(at) < h.every);
            if !idle || recent {
                continue;
            }
            let topic = &self.topics[part.topic].0;
            let headers = OwnedHeaders::new().insert(Header {
                key: HEARTBEAT_HEADER,
                value: Some(h.group.as_bytes()),
            });
            let record = BaseRecord::<[u8], [u8]>::to(topic)
                .partition(part.partition)
                .payload(&[])
                .headers(headers)
                .timestamp(stamp);
            match h.producer.send(record) {
                Ok(()) => part.heartbeat_sent = Some(now),
                Err((e, _)) => {
                    metrics::counter!("stockflow_kafka_heartbeats_total", "outcome" => "failed")
                        .increment(1);
                    tracing::warn!(%topic, partition = part.partition, error = %e, "queueing a heartbeat failed");
                }
            }
        }
    }

    /// librdkafka found a fetch offset out of the range the broker holds (it names no
    /// partition): check every partition still read.
    fn out_of_range(&mut self, t: Millis) {
        for part in self.parts.iter_mut().filter(|p| !p.stopped) {
            let topic = &self.topics[part.topic].0;
            let _ = check_gap(
                &self.consumer,
                topic,
                part,
                self.allow_gap,
                &self.progress,
                t,
            );
        }
    }
}

/// Whether records of `part` were deleted by the broker before they were read: its next
/// offset is below the broker's first (the pipeline fell behind the topic's retention), or
/// beyond its end (the topic was recreated). Such a partition stops (paused, named in
/// `/readyz`), unless the configuration allows the gap: then it goes on from the broker's first
/// offset (admissions at `t` record the new position).
/// Returns whether records are missing.
/// (A jump in offsets alone is no gap: transaction markers and compaction leave holes.)
fn check_gap(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    part: &mut Part,
    allow_gap: bool,
    progress: &Progress,
    t: Millis,
) -> Result<bool, KafkaError> {
    let watermarks = consumer.fetch_watermarks(topic, part.partition, START_TIMEOUT)?;
    judge_gap(consumer, topic, part, watermarks, allow_gap, progress, t)
}

/// [`check_gap`] on watermarks already asked for.
fn judge_gap(
    consumer: &BaseConsumer<SourceContext>,
    topic: &str,
    part: &mut Part,
    (first, end): (i64, i64),
    allow_gap: bool,
    progress: &Progress,
    t: Millis,
) -> Result<bool, KafkaError> {
    let partition = part.partition;
    let from = part.next;
    if from >= first && from <= end {
        return Ok(false);
    }
    if allow_gap && from < first {
        consumer.seek(topic, partition, Offset::Offset(first), START_TIMEOUT)?;
        tracing::warn!(%topic, partition, from, first, "records deleted by the broker before they were read are missing from the state (checkpoint.allow_gap)");
        metrics::counter!("stockflow_kafka_gap_records_total").increment((first - from) as u64);
        part.next = first;
        part.admitted.admitted(t, first, part.log_time);
        return Ok(true);
    }
    let problem = if from < first {
        format!(
            "records {from}..{first} of {topic}/{partition} were deleted by the broker before \
             they were read (the pipeline fell behind the topic's retention); reading \
             {topic}/{partition} stopped: restore them, or restart with checkpoint.allow_gap = \
             true to accept answers without them"
        )
    } else {
        format!(
            "{topic}/{partition} ends at offset {end}, before the next record to read ({from}): \
             was the topic recreated? Reading {topic}/{partition} stopped"
        )
    };
    tracing::error!("{problem}");
    metrics::counter!("stockflow_kafka_gap_stops_total").increment(1);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let _ = consumer.pause(&tpl);
    part.stopped = true;
    progress.add_source_problem(problem);
    Ok(true)
}

impl Source for KafkaSource {
    fn poll(&mut self, t: Millis, max: usize, out: &mut Vec<RawRecord>) -> Polled {
        self.judge_jumps(t);
        let mut n = 0;
        let mut drained = false;
        let now = Instant::now();
        while n < max {
            let m = match self.consumer.poll(Duration::ZERO) {
                None => {
                    drained = true;
                    break;
                }
                Some(Ok(m)) => m,
                Some(Err(KafkaError::MessageConsumption(RDKafkaErrorCode::AutoOffsetReset))) => {
                    self.out_of_range(t);
                    break;
                }
                Some(Err(e)) => {
                    metrics::counter!("stockflow_kafka_errors_total").increment(1);
                    tracing::warn!(error = %e, "reading from Kafka failed; the client retries");
                    break;
                }
            };
            let Some(ti) = self.topics.iter().position(|(name, _)| name == m.topic()) else {
                continue;
            };
            let Some(&i) = self.index.get(&(ti, m.partition())) else {
                continue;
            };
            let part = &mut self.parts[i];
            if part.stopped {
                continue;
            }
            if part.checking {
                continue; // read again once the broker has answered (`judge_jumps`)
            }
            let offset = m.offset();
            if offset > part.next && offset > part.holes_until {
                // Holes (markers, aborted records, compaction) or deleted records: the broker
                // says which, off this thread; the partition waits, the others go on.
                let topic = &self.topics[ti].0;
                let mut tpl = TopicPartitionList::new();
                tpl.add_partition(topic, part.partition);
                let _ = self.consumer.pause(&tpl);
                part.checking = true;
                part.jump_to = offset;
                let _ = self.gaps.ask.send((ti, part.partition));
                continue;
            }
            part.next = offset + 1;
            part.last_read = now;
            let stamp = match m.timestamp() {
                Timestamp::CreateTime(ts) if ts >= 0 => {
                    let (lt, cut) = next_log_time(part.log_time, ts as Millis, self.max_skew_ms);
                    if cut {
                        metrics::counter!("stockflow_kafka_timestamps_cut_total", "topic" => self.topics[ti].0.clone()).increment(1);
                        tracing::debug!(topic = m.topic(), partition = m.partition(), offset, ts, log_time = lt, "a record's timestamp runs ahead of its partition by more than pipeline.max_clock_skew");
                    }
                    part.log_time = lt;
                    Some(ts as Millis)
                }
                // The broker's own clock: trusted (a jump is the time the topic was quiet).
                Timestamp::LogAppendTime(ts) if ts >= 0 => {
                    part.log_time = part.log_time.max(ts as Millis);
                    Some(ts as Millis)
                }
                _ => None,
            };
            part.admitted.admitted(t, part.next, part.log_time);
            if is_heartbeat(&m) {
                continue; // it moved the log time; there is nothing to admit
            }
            out.push(RawRecord {
                key: m.key().map(<[u8]>::to_vec),
                value: m.payload().unwrap_or_default().to_vec(),
                position: Position::new(m.topic(), m.partition(), offset),
                stream: Some(self.topics[ti].1),
                dead_lettered: offset < part.committed_at_start,
                log_time: part.log_time,
                stamp,
            });
            n += 1;
        }
        // Also while a backlog keeps the consumer's queue full (a long catch-up, or running
        // near capacity): an idle partition still gets its heartbeats, new partitions are
        // still adopted, and caught-up is still noticed.
        if drained || now >= self.next_housekeeping {
            self.next_housekeeping = now + HOUSEKEEPING;
            self.adopt_new_partitions();
            self.heartbeat_idle();
            if !self.caught_up {
                self.caught_up = self.read_to_start_end();
            }
            self.follow_catch_up();
        }
        if n > 0 {
            Polled::Records
        } else {
            Polled::Idle
        }
    }

    fn caught_up(&self) -> bool {
        self.caught_up
    }

    fn caught_up_to(&self, asked: u64) -> u64 {
        if self.watch.is_none() {
            return asked; // nothing to ask the broker with: as before requests
        }
        self.caught_up_to
    }

    fn log_frontier(&self) -> Millis {
        self.parts
            .iter()
            .map(|p| p.log_time)
            .min()
            .unwrap_or(Millis::MAX)
    }

    fn positions_at(&self, t: Millis) -> Vec<Resume> {
        self.parts
            .iter()
            .map(|p| {
                let (next, log_time) = p.admitted.at(t);
                Resume {
                    source: self.topics[p.topic].0.clone(),
                    partition: p.partition,
                    next,
                    log_time,
                }
            })
            .collect()
    }

    fn durable(&mut self, t: Millis) {
        let mut tpl = TopicPartitionList::new();
        let now = wall_ms();
        let report = self
            .heartbeats
            .as_ref()
            .map_or(60_000, |h| lag_to_report(h.every));
        let mut behind: Option<(Millis, usize)> = None;
        for (i, part) in self.parts.iter_mut().enumerate() {
            let topic = self.topics[part.topic].0.clone();
            let labels = [("topic", topic), ("partition", part.partition.to_string())];
            metrics::gauge!("stockflow_kafka_log_time_seconds", &labels)
                .set(part.log_time as f64 / 1000.0);
            let lag = now.saturating_sub(part.log_time);
            metrics::gauge!("stockflow_kafka_log_time_lag_seconds", &labels)
                .set(lag as f64 / 1000.0);
            if lag > report && behind.is_none_or(|(most, _)| lag > most) {
                behind = Some((lag, i));
            }
            if let Some(next) = part.admitted.durable(t) {
                let topic = &self.topics[part.topic].0;
                if tpl
                    .add_partition_offset(topic, part.partition, Offset::Offset(next))
                    .is_ok()
                {
                    part.stored = Some(next);
                }
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = self.consumer.store_offsets(&tpl) {
                tracing::warn!(error = %e, "storing Kafka offsets failed");
            }
        }
        let note = behind.map(|(lag, i)| {
            let p = &self.parts[i];
            let topic = &self.topics[p.topic].0;
            format!(
                "{topic}/{} holds the log frontier back: its log time is {} s behind the clock \
                 (nothing is forgotten meanwhile; are its heartbeats written? see \
                 stockflow_kafka_heartbeats_total)",
                p.partition,
                lag / 1000
            )
        });
        self.progress.set_log_note(self.worker, note);
    }

    fn close(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for part in &self.parts {
            if let Some(next) = part.stored {
                let _ = tpl.add_partition_offset(
                    &self.topics[part.topic].0,
                    part.partition,
                    Offset::Offset(next),
                );
            }
        }
        if tpl.count() > 0 {
            match self.consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::info!(partitions = tpl.count(), "final offsets committed"),
                Err(e) => tracing::warn!(error = %e, "the final offset commit failed"),
            }
        }
    }
}

/// The errors a client reports while it is checked, for the check to say why it failed.
#[derive(Default)]
struct CheckContext {
    last: parking_lot::Mutex<Option<(Option<RDKafkaErrorCode>, String)>>,
}

impl ClientContext for CheckContext {
    fn error(&self, error: KafkaError, reason: &str) {
        *self.last.lock() = Some((error.rdkafka_error_code(), format!("{error}: {reason}")));
    }
}

impl ConsumerContext for CheckContext {}

/// How long [`check_brokers`] waits for an answer.
const CHECK_TIMEOUT: Duration = Duration::from_secs(15);

/// Checks that the brokers answer with these settings (address, TLS, SASL): a wrong password or
/// CA then fails the start at once with what the client said, instead of the clients retrying
/// forever; an unreachable broker fails after [`CHECK_TIMEOUT`].
pub fn check_brokers(k: &KafkaConfig) -> Result<(), KafkaSourceError> {
    let client: BaseConsumer<CheckContext> = client_config(k)
        .create_with_context(CheckContext::default())
        .map_err(kafka("creating a Kafka client"))?;
    let started = std::time::Instant::now();
    let problem = loop {
        let attempt = client.fetch_metadata(None, Duration::from_secs(1));
        // The client's own errors (a refused handshake, say) reach the context on a poll.
        let _ = client.poll(Duration::from_millis(100));
        let last = client.context().last.lock().take();
        let refused = last.as_ref().is_some_and(|(code, _)| {
            matches!(
                code,
                Some(RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SSL)
            )
        });
        match attempt {
            Ok(_) => return Ok(()),
            Err(e) if refused || started.elapsed() >= CHECK_TIMEOUT => {
                break match last {
                    Some((_, why)) => format!("{e}; {why}"),
                    None => e.to_string(),
                };
            }
            Err(_) => {}
        }
    };
    Err(KafkaSourceError::Unreachable {
        brokers: k.brokers.clone(),
        protocol: k.security_protocol.as_librdkafka(),
        problem,
    })
}

/// Creates the inventory, orders and dead-letter topics if they are missing, with
/// `kafka.create_partitions` partitions (one for the dead-letter topic) and replication 1: for
/// local runs and tests; production topics are made by their owners (`create_partitions = 0`).
pub async fn ensure_topics(k: &KafkaConfig) -> Result<(), KafkaSourceError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;
    if k.create_partitions <= 0 {
        return Ok(());
    }
    let admin: AdminClient<DefaultClientContext> = client_config(k)
        .create()
        .map_err(kafka("creating the Kafka admin client"))?;
    let topics = [
        NewTopic::new(
            &k.inventory_topic,
            k.create_partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(
            &k.orders_topic,
            k.create_partitions,
            TopicReplication::Fixed(1),
        ),
        NewTopic::new(&k.dead_letter_topic, 1, TopicReplication::Fixed(1)),
    ];
    let opts = AdminOptions::new()
        .operation_timeout(Some(START_TIMEOUT))
        .request_timeout(Some(START_TIMEOUT));
    let results = admin
        .create_topics(&topics, &opts)
        .await
        .map_err(kafka("creating topics"))?;
    for r in results {
        match r {
            Ok(name) => tracing::info!(topic = %name, "created topic"),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => {
                return Err(KafkaSourceError::Kafka {
                    what: format!("creating topic {name:?}"),
                    source: KafkaError::AdminOp(code),
                })
            }
        }
    }
    Ok(())
}
