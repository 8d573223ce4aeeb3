//! `bench-retention`: how big the database grows over a simulated year of checks at the
//! retention settings (the server's defaults unless told otherwise). `--machines` machines each
//! check every `--interval` of simulated time, and every check also reports a `checked` event
//! (what engines do); the store is written as the server writes it: checks recorded, each event
//! stored, a machine's `checked` events trimmed to `--events-per-machine` after every
//! `Retention::TRIM_EVERY`th event, events, adoption samples and cluster history pruned after
//! every round of checks (the server prunes every 10 minutes of real time; pruning a simulated
//! hour at once keeps at most an hour's events longer, and counting a million events six
//! times per simulated hour would make the year take hours), adoption sampled every 5 simulated
//! minutes over the last 31 days (older samples are pruned at the 30-day default anyway, and
//! sampling costs time, not size). At the end of each simulated month it prints the events kept
//! and the database's size.
//!
//! `cargo run --release -p slipway-server --bin bench-retention -- [--machines 1000]
//! [--interval 1h] [--days 365] [--database postgres://...]`

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use slipway_api::wire::EventKind;
use slipway_server::store::{self, ChannelRecord, EventRecord, MachineCheck, Retention};

#[derive(Parser)]
#[command(about = "Database size after a simulated year of checks at the retention settings")]
struct Args {
    /// Machines checking.
    #[arg(long, default_value_t = 1000)]
    machines: usize,
    /// Simulated time between a machine's checks (`1h`, `5m`).
    #[arg(long, default_value = "1h", value_parser = duration)]
    interval: Duration,
    /// Simulated days.
    #[arg(long, default_value_t = 365)]
    days: u64,
    /// Events older than this go (the server's default).
    #[arg(long, default_value = "30d", value_parser = duration)]
    events_max_age: Duration,
    /// At most this many events are kept (the server's default).
    #[arg(long, default_value_t = 1_000_000)]
    events_max_count: u64,
    /// At most this many `checked` events per machine (the server's default).
    #[arg(long, default_value_t = 1000)]
    events_per_machine: u64,
    /// The database (default: a new SQLite file in a temporary directory).
    #[arg(long)]
    database: Option<String>,
}

fn duration(s: &str) -> Result<Duration, String> {
    slipway_server::rollout::duration_text::parse(s)
}

fn machine_id(i: usize) -> String {
    format!("{i:032x}")
}

/// Events kept and the database's size in bytes.
async fn measure(database: &str, dir: &std::path::Path) -> Result<(u64, u64)> {
    if database.starts_with("sqlite://") {
        let path = database.trim_start_matches("sqlite://");
        let c = rusqlite::Connection::open(path)?;
        let n: i64 = c.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        let bytes: u64 = std::fs::read_dir(dir)?
            .filter_map(|e| e.ok()?.metadata().ok())
            .map(|m| m.len())
            .sum();
        Ok((n as u64, bytes))
    } else {
        let (c, conn) = tokio_postgres::connect(database, tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        let n: i64 = c
            .query_one("SELECT COUNT(*) FROM events", &[])
            .await?
            .get(0);
        let bytes: i64 = c
            .query_one("SELECT pg_database_size(current_database())", &[])
            .await?
            .get(0);
        Ok((n as u64, bytes as u64))
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
}

async fn run(args: Args) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let database = args
        .database
        .clone()
        .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("slipway.db").display()));
    let store = store::open(&database, 16).await?;
    let retention = Retention {
        max_age: args.events_max_age,
        max_count: args.events_max_count,
        per_machine: args.events_per_machine,
    };
    let start: Timestamp = "2026-01-01T00:00:00Z".parse()?;
    store
        .put_channel(&ChannelRecord {
            name: "stable".into(),
            target: Some("2.0.0".parse()?),
            waves: slipway_server::rollout::immediate(),
            promoted_at: Some(start),
            paused: false,
            gating: None,
            updated_at: start,
        })
        .await?;
    let step = SignedDuration::try_from(args.interval)?;
    let end = start + SignedDuration::from_hours(24 * args.days as i64);
    let (prune_every, sample_every) = (SignedDuration::from_mins(10), SignedDuration::from_mins(5));
    let sample_from = end - SignedDuration::from_hours(24 * 31);
    println!(
        "{} machines checking every {:?} for {} days on {}; retention: {:?}, {} events, {} checked per machine",
        args.machines,
        args.interval,
        args.days,
        store.backend(),
        args.events_max_age,
        args.events_max_count,
        args.events_per_machine
    );
    println!(
        "{:>5} {:>12} {:>12} {:>12} {:>9}",
        "day", "events sent", "events kept", "size MiB", "elapsed"
    );
    let started = Instant::now();
    let (mut now, mut next_prune, mut next_sample) = (start, start, sample_from);
    let mut sent: u64 = 0;
    let mut month = 1;
    while now < end {
        // Every machine checks once this round, spread over the interval.
        let checks: Vec<MachineCheck> = (0..args.machines)
            .map(|i| MachineCheck {
                id: machine_id(i),
                channel: "stable".into(),
                group: String::new(),
                version: if i % 3 == 0 { "1.0.0" } else { "2.0.0" }.parse().unwrap(),
                arch: "x86_64".into(),
                boot_id: "boot".into(),
                at: now,
            })
            .collect();
        for batch in checks.chunks(1000) {
            store.record_checks(batch).await?;
        }
        let results: Vec<Result<()>> = futures::stream::iter(0..args.machines)
            .map(|i| {
                let store = store.clone();
                async move {
                    let machine_id = machine_id(i);
                    let id = store
                        .record_event(&EventRecord {
                            id: 0,
                            machine_id: machine_id.clone(),
                            version: "2.0.0".parse().unwrap(),
                            event: EventKind::Checked,
                            detail: "up to date".into(),
                            transfer: None,
                            at: now,
                        })
                        .await?;
                    if id % Retention::TRIM_EVERY == 0 {
                        store
                            .trim_machine_events(&machine_id, retention.per_machine)
                            .await?;
                    }
                    Ok(())
                }
            })
            .buffer_unordered(256)
            .collect()
            .await;
        for r in results {
            r?;
        }
        sent += args.machines as u64;
        let next = now + step;
        if next_prune <= next {
            store.prune_events(retention, next).await?;
            store.prune_adoption(retention.max_age, next).await?;
            store.prune_cluster_history(retention.max_age, next).await?;
            next_prune = next + prune_every;
        }
        while next >= sample_from && next_sample <= next {
            store.sample_adoption(next_sample).await?;
            next_sample += sample_every;
        }
        now = next;
        let day = now.duration_since(start).as_hours() / 24;
        if day >= 30 * month || now >= end {
            month += 1;
            let (kept, bytes) = measure(&database, dir.path())
                .await
                .context("measuring the database")?;
            println!(
                "{day:>5} {sent:>12} {kept:>12} {:>12.1} {:>8.0}s",
                bytes as f64 / (1 << 20) as f64,
                started.elapsed().as_secs_f64()
            );
        }
    }
    store.close().await;
    Ok(())
}
