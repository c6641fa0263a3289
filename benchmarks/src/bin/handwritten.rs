//! The hand-written baseline: what one would build instead of stockflow in an afternoon.
//! rdkafka consumers (THREADS of them, splitting the partitions as stockflow's workers do) or the
//! same generator stockflow's demo runs on decode each record with
//! stockflow's own decoder and folds it into a `HashMap` of stock under a lock; warp serves
//! `GET /v1/stock/{sku}` from it. No dataflow, no reservation re-evaluation, no expiry, no
//! windows, no de-duplication, no offsets tied to durability, no consistency point.
//!
//! ```text
//! handwritten kafka BROKERS INVENTORY_TOPIC ORDERS_TOPIC [THREADS]  # every record, from the beginning
//! handwritten generator RATE                                # the demo generator, RATE events/s
//! ```
//!
//! Prints `listening on ADDR`; `GET /stats` answers `{"applied": N, "rejected": M}`.

use parking_lot::RwLock;
use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::Message;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use stockflow_benchmarks::kafka::non_committing_consumer;
use stockflow_benchmarks::HashMapFold;
use stockflow_ingest::generator::Generator;
use stockflow_ingest::{Polled, RawRecord, Source};
use stockflow_types::config::GeneratorConfig;
use stockflow_types::event::decode;

#[derive(serde::Serialize)]
struct Stock<'a> {
    sku: &'a str,
    on_hand: i64,
    locations: Vec<Location<'a>>,
}

#[derive(serde::Serialize)]
struct Location<'a> {
    location: &'a str,
    on_hand: i64,
}

#[derive(Default)]
struct Shared {
    fold: RwLock<HashMapFold>,
    applied: AtomicU64,
    rejected: AtomicU64,
}

impl Shared {
    /// Decodes a batch, then applies it under one write lock.
    fn apply<'a>(&self, values: impl Iterator<Item = &'a [u8]>) {
        let mut events = Vec::new();
        for v in values {
            match decode(v) {
                Ok(ev) => events.push(ev),
                Err(_) => {
                    self.rejected.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        let mut fold = self.fold.write();
        for ev in &events {
            fold.apply(ev);
        }
        self.applied
            .fetch_add(events.len() as u64, Ordering::Relaxed);
    }
}

/// Consumer `thread` of `threads` reads partitions `p` with `p % threads == thread` (the split
/// stockflow's workers use).
fn consume_kafka(shared: &Shared, brokers: &str, topics: &[String], thread: usize, threads: usize) {
    let consumer = non_committing_consumer(brokers, "handwritten-baseline");
    let mut tpl = TopicPartitionList::new();
    for topic in topics {
        let meta = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .expect("metadata");
        for t in meta.topics() {
            for p in t.partitions() {
                if p.id() as usize % threads == thread {
                    tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                        .expect("partition");
                }
            }
        }
    }
    consumer.assign(&tpl).expect("assign");
    let mut batch: Vec<Vec<u8>> = Vec::with_capacity(1024);
    loop {
        let mut wait = Duration::from_millis(100);
        while batch.len() < 1024 {
            match consumer.poll(wait) {
                Some(Ok(m)) => batch.push(m.payload().unwrap_or_default().to_vec()),
                Some(Err(e)) => eprintln!("handwritten: {e}"),
                None => break,
            }
            wait = Duration::ZERO;
        }
        shared.apply(batch.iter().map(Vec::as_slice));
        batch.clear();
    }
}

fn generate(shared: &Shared, rate: u64) {
    let cfg = GeneratorConfig {
        rate,
        ..GeneratorConfig::default()
    };
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let mut g = Generator::new(&cfg, 0, 1, Arc::new(now));
    let mut out: Vec<RawRecord> = Vec::new();
    loop {
        match g.poll(now(), 1024, &mut out) {
            Polled::Records => {
                shared.apply(out.iter().map(|r| r.value.as_slice()));
                out.clear();
            }
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let shared = Arc::new(Shared::default());
    match args.first().map(String::as_str) {
        Some("kafka") if (4..=5).contains(&args.len()) => {
            let threads: usize = args.get(4).map_or(1, |t| t.parse().expect("THREADS"));
            for thread in 0..threads {
                let (s, brokers) = (Arc::clone(&shared), args[1].clone());
                let topics = [args[2].clone(), args[3].clone()];
                std::thread::spawn(move || consume_kafka(&s, &brokers, &topics, thread, threads));
            }
        }
        Some("generator") if args.len() == 2 => {
            let (s, rate) = (Arc::clone(&shared), args[1].parse().expect("RATE"));
            std::thread::spawn(move || generate(&s, rate));
        }
        _ => {
            eprintln!("usage: handwritten kafka BROKERS INVENTORY_TOPIC ORDERS_TOPIC [THREADS] | handwritten generator RATE");
            std::process::exit(2);
        }
    }
    // One HTTP thread, as stockflow runs in the lookup benchmark.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        use warp::Filter;
        let st = Arc::clone(&shared);
        let stock = warp::path!("v1" / "stock" / String).map(move |sku: String| {
            let fold = st.fold.read();
            match fold.stock.get(&sku) {
                Some(locs) => {
                    let mut locations: Vec<Location> = locs
                        .iter()
                        .map(|(location, v)| Location {
                            location,
                            on_hand: v.on_hand,
                        })
                        .collect();
                    locations.sort_unstable_by_key(|l| l.location);
                    let body = Stock {
                        on_hand: locations.iter().map(|l| l.on_hand).sum(),
                        sku: &sku,
                        locations,
                    };
                    warp::reply::with_status(warp::reply::json(&body), warp::http::StatusCode::OK)
                }
                None => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"title": "unknown SKU"})),
                    warp::http::StatusCode::NOT_FOUND,
                ),
            }
        });
        let st = Arc::clone(&shared);
        let stats = warp::path!("stats").map(move || {
            warp::reply::json(&serde_json::json!({
                "applied": st.applied.load(Ordering::Relaxed),
                "rejected": st.rejected.load(Ordering::Relaxed),
            }))
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        println!("listening on {}", listener.local_addr().expect("address"));
        warp::serve(stock.or(stats)).incoming(listener).run().await;
    });
}
