//! One writer among replicas: a lease row in ClickHouse.
//!
//! Replicas read the same log and compute the same answers, but the versions of their rows are
//! their own pipeline times, so two writers could put an older value above a newer one. Only
//! the holder of the lease writes. The row `(name, holder, expires, version)` lives in a
//! `ReplacingMergeTree(version)` table; every third of the lease's duration each replica reads
//! it and, if the lease is its own or has lapsed, writes itself in with a new expiry, then reads
//! it back; it starts writing only when a second look, a third of the duration later, still
//! finds it the holder (two that wrote themselves in at once may each read themselves back
//! the first time, never the second). A holder writes only until a third of the duration
//! before its expiry, checked before every insert, and a successor takes over only after the
//! expiry: with clocks within a third of the duration of each other, and inserts bounded by a
//! third of it, two writers never overlap. Works on every
//! ClickHouse version the sink supports (no transactions, no keeper).

use clickhouse::Client;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The lease's table, in the sink's database.
pub fn ddl(database: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {database}.sink_lease (\
         name String, holder String, expires UInt64, version UInt64) \
         ENGINE = ReplacingMergeTree(version) ORDER BY name"
    )
}

#[derive(clickhouse::Row, serde::Serialize, serde::Deserialize)]
struct LeaseRow {
    name: String,
    holder: String,
    expires: u64,
    version: u64,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// This replica's view of the lease.
pub struct Lease {
    holder: String,
    ttl: Duration,
    /// Writes are allowed until this instant (a third of the duration before the expiry).
    writable_until: Option<Instant>,
    /// The last look found this replica the holder, for the first time: it writes once a
    /// second look, a third of the duration later, finds it so again.
    candidate: bool,
    next_try: Instant,
}

impl Lease {
    /// For the replica named `holder`, leases of `ttl`.
    pub fn new(holder: String, ttl: Duration) -> Self {
        metrics::gauge!("stockflow_clickhouse_writer").set(0.0);
        Lease {
            holder,
            ttl,
            writable_until: None,
            candidate: false,
            next_try: Instant::now(),
        }
    }

    /// Whether this replica may write now.
    pub fn held(&self) -> bool {
        self.writable_until.is_some_and(|u| Instant::now() < u)
    }

    /// Renews or takes the lease if it is due (every third of the duration); returns whether
    /// this replica holds it. A failure to reach ClickHouse keeps the previous answer until
    /// its time runs out.
    pub async fn refresh(&mut self, client: &Client) -> bool {
        if Instant::now() < self.next_try {
            return self.held();
        }
        let started = Instant::now();
        self.next_try = started + self.ttl / 3;
        match self.try_refresh(client).await {
            Ok(mine) => {
                let was = self.held();
                if mine && (was || self.candidate) {
                    // Counted from before the attempt: the row's expiry is at least this late.
                    self.writable_until = Some(started + self.ttl * 2 / 3);
                } else {
                    // Newly won: not yet. Two replicas that found it free at once may both have
                    // read themselves back (the second insert landed after the first one's
                    // read); a third of the duration later both read the one the table kept.
                    self.candidate = mine;
                    self.writable_until = None;
                }
                let mine = self.held();
                if mine != was {
                    tracing::info!(holder = %self.holder, writer = mine, "the ClickHouse writer lease changed hands");
                    metrics::gauge!("stockflow_clickhouse_writer").set(f64::from(u8::from(mine)));
                }
            }
            Err(e) => tracing::warn!(error = %e, "renewing the ClickHouse writer lease failed"),
        }
        self.held()
    }

    async fn current(client: &Client) -> Result<Option<LeaseRow>, clickhouse::error::Error> {
        let rows = client
            .query("SELECT ?fields FROM sink_lease FINAL WHERE name = 'writer'")
            .fetch_all::<LeaseRow>()
            .await?;
        Ok(rows.into_iter().next())
    }

    async fn try_refresh(&self, client: &Client) -> Result<bool, clickhouse::error::Error> {
        let now = now_ms();
        let free = match Self::current(client).await? {
            None => true,
            Some(row) => row.holder == self.holder || row.expires < now,
        };
        if !free {
            return Ok(false);
        }
        let mut insert = client.insert::<LeaseRow>("sink_lease").await?;
        insert
            .write(&LeaseRow {
                name: "writer".into(),
                holder: self.holder.clone(),
                expires: now + self.ttl.as_millis() as u64,
                version: now,
            })
            .await?;
        insert.end().await?;
        // Two replicas may have written at once: the table keeps one, and both read it back.
        Ok(Self::current(client)
            .await?
            .is_some_and(|row| row.holder == self.holder))
    }
}
