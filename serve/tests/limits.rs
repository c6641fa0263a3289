//! The server's limits over real sockets: a flood of connections that send half a request
//! header is closed within `header_read_timeout` while normal lookups keep answering,
//! connections beyond `max_connections` are closed at once, and a client that does not read
//! its answers is cut off after `write_timeout`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use stockflow_dataflow::clock::ManualClock;
use stockflow_dataflow::views::ViewStore;
use stockflow_dataflow::EngineConfig;
use stockflow_serve::{serve, ServeOptions, ServeState};
use stockflow_types::progress::Progress;

const HALF_HEADER: &[u8] = b"GET /v1/stock/A HTTP/1.1\r\nHost: x\r\nUser-Agent: slow";

/// A server on a free port with `options`, on a runtime of its own thread.
fn start(options: ServeOptions) -> SocketAddr {
    let cfg = EngineConfig::for_tests(10);
    let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
    let state = Arc::new(ServeState {
        store,
        metrics: None,
        clock: Arc::new(ManualClock::new(0)),
        ready_max_lag_ms: 5_000,
        progress: Arc::new(Progress::new(1, false, false)),
        routing: Default::default(),
    });
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                // A backlog that holds the whole flood: connections the kernel could not queue
                // would be accepted (and timed) only when the client retransmits.
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
                let listener = socket.listen(4096).unwrap();
                tx.send(listener.local_addr().unwrap()).unwrap();
                serve(listener, state, options, std::future::pending()).await;
            });
    });
    rx.recv().unwrap()
}

/// One lookup on a fresh connection: the status line.
fn lookup(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /v1/stock/A HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

/// Whether the server closed `s` (a read ends, or the connection was reset) or is closing it.
fn closed(mut s: &TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(1))).unwrap();
    let mut buf = [0u8; 512];
    match s.read(&mut buf) {
        // The end of the stream, or hyper's answer to a header that took too long.
        Ok(n) => n == 0 || buf[..n].starts_with(b"HTTP/1.1 408"),
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

#[test]
fn a_half_header_flood_is_closed_and_lookups_keep_answering() {
    let timeout = Duration::from_millis(800);
    let addr = start(ServeOptions {
        access_log: true,
        header_read_timeout: timeout,
        write_timeout: Duration::from_secs(5),
        max_connections: 10_000,
    });
    let started = Instant::now();
    let flood: Vec<TcpStream> = (0..2_000)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(HALF_HEADER).unwrap();
            s
        })
        .collect();
    // While the flood holds its connections, lookups are answered (404: no such SKU).
    for _ in 0..20 {
        assert_eq!(lookup(addr), "HTTP/1.1 404 Not Found");
    }
    // Every flood connection is closed once the timeout has passed (with slack for a loaded
    // machine), and the server still answers.
    let deadline = started + timeout + Duration::from_secs(10);
    loop {
        let open = flood.iter().filter(|s| !closed(s)).count();
        if open == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{open} half-header connections still open"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(lookup(addr), "HTTP/1.1 404 Not Found");
}

#[test]
fn connections_beyond_the_limit_are_closed_at_once() {
    let addr = start(ServeOptions {
        access_log: true,
        header_read_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_secs(5),
        max_connections: 50,
    });
    let mut held: Vec<TcpStream> = (0..50)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(HALF_HEADER).unwrap();
            s
        })
        .collect();
    // Give the server time to accept them all.
    std::thread::sleep(Duration::from_millis(300));
    let extra = TcpStream::connect(addr).unwrap();
    let t0 = Instant::now();
    while !closed(&extra) {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the connection over the limit stays open"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(held.iter().all(|s| !closed(s)), "held ones were closed");
    // Once one is released, a lookup gets its slot.
    drop(held.pop());
    let t0 = Instant::now();
    while lookup(addr) != "HTTP/1.1 404 Not Found" {
        assert!(t0.elapsed() < Duration::from_secs(5), "no slot came free");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_client_that_does_not_read_its_answers_is_disconnected() {
    let addr = start(ServeOptions {
        access_log: false,
        header_read_timeout: Duration::from_secs(30),
        write_timeout: Duration::from_millis(500),
        max_connections: 1,
    });
    // Thousands of pipelined requests for a large answer, never read: the answers fill the
    // socket buffers and the server's writes stall.
    let mut stuck = TcpStream::connect(addr).unwrap();
    let requests = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n".repeat(5_000);
    stuck.write_all(&requests).unwrap();
    // It holds the only connection slot until the write timeout closes it; then a lookup
    // gets the slot.
    let t0 = Instant::now();
    while lookup(addr) != "HTTP/1.1 404 Not Found" {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the stalled connection was not closed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(stuck);
}
