//! Machine lists at fleet scale (`store::query`): every filter the dashboard offers, paged
//! with a cursor and a bounded read, returns on both backends exactly the machines that the
//! dashboard's own rules (`view::machine_state`, `MachineFilter::matches`) select from the
//! whole table; the schema step that adds version keys fills them for machines stored before.

use jiff::{SignedDuration, Timestamp};
use slipway_api::wire::EventKind;
use slipway_server::dashboard::view::{self, MachineFilter, MachineState};
use slipway_server::rollout;
use slipway_server::store::{
    self, ChannelRecord, EventRecord, MachineCheck, MachineQuery, MachineRecord, PageRequest, Store,
};

use crate::harness::{Backend, database_url, t0};

/// A small deterministic generator (xorshift), so a failure can be replayed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }

    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[self.below(from.len())]
    }
}

const VERSIONS: &[&str] = &[
    "1.0.0",
    "1.9.9",
    "2.0.0",
    "2.0.1",
    "2.0.0+build.5",
    "3.0.0-beta.2",
    "3.0.0-rc.1",
    "3.0.0-rc.1.1",
    "3.0.0-rc.10",
    "3.0.0",
    "10.0.0",
];

fn channel(name: &str, target: Option<&str>) -> ChannelRecord {
    ChannelRecord {
        name: name.into(),
        target: target.map(|t| t.parse().unwrap()),
        waves: rollout::immediate(),
        promoted_at: Some(t0()),
        paused: false,
        gating: None,
        updated_at: t0(),
    }
}

/// `n` machines over four channels (one without a target; some never checked, created by an
/// event), versions that sort differently as text and as semver, every last event, silences
/// on both sides of the stale limit. Returns the channels and the time to judge them at.
async fn fleet(s: &dyn Store, n: usize, seed: u64) -> (Vec<ChannelRecord>, Timestamp) {
    let channels = vec![
        channel("stable", Some("2.0.0")),
        channel("beta", Some("3.0.0-rc.1")),
        channel("edge", None),
    ];
    for c in &channels {
        s.put_channel(c).await.unwrap();
    }
    let now = t0() + SignedDuration::from_hours(3);
    let mut rng = Rng(seed);
    let mut checks = Vec::new();
    let mut events = Vec::new();
    for i in 0..n {
        let id = format!(
            "{}-{i:05}",
            rng.pick(&["node", "edge", "gpu", "db", "Node"])
        );
        let seen = now - SignedDuration::from_secs(rng.below(2 * 3600) as i64);
        if rng.below(20) > 0 {
            checks.push(MachineCheck {
                id: id.clone(),
                channel: rng
                    .pick(&["stable", "stable", "beta", "edge", "other"])
                    .into(),
                group: rng.pick(&["", "rack-a", "Rack-B", "zone1"]).into(),
                version: rng.pick(VERSIONS).parse().unwrap(),
                arch: "x86_64".into(),
                boot_id: format!("boot-{i}"),
                at: seen - SignedDuration::from_secs(60),
            });
        }
        let kind = match rng.below(12) {
            0 => EventKind::Downloading,
            1 => EventKind::Staged,
            2 => EventKind::Rebooting,
            3 => EventKind::Booted,
            4 => EventKind::Failed,
            5 => EventKind::RolledBack,
            6 | 7 => EventKind::Healthy,
            _ => continue,
        };
        events.push(EventRecord {
            id: 0,
            machine_id: id,
            version: rng.pick(VERSIONS).parse().unwrap(),
            event: kind,
            detail: "boom".into(),
            transfer: None,
            at: seen,
        });
    }
    s.record_checks(&checks).await.unwrap();
    for e in &events {
        s.record_event(e).await.unwrap();
    }
    (channels, now)
}

/// Every machine, straight from the table.
async fn everything(s: &dyn Store) -> Vec<MachineRecord> {
    let mut all: Vec<MachineRecord> = Vec::new();
    loop {
        let after = all.last().map(|m| m.id.clone());
        let page = s.machines(None, after.as_deref(), 1000).await.unwrap();
        let done = page.len() < 1000;
        all.extend(page);
        if done {
            return all;
        }
    }
}

/// Pages through the matches of `filter`; checks each page's shape; returns every id listed.
async fn listed(
    s: &dyn Store,
    filter: &MachineFilter,
    channels: &[ChannelRecord],
    now: Timestamp,
    limit: u32,
    scan: u32,
) -> Vec<String> {
    let q = filter.query(channels, now);
    let mut out: Vec<String> = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..10_000 {
        let page = s
            .machine_page(
                &q,
                &PageRequest {
                    after: after.clone(),
                    limit,
                    scan,
                },
            )
            .await
            .unwrap();
        assert!(page.machines.len() <= limit as usize, "{filter:?}");
        // What a request reads is bounded: its budget, or at most four times the last window.
        assert!(page.scanned <= u64::from(scan.max(limit + 1)), "{filter:?}");
        for m in &page.machines {
            assert!(
                out.last().is_none_or(|l| *l < m.id),
                "{filter:?}: {} out of order",
                m.id
            );
            assert!(after.as_ref().is_none_or(|a| *a < m.id), "{filter:?}");
            out.push(m.id.clone());
        }
        match page.next {
            Some(next) => {
                assert!(
                    after.as_ref().is_none_or(|a| *a < next),
                    "{filter:?}: no progress"
                );
                after = Some(next);
            }
            None => return out,
        }
    }
    panic!("{filter:?}: no end");
}

fn filters() -> Vec<MachineFilter> {
    let mut out = Vec::new();
    let bases = [
        MachineFilter::default(),
        MachineFilter {
            channel: Some("stable".into()),
            ..Default::default()
        },
        MachineFilter {
            channel: Some("beta".into()),
            version: Some("3.0.0-rc.1".into()),
            ..Default::default()
        },
        MachineFilter {
            version: Some("2.0.0+build.5".into()),
            ..Default::default()
        },
        MachineFilter {
            prefix: Some("gpu-0".into()),
            ..Default::default()
        },
        MachineFilter {
            prefix: Some("Node".into()),
            channel: Some("edge".into()),
            ..Default::default()
        },
        MachineFilter {
            group: Some("Rack-B".into()),
            ..Default::default()
        },
        MachineFilter {
            q: Some("RACK".into()),
            ..Default::default()
        },
        MachineFilter {
            q: Some("e-001".into()),
            group: Some("zone1".into()),
            ..Default::default()
        },
    ];
    for base in bases {
        out.push(base.clone());
        for st in MachineState::ALL {
            out.push(MachineFilter {
                state: Some(st.as_str().into()),
                ..base.clone()
            });
        }
    }
    out
}

async fn lists_match_the_dashboard_rules(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, &dir).await;
    let s = store::open(&url, 4).await.unwrap();
    let (channels, now) = fleet(&*s, 1500, 0x5eed_1234).await;
    let rows = view::rows(everything(&*s).await, &channels, now);
    // A twentieth neither checked nor reported an event: never stored.
    assert!(rows.len() > 1400, "{}", rows.len());
    let n = rows.len() as u32;
    // Every state occurs, so each filter is tried on something.
    for st in MachineState::ALL {
        let n = rows.iter().filter(|r| r.state == st).count();
        assert!(n > 0, "no machine is {st:?}");
    }
    let mut nonempty = 0;
    for f in filters() {
        let want: Vec<String> = rows
            .iter()
            .filter(|r| f.matches(r))
            .map(|r| r.machine.id.clone())
            .collect();
        nonempty += usize::from(!want.is_empty());
        // Short reads (many pages, some empty with a cursor) and a read that never runs out.
        assert_eq!(
            listed(&*s, &f, &channels, now, 37, 150).await,
            want,
            "{f:?}"
        );
        assert_eq!(
            listed(&*s, &f, &channels, now, 100, 1_000_000).await,
            want,
            "{f:?}"
        );
    }
    assert!(nonempty > 50, "only {nonempty} filters matched anything");

    // With an unbounded read, every page but the last is full and the last says it is last.
    let q = MachineQuery::default();
    let page = s
        .machine_page(
            &q,
            &PageRequest {
                after: None,
                limit: n,
                scan: 1_000_000,
            },
        )
        .await
        .unwrap();
    assert_eq!(page.machines.len(), rows.len());
    assert_eq!(page.next, None, "the whole table in one page is the last");
    let page = s
        .machine_page(
            &q,
            &PageRequest {
                after: None,
                limit: n - 1,
                scan: 1_000_000,
            },
        )
        .await
        .unwrap();
    let second_last = &rows[rows.len() - 2].machine.id;
    assert_eq!(page.next.as_deref(), Some(second_last.as_str()));

    // A rare match past a long run of others: a bounded read stops with a cursor and no
    // rows, and reading on finds it.
    let last = &rows.last().unwrap().machine.id;
    let q = MachineQuery {
        text: Some(last.to_ascii_uppercase()),
        ..Default::default()
    };
    let first = s
        .machine_page(
            &q,
            &PageRequest {
                after: None,
                limit: 10,
                scan: 300,
            },
        )
        .await
        .unwrap();
    assert!(first.machines.is_empty());
    assert_eq!(first.scanned, 300);
    assert_eq!(first.next.as_deref(), Some(rows[299].machine.id.as_str()));
}

#[tokio::test]
async fn machine_lists_match_the_dashboard_rules_sqlite() {
    lists_match_the_dashboard_rules(Backend::Sqlite).await;
}

#[tokio::test]
async fn machine_lists_match_the_dashboard_rules_postgres() {
    lists_match_the_dashboard_rules(Backend::Postgres).await;
}

/// Machines stored before version keys existed get theirs when the schema step runs: the
/// step is undone by hand (column, indexes, its record) and the store reopened.
async fn version_keys_are_filled_for_machines_stored_before(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, &dir).await;
    let s = store::open(&url, 2).await.unwrap();
    let (channels, now) = fleet(&*s, 300, 77).await;
    let behind = MachineFilter {
        state: Some("behind".into()),
        ..Default::default()
    };
    let before = listed(&*s, &behind, &channels, now, 1000, 1_000_000).await;
    assert!(!before.is_empty());
    s.close().await;
    drop(s);
    let undo = "DROP INDEX machines_failed; DROP INDEX machines_updating;
        ALTER TABLE machines DROP COLUMN vkey;
        DELETE FROM schema_migrations WHERE version = 6;";
    match backend {
        Backend::Sqlite => {
            let path = url.strip_prefix("sqlite://").unwrap();
            let c = rusqlite::Connection::open(path).unwrap();
            c.execute_batch(undo).unwrap();
        }
        Backend::Postgres => {
            let (c, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            c.batch_execute(&format!(
                "DROP INDEX machines_by_version; DROP INDEX machines_by_group; {undo}"
            ))
            .await
            .unwrap();
        }
    }
    let s = store::open(&url, 2).await.unwrap();
    assert_eq!(
        listed(&*s, &behind, &channels, now, 1000, 1_000_000).await,
        before
    );
}

#[tokio::test]
async fn version_keys_are_filled_for_machines_stored_before_sqlite() {
    version_keys_are_filled_for_machines_stored_before(Backend::Sqlite).await;
}

#[tokio::test]
async fn version_keys_are_filled_for_machines_stored_before_postgres() {
    version_keys_are_filled_for_machines_stored_before(Backend::Postgres).await;
}
