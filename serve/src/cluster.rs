//! Lookups across processes, and read-your-writes.
//!
//! In a cluster each SKU has one owner worker (`types::topology`, the rules the
//! dataflow's exchange follows), so one process holds its stock, windows and reservations. A
//! lookup that reaches another process is forwarded to the owner's (one loopback or LAN hop,
//! measured in docs/benchmarks.md); a reservation id carries no SKU, so a process that does not
//! hold it asks the id's owner process, which knows the id's SKU (`dataflow::ids`) and passes
//! the request on to the SKU's owner. The top-sellers lists are published on every process.
//!
//! Read-your-writes: `?min_offsets=inventory:3:1234,orders:0:99` makes a lookup wait (at most
//! `http.max_wait`) until every named offset has been admitted, by whichever process reads its
//! partition, and the answer's `as_of` has passed the time it was admitted at.

use crate::problem::Problem;
use http_body_util::BodyExt;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflow::views::ViewStore;
use stockflow_types::admissions::{Admission, Admissions};
use stockflow_types::topology::Topology;
use stockflow_types::Millis;
use warp::http::{header, StatusCode};
use warp::reply::Response;

/// The header a forwarded lookup carries (the sender's process index): it is answered where it
/// lands, never forwarded again.
pub const FORWARDED: &str = "x-stockflow-forwarded";

/// How lookups find their data: the cluster, if any, and what read-your-writes needs.
#[derive(Debug)]
pub struct Routing {
    /// The processes of the cluster; `None` for a single process.
    pub cluster: Option<Cluster>,
    /// Which pipeline time this process admitted each offset of its partitions at.
    pub admissions: Arc<Admissions>,
    /// How long a `min_offsets` wait may last.
    pub max_wait: Duration,
    /// With a Kafka source, the topics of the inventory and orders streams (`min_offsets` names
    /// either the stream or the topic); `None`: no offsets to wait for.
    pub topics: Option<[String; 2]>,
}

impl Default for Routing {
    fn default() -> Self {
        Routing {
            cluster: None,
            admissions: Arc::default(),
            max_wait: Duration::from_secs(5),
            topics: None,
        }
    }
}

/// The processes of a cluster, as HTTP sees them.
#[derive(Debug)]
pub struct Cluster {
    /// This process's index.
    pub process: usize,
    /// Workers per process.
    pub workers: usize,
    /// Every process's HTTP address (`host:port`), by index.
    pub http: Vec<String>,
    /// How long a forwarded lookup may take.
    pub timeout: Duration,
    client: Client<HttpConnector, String>,
}

impl Cluster {
    /// For process `process` of `http.len()`, each with `workers` workers.
    pub fn new(process: usize, workers: usize, http: Vec<String>, timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Cluster {
            process,
            workers: workers.max(1),
            http,
            timeout,
            client,
        }
    }

    /// The cluster's shape, as this process sees it.
    pub fn topology(&self) -> Topology {
        Topology {
            process: self.process,
            processes: self.http.len(),
            workers: self.workers,
        }
    }

    /// The process that owns `sku`, if it is another one.
    pub fn owner_elsewhere(&self, sku: &str) -> Option<usize> {
        let p = self.topology().sku_process(sku);
        (p != self.process).then_some(p)
    }

    /// The process whose worker owns reservation id `id`: it knows the id's SKU.
    pub fn id_owner(&self, id: &str) -> usize {
        self.topology().id_process(id)
    }

    /// The process that reads `partition` (every topic spreads its partitions the same way
    /// over the cluster's workers).
    pub fn reader_of(&self, partition: i32) -> usize {
        self.topology().reader_process(partition)
    }

    /// The other processes.
    pub fn others(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.http.len()).filter(move |p| *p != self.process)
    }

    /// `GET path_and_query` on process `process`, marked as forwarded, within `timeout`; its
    /// answer as it is.
    pub async fn get_within(
        &self,
        process: usize,
        path_and_query: &str,
        timeout: Duration,
    ) -> Result<Response, Problem> {
        let addr = &self.http[process];
        let request = hyper::Request::get(format!("http://{addr}{path_and_query}"))
            .header(FORWARDED, self.process.to_string())
            .body(String::new())
            .map_err(|e| Problem::bad_request(format!("cannot forward this request: {e}")))?;
        let outcome = tokio::time::timeout(timeout, async {
            let response = self.client.request(request).await.map_err(|e| {
                Problem::unavailable(format!(
                    "process {process} of the cluster ({addr}), which holds this key, is unreachable: {e}"
                ))
            })?;
            let (parts, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| {
                Problem::unavailable(format!(
                    "process {process} of the cluster ({addr}) broke off its answer: {e}"
                ))
            })?;
            let mut r = Response::new(bytes.to_bytes().into());
            *r.status_mut() = parts.status;
            if let Some(ct) = parts.headers.get(header::CONTENT_TYPE) {
                r.headers_mut().insert(header::CONTENT_TYPE, ct.clone());
            }
            Ok(r)
        })
        .await;
        let result = outcome.unwrap_or_else(|_| {
            Err(Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "process {process} of the cluster ({addr}), which holds this key, did not answer within {} ms (cluster.forward_timeout, plus http.max_wait for min_offsets)",
                    timeout.as_millis()
                ),
            ))
        });
        let outcome = match &result {
            Ok(_) => "ok",
            Err(p) if p.status == 504 => "timeout",
            Err(_) => "unreachable",
        };
        metrics::counter!("stockflow_http_forwarded_total", "outcome" => outcome).increment(1);
        result
    }
}

/// One `topic:partition:offset` of `min_offsets`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wanted {
    /// The topic (a stream's name is resolved to its topic).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The offset that must be reflected.
    pub offset: i64,
}

/// Parses `min_offsets`: comma-separated `stream-or-topic:partition:offset`.
pub fn parse_min_offsets(raw: &str, topics: &[String; 2]) -> Result<Vec<Wanted>, Problem> {
    let bad = |item: &str, why: &str| {
        Problem::bad_request(format!(
            "min_offsets: {item:?} {why}; expected comma-separated topic:partition:offset, e.g. inventory:3:1234,orders:0:99"
        ))
    };
    let mut out = Vec::new();
    for item in raw.split(',') {
        let mut fields = item.rsplitn(3, ':');
        let (Some(offset), Some(partition), Some(topic)) =
            (fields.next(), fields.next(), fields.next())
        else {
            return Err(bad(item, "does not have three fields"));
        };
        let topic = match topic {
            "inventory" => topics[0].clone(),
            "orders" => topics[1].clone(),
            t if topics.iter().any(|known| known == t) => t.to_owned(),
            _ => return Err(bad(item, "names neither stream nor one of their topics")),
        };
        let partition: i32 = partition
            .parse()
            .ok()
            .filter(|p| *p >= 0)
            .ok_or_else(|| bad(item, "has no valid partition"))?;
        let offset: i64 = offset
            .parse()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| bad(item, "has no valid offset"))?;
        out.push(Wanted {
            topic,
            partition,
            offset,
        });
    }
    if out.len() > 64 {
        return Err(Problem::bad_request("min_offsets: at most 64 offsets"));
    }
    Ok(out)
}

/// How often a wait looks again.
const POLL: Duration = Duration::from_millis(1);

/// Waits until every `wanted` offset is admitted (here or by the process that reads it) and
/// `store.as_of()` has passed its admission time; 504 once `routing.max_wait` has run out.
pub async fn wait_reflected(
    routing: &Routing,
    store: &ViewStore,
    wanted: &[Wanted],
) -> Result<(), Problem> {
    let started = Instant::now();
    let deadline = started + routing.max_wait;
    let mut until: Millis = 0;
    for w in wanted {
        let t = match &routing.cluster {
            Some(c) if c.reader_of(w.partition) != c.process => {
                admitted_elsewhere(c, w, deadline).await?
            }
            _ => admitted_here(&routing.admissions, w, deadline).await?,
        };
        until = until.max(t);
    }
    while store.as_of() < until {
        if Instant::now() >= deadline {
            return Err(timed_out(
                routing,
                &format!(
                    "the offsets were admitted at pipeline time {until}, but the views are complete only through {}",
                    store.as_of()
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
    metrics::histogram!("stockflow_http_read_your_writes_wait_seconds")
        .record(started.elapsed().as_secs_f64());
    Ok(())
}

fn timed_out(routing: &Routing, why: &str) -> Problem {
    metrics::counter!("stockflow_http_read_your_writes_timeouts_total").increment(1);
    Problem::new(
        StatusCode::GATEWAY_TIMEOUT,
        format!(
            "min_offsets not reflected within {} ms (http.max_wait): {why}",
            routing.max_wait.as_millis()
        ),
    )
}

async fn admitted_here(
    admissions: &Admissions,
    w: &Wanted,
    deadline: Instant,
) -> Result<Millis, Problem> {
    loop {
        if let Admission::At(t) = admissions.admitted(&w.topic, w.partition, w.offset) {
            return Ok(t);
        }
        if Instant::now() >= deadline {
            metrics::counter!("stockflow_http_read_your_writes_timeouts_total").increment(1);
            return Err(Problem::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "min_offsets not reflected in time (http.max_wait): {}:{}:{} has not been read yet",
                    w.topic, w.partition, w.offset
                ),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Asks the process that reads the partition when it admitted the offset (it waits, up to the
/// deadline, on its side).
async fn admitted_elsewhere(c: &Cluster, w: &Wanted, deadline: Instant) -> Result<Millis, Problem> {
    let left = deadline.saturating_duration_since(Instant::now());
    let path = format!(
        "/internal/v1/admitted?topic={}&partition={}&offset={}&wait_ms={}",
        percent_encoding::utf8_percent_encode(&w.topic, percent_encoding::NON_ALPHANUMERIC),
        w.partition,
        w.offset,
        left.as_millis()
    );
    let response = c
        .get_within(
            c.reader_of(w.partition),
            &path,
            left + Duration::from_millis(500),
        )
        .await?;
    let status = response.status();
    let body = response.into_body();
    let bytes = http_body_util::BodyExt::collect(body)
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let value: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    if status == StatusCode::OK {
        if let Some(t) = value["admitted_at"].as_u64() {
            return Ok(t);
        }
    }
    let detail = value["detail"].as_str().unwrap_or("no detail").to_owned();
    Err(Problem::new(
        StatusCode::from_u16(status.as_u16())
            .ok()
            .filter(|s| s.is_server_error())
            .unwrap_or(StatusCode::BAD_GATEWAY),
        detail,
    ))
}

/// `GET /internal/v1/admitted`: when this process admitted `topic`/`partition`/`offset`,
/// waiting up to `wait_ms` (bounded by `http.max_wait`).
pub async fn admitted_answer(
    routing: &Routing,
    q: &std::collections::HashMap<String, String>,
) -> Result<serde_json::Value, Problem> {
    let field = |name: &str| {
        q.get(name)
            .ok_or_else(|| Problem::bad_request(format!("{name} is required")))
    };
    let topic = field("topic")?.clone();
    let partition = field("partition")?
        .parse()
        .map_err(|_| Problem::bad_request("partition: not a number"))?;
    let offset = field("offset")?
        .parse()
        .map_err(|_| Problem::bad_request("offset: not a number"))?;
    let wait = q
        .get("wait_ms")
        .and_then(|w| w.parse().ok())
        .map_or(Duration::ZERO, Duration::from_millis)
        .min(routing.max_wait);
    let w = Wanted {
        topic,
        partition,
        offset,
    };
    let t = admitted_here(&routing.admissions, &w, Instant::now() + wait).await?;
    Ok(serde_json::json!({ "admitted_at": t }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use stockflow_dataflow::ledger::{owner, sku_hash};

    #[test]
    fn min_offsets_parse_streams_and_topics() {
        let topics = ["inv-t".to_string(), "ord-t".to_string()];
        let w = parse_min_offsets("inventory:3:1234,ord-t:0:99", &topics).unwrap();
        assert_eq!(
            w,
            vec![
                Wanted {
                    topic: "inv-t".into(),
                    partition: 3,
                    offset: 1234
                },
                Wanted {
                    topic: "ord-t".into(),
                    partition: 0,
                    offset: 99
                }
            ]
        );
        for bad in ["", "inventory:3", "x:0:1", "orders:-1:5", "orders:0:x"] {
            assert_eq!(
                parse_min_offsets(bad, &topics).unwrap_err().status,
                400,
                "{bad}"
            );
        }
    }

    #[test]
    fn owners_agree_with_the_dataflow() {
        let c = Cluster::new(
            1,
            2,
            vec!["a".into(), "b".into(), "c".into()],
            Duration::ZERO,
        );
        for sku in ["A", "B", "SKU-1", "SKU-2", "x"] {
            let process = owner(sku_hash(sku), 6) / 2;
            assert_eq!(c.owner_elsewhere(sku), (process != 1).then_some(process));
        }
        assert_eq!(c.reader_of(2), 1);
        assert_eq!(c.reader_of(7), 0);
    }
}
