//! Forgetting in bounded slices: when the log frontier jumps past many forgetting timers at
//! once (an idle partition that wakes, a replay after a long stop), the ledger fires at most
//! `forget_per_time` of them per pipeline time, keeps itself scheduled until it has caught up,
//! and ends exactly where forgetting everything at once ends.

use std::sync::Arc;
use stockflow_dataflow::ledger::LedgerState;
use stockflow_dataflow::views::{ReservationLookup, ViewStore};
use stockflow_dataflow::{Control, EngineConfig, Record};
use stockflow_types::event::{Event, EventKind};

const TICK: u64 = 10;
const N: usize = 200;

fn event(id: String, sku: &str, ts: u64, kind: EventKind) -> Event {
    Event {
        event_id: id,
        sku: sku.into(),
        ts,
        kind,
    }
}

/// `N` reservations over 20 SKUs, each released, and windows: all read at log time 1..N.
fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..N {
        let sku = format!("S{}", i % 20);
        let id = format!("r{i}");
        let lt = 1 + i as u64;
        for (n, kind) in [
            EventKind::Received {
                location: "L".into(),
                qty: 3,
            },
            EventKind::Reserved {
                reservation_id: id.clone(),
                location: "L".into(),
                qty: 1,
                expires_at: 1 << 40,
            },
            EventKind::Released {
                reservation_id: id.clone(),
            },
        ]
        .into_iter()
        .enumerate()
        {
            out.push(Record {
                log_time: lt,
                event: event(format!("e{i}-{n}"), &sku, lt, kind),
            });
        }
    }
    out
}

struct Outcome {
    /// Per pipeline time after the jump: how far forgetting had got.
    progress: Vec<u64>,
    store: Arc<ViewStore>,
}

/// Applies the records at time 10, then moves the log frontier far ahead at time 20 and keeps
/// processing the times the ledger asks for.
fn run(forget_per_time: usize) -> Outcome {
    let cfg = Arc::new(EngineConfig {
        retention_ms: 1_000,
        window_retention_ms: 1_000,
        dedup_window_ms: 1_000,
        forget_per_time,
        ..EngineConfig::for_tests(TICK)
    });
    let store = Arc::new(ViewStore::new(1, cfg.windows.clone(), cfg.top_k));
    let mut state = LedgerState::new(Arc::clone(&cfg), Arc::clone(&store), 1);
    let mut out = Vec::new();
    let frontier = |at| vec![Control::LogFrontier { worker: 0, at }];
    state.process(10, &mut records(), &frontier(N as u64), &mut out);
    assert_eq!(
        store.reservation_count(),
        N,
        "all released, none forgotten yet"
    );
    let jump = 1_000_000;
    state.process(20, &mut Vec::new(), &frontier(jump), &mut out);
    let mut progress = vec![state.forgotten_through()];
    while let Some(t) = state.next_timer() {
        assert!(progress.len() < 10 * N, "forgetting never catches up");
        state.process(t, &mut Vec::new(), &[], &mut out);
        progress.push(state.forgotten_through());
    }
    assert_eq!(
        state.forgotten_through(),
        jump,
        "caught up with the frontier"
    );
    Outcome { progress, store }
}

#[test]
fn a_jump_of_the_frontier_is_forgotten_in_slices_and_ends_where_all_at_once_ends() {
    let at_once = run(usize::MAX);
    assert_eq!(at_once.progress[0], 1_000_000, "at once, without a budget");
    // Reservations, orphans and windows: well over N timers, 7 a time.
    let sliced = run(7);
    assert!(
        sliced.progress.len() > N / 7,
        "forgot in {} times",
        sliced.progress.len()
    );
    assert!(
        sliced.progress.windows(2).all(|w| w[0] <= w[1]),
        "never goes back: {:?}",
        sliced.progress
    );
    for store in [&at_once.store, &sliced.store] {
        assert_eq!(store.reservation_count(), 0);
        for i in 0..N {
            assert!(matches!(
                store.lookup_reservation(&format!("r{i}")),
                ReservationLookup::Unknown | ReservationLookup::Forgotten { .. }
            ));
        }
    }
    for i in 0..20 {
        let sku = format!("S{i}");
        let stock = |s: &ViewStore| {
            let st = s.stock(&sku).expect("seen");
            let l = st.get("L").expect("seen");
            (l.on_hand, l.reserved)
        };
        assert_eq!(stock(&at_once.store), stock(&sliced.store));
        let windows = |s: &ViewStore| s.windows(&sku).map(|w| w.read().windows.len());
        assert_eq!(
            windows(&at_once.store),
            Some(0),
            "every window final and evicted"
        );
        assert_eq!(windows(&sliced.store), Some(0));
    }
}
