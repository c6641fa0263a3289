//! HTTP lookups over the stockflow views (warp on tokio).
//!
//! Every answer is read from the [`ViewStore`] that the dataflow publishes into: handlers never
//! wait for, lock or wake a dataflow worker, so reads scale with HTTP threads and cannot slow
//! ingestion. Each answer carries the pipeline time `as_of` it is consistent as of.
//!
//! ```no_run
//! # async fn demo(state: std::sync::Arc<stockflow_serve::ServeState>) {
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await.unwrap();
//! let options = stockflow_serve::ServeOptions::of(&Default::default());
//! stockflow_serve::serve(listener, state, options, std::future::pending()).await;
//! # }
//! ```

pub mod api;
pub mod cluster;
pub mod forecast_api;
mod help;
pub mod problem;
pub mod quality_api;

pub use help::describe_metrics;

use metrics_exporter_prometheus::PrometheusHandle;
use problem::Problem;
use serde::Serialize;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;
use stockflow_dataflow::clock::Clock;
use stockflow_dataflow::views::ViewStore;
use stockflow_types::progress::Progress;
use warp::http::{header, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection};

/// The live page (`GET /`), embedded in the binary.
const PAGE: &str = include_str!("page.html");

/// Histogram buckets, in seconds, of every other duration (ClickHouse inserts, checkpoint writes
/// and restores): 1 ms to 2 minutes.
pub const DURATION_BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];

/// Latency buckets of the HTTP histogram, seconds: 50 µs to 1 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// What the handlers share.
#[derive(Debug)]
pub struct ServeState {
    /// The views.
    pub store: Arc<ViewStore>,
    /// Renders `/metrics`.
    pub metrics: Option<PrometheusHandle>,
    /// For freshness and readiness.
    pub clock: Arc<dyn Clock>,
    /// `/readyz` fails when the pipeline is further behind the clock than this.
    pub ready_max_lag_ms: u64,
    /// What the sources and sinks report, for `/readyz`.
    pub progress: Arc<Progress>,
    /// The other processes of a cluster, and read-your-writes.
    pub routing: cluster::Routing,
}

/// One lookup request, before it is answered.
struct Lookup {
    s: Arc<ServeState>,
    t0: Instant,
    path_and_query: String,
    query: String,
    forwarded: bool,
}

impl Lookup {
    /// Answers from the process that owns `sku` (forwarded there if it is another one), after
    /// the request's `min_offsets` are reflected; `local` reads this process's views.
    async fn answer<T: Serialize>(
        self,
        route: &'static str,
        sku: Option<&str>,
        local: impl FnOnce(&ServeState, &HashMap<String, String>) -> Result<T, Problem>,
    ) -> Response {
        let owner = match (&self.s.routing.cluster, sku) {
            (Some(c), Some(sku)) if !self.forwarded => c.owner_elsewhere(sku).map(|p| (c, p)),
            _ => None,
        };
        if let Some((c, process)) = owner {
            if let Some(why) = self.s.progress.stopped() {
                return answer::<()>(route, self.t0, Err(api::stopped(&why)));
            }
            // The owner waits for `min_offsets` itself: the query goes along.
            let response = match c
                .get_within(process, &self.path_and_query, self.forward_timeout(c))
                .await
            {
                Ok(r) => r,
                Err(p) => problem_response(&p),
            };
            record(route, response.status(), self.t0);
            return response;
        }
        let result = self.ready().await.and_then(|q| local(&self.s, &q));
        answer(route, self.t0, result)
    }

    /// How long a forwarded copy of this request may take: a `min_offsets` wait on the other
    /// side comes on top of the hop.
    fn forward_timeout(&self, c: &cluster::Cluster) -> std::time::Duration {
        if self.query.contains("min_offsets") {
            c.timeout + self.s.routing.max_wait
        } else {
            c.timeout
        }
    }

    /// The query, once the dataflow is known to be running and `min_offsets` are reflected.
    async fn ready(&self) -> Result<HashMap<String, String>, Problem> {
        if let Some(why) = self.s.progress.stopped() {
            return Err(api::stopped(&why));
        }
        let q = parse_query(&self.query)?;
        if let Some(raw) = q.get("min_offsets") {
            let Some(topics) = &self.s.routing.topics else {
                return Err(Problem::bad_request(
                    "min_offsets needs a Kafka source (this process reads no topics)",
                ));
            };
            let wanted = cluster::parse_min_offsets(raw, topics)?;
            cluster::wait_reflected(&self.s.routing, &self.s.store, &wanted).await?;
        }
        Ok(q)
    }

    /// A reservation by id: it lives with its SKU's owner, and the id does not say which SKU.
    /// The id's owner process knows it ([`stockflow_dataflow::ids`]): a process that does not
    /// hold the reservation asks the id's owner, which answers, or passes the request on to the
    /// SKU's owner (at most two hops; a forwarded request is passed on only by the id's owner).
    async fn reservation(self, id: &str) -> Response {
        const ROUTE: &str = "/v1/reservations/{reservation_id}";
        let here = self
            .ready()
            .await
            .and_then(|_| api::reservation(&self.s.store, id));
        let next = match (&here, &self.s.routing.cluster) {
            (Err(p), Some(c)) if p.status == 404 => {
                let id_owner = c.id_owner(id);
                if id_owner == c.process {
                    self.s
                        .store
                        .registry()
                        .sku_of(id)
                        .and_then(|sku| c.owner_elsewhere(&sku))
                        .map(|p| (c, p))
                } else if !self.forwarded {
                    Some((c, id_owner))
                } else {
                    None
                }
            }
            _ => None,
        };
        let Some((c, process)) = next else {
            return answer(ROUTE, self.t0, here);
        };
        let response = match c
            .get_within(process, &self.path_and_query, self.forward_timeout(c))
            .await
        {
            Ok(r) => r,
            Err(p) => problem_response(&p),
        };
        record(ROUTE, response.status(), self.t0);
        response
    }
}

fn json_response<T: Serialize>(
    status: StatusCode,
    content_type: &'static str,
    body: &T,
) -> Response {
    let bytes = serde_json::to_vec(body).expect("response bodies serialize");
    body_response(status, content_type, bytes)
}

fn body_response(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response {
    let mut r = Response::new(body.into());
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    r
}

fn problem_response(p: &Problem) -> Response {
    json_response(
        StatusCode::from_u16(p.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        "application/problem+json",
        p,
    )
}

fn answer<T: Serialize>(
    route: &'static str,
    started: Instant,
    result: Result<T, Problem>,
) -> Response {
    let response = match result {
        Ok(body) => json_response(StatusCode::OK, "application/json", &body),
        Err(p) => problem_response(&p),
    };
    record(route, response.status(), started);
    response
}

fn record(route: &'static str, status: StatusCode, started: Instant) {
    metrics::counter!("stockflow_http_requests_total", "route" => route, "status" => status.as_str().to_owned()).increment(1);
    metrics::histogram!("stockflow_http_request_duration_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
}

fn parse_query(raw: &str) -> Result<HashMap<String, String>, Problem> {
    serde_urlencoded::from_str(raw)
        .map_err(|_| Problem::bad_request("the query string is malformed"))
}

fn segment(raw: String) -> String {
    percent_encoding::percent_decode_str(&raw)
        .decode_utf8_lossy()
        .into_owned()
}

/// All routes of contract §3.
pub fn routes(
    state: Arc<ServeState>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone + Send + Sync + 'static {
    let st = move || {
        let s = Arc::clone(&state);
        warp::any().map(move || Arc::clone(&s))
    };
    let start = || warp::any().map(Instant::now);
    // The raw query (empty if none), parsed in the handler so that a malformed one is a 400
    // rather than silently ignored.
    let query = || warp::query::raw().or(warp::any().map(String::new)).unify();

    // Lookups: where the key lives (this process, or the owner's, in a cluster), after
    // `min_offsets` are reflected if asked.
    let lookup = || {
        st().and(start())
            .and(warp::path::full())
            .and(query())
            .and(warp::header::optional::<String>(cluster::FORWARDED))
            .map(
                |s, t0, path: warp::path::FullPath, q: String, fwd: Option<String>| Lookup {
                    s,
                    t0,
                    path_and_query: if q.is_empty() {
                        path.as_str().to_owned()
                    } else {
                        format!("{}?{q}", path.as_str())
                    },
                    query: q,
                    forwarded: fwd.is_some(),
                },
            )
    };
    let stock = warp::path!("v1" / "stock" / String).and(lookup()).then(
        |sku: String, l: Lookup| async move {
            let sku = segment(sku);
            l.answer("/v1/stock/{sku}", Some(&sku), |s, _| {
                api::stock(&s.store, &sku)
            })
            .await
        },
    );
    let location = warp::path!("v1" / "stock" / String / String)
        .and(lookup())
        .then(|sku: String, loc: String, l: Lookup| async move {
            let (sku, loc) = (segment(sku), segment(loc));
            l.answer("/v1/stock/{sku}/{location}", Some(&sku), |s, _| {
                api::location_stock(&s.store, &sku, &loc)
            })
            .await
        });
    let reservation = warp::path!("v1" / "reservations" / String)
        .and(lookup())
        .then(|id: String, l: Lookup| async move {
            let id = segment(id);
            l.reservation(&id).await
        });
    let sku_reservations =
        warp::path!("v1" / "reservations")
            .and(lookup())
            .then(|l: Lookup| async move {
                let sku = parse_query(&l.query)
                    .ok()
                    .and_then(|q| q.get("sku").cloned());
                l.answer("/v1/reservations", sku.as_deref(), |s, q| {
                    api::reservations_of_sku(&s.store, q)
                })
                .await
            });
    // The live page: one HTML file with its script and style, no build step, no other request
    // than the API's own.
    let page = warp::path::end().and(start()).map(|t0| {
        let mut r = body_response(StatusCode::OK, "text/html; charset=utf-8", PAGE.into());
        r.headers_mut().insert(
            header::CONTENT_SECURITY_POLICY,
            header::HeaderValue::from_static(
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self' data:",
            ),
        );
        record("/", r.status(), t0);
        r
    });
    let analytics = warp::path!("v1" / "analytics" / "sku" / String)
        .and(lookup())
        .then(|sku: String, l: Lookup| async move {
            let sku = segment(sku);
            l.answer("/v1/analytics/sku/{sku}", Some(&sku), |s, q| {
                api::analytics(&s.store, &sku, q)
            })
            .await
        });
    // Every process holds the top-sellers lists of the whole cluster.
    let top = warp::path!("v1" / "analytics" / "top")
        .and(lookup())
        .then(|l: Lookup| async move {
            l.answer("/v1/analytics/top", None, |s, q| api::top(&s.store, q))
                .await
        });
    // Forecasts: a key's from its SKU's owner; the ranking and the evaluation of this process.
    let forecast = warp::path!("v1" / "forecast" / String / String)
        .and(lookup())
        .then(|sku: String, loc: String, l: Lookup| async move {
            let (sku, loc) = (segment(sku), segment(loc));
            l.answer("/v1/forecast/{sku}/{location}", Some(&sku), |s, _| {
                forecast_api::forecast(&s.store, &sku, &loc)
            })
            .await
        });
    let at_risk = warp::path!("v1" / "forecast" / "at-risk")
        .and(lookup())
        .then(|l: Lookup| async move {
            l.answer("/v1/forecast/at-risk", None, |s, q| {
                forecast_api::at_risk(&s.store, q, s.routing.cluster.is_some())
            })
            .await
        });
    let evaluation = warp::path!("v1" / "forecast" / "evaluation")
        .and(lookup())
        .then(|l: Lookup| async move {
            l.answer("/v1/forecast/evaluation", None, |s, _| {
                forecast_api::evaluation(&s.store, s.routing.cluster.is_some())
            })
            .await
        });
    // For the other processes of a cluster: when this one admitted an offset (read-your-writes).
    let admitted = warp::path!("internal" / "v1" / "admitted")
        .and(query())
        .and(st())
        .and(start())
        .then(|q: String, s: Arc<ServeState>, t0| async move {
            let result = match parse_query(&q) {
                Ok(q) => cluster::admitted_answer(&s.routing, &q).await,
                Err(p) => Err(p),
            };
            answer("/internal/v1/admitted", t0, result)
        });
    let healthz = warp::path!("healthz")
        .and(st())
        .and(start())
        .map(|s: Arc<ServeState>, t0| {
            answer::<api::Health>("/healthz", t0, Ok(api::healthz(&s.store)))
        });
    let readyz = warp::path!("readyz")
        .and(st())
        .and(start())
        .map(|s: Arc<ServeState>, t0| {
            answer(
                "/readyz",
                t0,
                api::readyz(&s.store, &s.progress, s.clock.now_ms(), s.ready_max_lag_ms),
            )
        });
    let metrics_route =
        warp::path!("metrics")
            .and(st())
            .and(start())
            .map(|s: Arc<ServeState>, t0| {
                let r = body_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    render_metrics(&s).into(),
                );
                record("/metrics", r.status(), t0);
                r
            });
    let openapi =
        warp::path!("openapi.json")
            .and(st())
            .and(start())
            .map(|s: Arc<ServeState>, t0| {
                let doc = api::openapi_document(&s.store, s.routing.topics.as_ref());
                let body = serde_json::to_vec_pretty(&doc).expect("the document serializes");
                let r = body_response(StatusCode::OK, "application/json", body);
                record("/openapi.json", r.status(), t0);
                r
            });

    // Boxed in groups: one chain of every route is a type too deep for the compiler to check.
    let lookups = stock
        .or(location)
        .unify()
        .or(reservation)
        .unify()
        .or(sku_reservations)
        .unify()
        .or(analytics)
        .unify()
        .or(top)
        .unify()
        .boxed();
    let quality = warp::path!("v1" / "quality")
        .and(lookup())
        .then(|l: Lookup| async move {
            l.answer("/v1/quality", None, |s, q| {
                quality_api::quality(&s.store, q, s.routing.cluster.is_some())
            })
            .await
        });
    let forecasts = at_risk
        .or(evaluation)
        .unify()
        .or(forecast)
        .unify()
        .or(quality)
        .unify()
        .boxed();
    warp::get()
        .and(
            lookups
                .or(forecasts)
                .unify()
                .or(admitted)
                .unify()
                .or(healthz)
                .unify()
                .or(readyz)
                .unify()
                .or(metrics_route)
                .unify()
                .or(openapi)
                .unify()
                .or(page)
                .unify(),
        )
        .recover(|rejection: Rejection| async move {
            let p = if rejection.is_not_found() {
                Problem::not_found("no such resource; see /openapi.json")
            } else if rejection.find::<warp::reject::MethodNotAllowed>().is_some() {
                Problem::new(StatusCode::METHOD_NOT_ALLOWED, "only GET is supported")
            } else if rejection.find::<warp::reject::InvalidQuery>().is_some() {
                Problem::bad_request("the query string is malformed")
            } else {
                Problem::bad_request(format!("the request was not understood: {rejection:?}"))
            };
            let mut r = problem_response(&p);
            if r.status() == StatusCode::METHOD_NOT_ALLOWED {
                // RFC 9110: a 405 lists the methods that are allowed.
                r.headers_mut()
                    .insert(header::ALLOW, header::HeaderValue::from_static("GET"));
            }
            record("unmatched", r.status(), Instant::now());
            Ok::<_, Infallible>(r)
        })
        .unify()
}

fn render_metrics(s: &ServeState) -> String {
    let as_of = s.store.as_of();
    let now = s.clock.now_ms();
    metrics::gauge!("stockflow_pipeline_time_seconds").set(as_of as f64 / 1000.0);
    metrics::gauge!("stockflow_freshness_seconds").set(now.saturating_sub(as_of) as f64 / 1000.0);
    metrics::gauge!("stockflow_view_skus").set(s.store.sku_count() as f64);
    metrics::gauge!("stockflow_view_reservations").set(s.store.reservation_count() as f64);
    forecast_api::record_metrics(&s.store);
    quality_api::record_metrics(&s.store);
    match &s.metrics {
        Some(h) => {
            static PROCESS: std::sync::OnceLock<metrics_process::Collector> =
                std::sync::OnceLock::new();
            PROCESS
                .get_or_init(|| {
                    let c = metrics_process::Collector::default();
                    c.describe();
                    c
                })
                .collect();
            h.run_upkeep();
            h.render()
        }
        None => String::new(),
    }
}

/// What bounds the server's connections (`[http]` of the configuration), and the access log.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// One line per request at target `stockflow::access` (`log.access`).
    pub access_log: bool,
    /// A connection that has not sent a whole request header this long after it started one
    /// (or after it opened) is closed.
    pub header_read_timeout: std::time::Duration,
    /// Writing one answer may take at most this; then the connection is closed.
    pub write_timeout: std::time::Duration,
    /// Open connections at most; beyond it new ones are closed at once.
    pub max_connections: usize,
}

impl ServeOptions {
    /// The options of `settings`.
    pub fn of(settings: &stockflow_types::config::Settings) -> Self {
        let cfg = &settings.http;
        ServeOptions {
            access_log: settings.log.access,
            header_read_timeout: cfg.header_read_timeout,
            write_timeout: cfg.write_timeout,
            max_connections: cfg.max_connections,
        }
    }
}

/// Serves the API on `listener` until `shutdown` completes, then lets the requests in flight
/// finish. HTTP/1.1 with keep-alive; each connection is bounded by `options`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<ServeState>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let filter = routes(state);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(options.max_connections));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: wait rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            metrics::counter!("stockflow_http_connections_refused_total").increment(1);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let svc = warp::service(filter.clone());
        let access_log = options.access_log;
        let svc = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let mut svc = svc.clone();
            let access = access_log.then(|| {
                (
                    Instant::now(),
                    req.method().clone(),
                    req.uri().path().to_owned(),
                )
            });
            async move {
                // Handlers never wait (they read published snapshots): what bounds a request
                // is reading its header and writing its answer, both timed on the socket.
                let response = match tower_service::Service::call(&mut svc, req).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                if let Some((started, method, path)) = access {
                    tracing::info!(
                        target: "stockflow::access",
                        %method,
                        path,
                        status = response.status().as_u16(),
                        micros = started.elapsed().as_micros() as u64,
                        peer = %peer,
                        "request"
                    );
                }
                Ok::<_, Infallible>(response)
            }
        });
        let mut io = tokio_io_timeout::TimeoutStream::new(stream);
        io.set_write_timeout(Some(options.write_timeout));
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(options.header_read_timeout)
            .serve_connection(TokioIo::new(Box::pin(io)), svc);
        let conn = graceful.watch(conn);
        metrics::gauge!("stockflow_http_connections_open").increment(1.0);
        tokio::spawn(async move {
            // Closed by the client, by a timeout, or by a malformed request: nothing to report.
            if let Err(e) = conn.await {
                let timed_out = std::error::Error::source(&e)
                    .and_then(|s| s.downcast_ref::<std::io::Error>())
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::TimedOut);
                if timed_out {
                    metrics::counter!("stockflow_http_write_timeouts_total").increment(1);
                }
                tracing::debug!(error = %e, "HTTP connection ended");
            }
            metrics::gauge!("stockflow_http_connections_open").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    graceful.shutdown().await;
}
