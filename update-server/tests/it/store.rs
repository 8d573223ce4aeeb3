//! The same store suite against SQLite and PostgreSQL: releases (idempotent, immutable),
//! advisories and floors, channel state, machines from checks and events, event retention,
//! and migrations that run once and survive reopening.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use semver::Version;
use slipway_api::wire::EventKind;
use slipway_server::rollout::Wave;
use slipway_server::store::{
    self, AdvisoryMark, ChannelRecord, EventRecord, MachineCheck, PutOutcome, ReleaseRecord,
    Retention,
};

use crate::harness::{Backend, database_url, t0};

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

fn release(channel: &str, version: &str, envelope: &str) -> ReleaseRecord {
    ReleaseRecord {
        channel: channel.into(),
        version: v(version),
        envelope: envelope.into(),
        manifest: "{}".into(),
        published_at: t0(),
        advisory: None,
        floor: false,
    }
}

fn event(machine: &str, kind: EventKind, detail: &str, at: Timestamp) -> EventRecord {
    EventRecord {
        id: 0,
        machine_id: machine.into(),
        version: v("2.0.0"),
        event: kind,
        detail: detail.into(),
        transfer: None,
        at,
    }
}

async fn suite(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let url = database_url(backend, &dir).await;
    let s = store::open(&url, 4).await.unwrap();
    assert_eq!(
        s.backend(),
        if backend == Backend::Sqlite {
            "sqlite"
        } else {
            "postgres"
        }
    );
    s.ping().await.unwrap();

    // Releases.
    assert_eq!(
        s.put_release(&release("stable", "1.0.0", "e1"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    assert_eq!(
        s.put_release(&release("stable", "1.0.0", "e1"))
            .await
            .unwrap(),
        PutOutcome::Unchanged
    );
    assert_eq!(
        s.put_release(&release("stable", "1.0.0", "e2"))
            .await
            .unwrap(),
        PutOutcome::Conflict
    );
    assert_eq!(
        s.put_release(&release("beta", "1.0.0", "e3"))
            .await
            .unwrap(),
        PutOutcome::Created
    );
    let mark = AdvisoryMark {
        id: "CVE-1".into(),
        summary: "bad".into(),
        marked_at: t0(),
    };
    assert!(
        s.set_advisory("stable", &v("1.0.0"), Some(&mark))
            .await
            .unwrap()
    );
    assert!(
        !s.set_advisory("stable", &v("9.0.0"), Some(&mark))
            .await
            .unwrap()
    );
    assert!(s.set_floor("beta", &v("1.0.0"), true).await.unwrap());
    assert!(!s.set_floor("nope", &v("1.0.0"), true).await.unwrap());
    let all = s.releases().await.unwrap();
    assert_eq!(all.len(), 2);
    let stable = all.iter().find(|r| r.channel == "stable").unwrap();
    assert_eq!(stable.advisory.as_ref(), Some(&mark));
    assert_eq!(stable.envelope, "e1");
    assert!(all.iter().find(|r| r.channel == "beta").unwrap().floor);
    assert!(s.set_advisory("stable", &v("1.0.0"), None).await.unwrap());

    // Channels.
    let mut ch = ChannelRecord {
        name: "stable".into(),
        target: Some(v("1.0.0")),
        waves: vec![Wave {
            after: Duration::from_secs(3600),
            fraction: 0.25,
        }],
        promoted_at: Some(t0()),
        paused: false,
        updated_at: t0(),
    };
    s.put_channel(&ch).await.unwrap();
    ch.paused = true;
    s.put_channel(&ch).await.unwrap();
    assert_eq!(s.channels().await.unwrap(), vec![ch]);

    // Machines from checks: created, then updated in place.
    let check = |id: &str, version: &str, at| MachineCheck {
        id: id.into(),
        channel: "stable".into(),
        group: "workers".into(),
        version: v(version),
        arch: "x86_64".into(),
        boot_id: "b1".into(),
        at,
    };
    let later = t0() + SignedDuration::from_secs(60);
    s.record_checks(&[check("m1", "1.0.0", t0()), check("m2", "1.0.0", t0())])
        .await
        .unwrap();
    s.record_checks(&[check("m1", "1.1.0", later)])
        .await
        .unwrap();
    let m1 = s.machine("m1").await.unwrap().unwrap();
    assert_eq!(
        (m1.version.clone(), m1.first_seen, m1.last_seen),
        (v("1.1.0"), t0(), later)
    );
    assert_eq!(m1.group, "workers");
    assert_eq!(s.machine_count().await.unwrap(), 2);
    assert!(s.machine("nobody").await.unwrap().is_none());
    let page = s.machines(Some("stable"), Some("m1"), 10).await.unwrap();
    assert_eq!(
        page.iter().map(|m| m.id.as_str()).collect::<Vec<_>>(),
        ["m2"]
    );
    assert!(s.machines(Some("beta"), None, 10).await.unwrap().is_empty());

    // Events: a failure sets last_error, healthy clears it and moves the version.
    let id1 = s
        .record_event(&event("m1", EventKind::Failed, "disk full", later))
        .await
        .unwrap();
    let m1 = s.machine("m1").await.unwrap().unwrap();
    assert_eq!(m1.last_error.as_deref(), Some("disk full"));
    assert_eq!(m1.last_event, Some(EventKind::Failed));
    assert_eq!(m1.version, v("1.1.0"));
    let id2 = s
        .record_event(&event("m1", EventKind::Healthy, "", later))
        .await
        .unwrap();
    assert!(id2 > id1);
    let m1 = s.machine("m1").await.unwrap().unwrap();
    assert_eq!((m1.last_error, m1.version), (None, v("2.0.0")));
    // An event from a machine never seen creates it.
    s.record_event(&event("m9", EventKind::Downloading, "", later))
        .await
        .unwrap();
    assert_eq!(s.machine("m9").await.unwrap().unwrap().channel, "");
    let evs = s.events(Some("m1"), 10).await.unwrap();
    assert_eq!(
        evs.iter().map(|e| e.event).collect::<Vec<_>>(),
        [EventKind::Healthy, EventKind::Failed]
    );

    // Staged events carry how the image came; totals per version sum them.
    let staged = |m: &str, image: u64, fetched: u64, delta: bool| {
        let mut e = event(m, EventKind::Staged, "slot B", later);
        e.transfer = Some(slipway_api::wire::Transfer {
            image_bytes: image,
            fetched_bytes: fetched,
            local_bytes: image - fetched.min(image),
            delta,
            fallback: if delta {
                String::new()
            } else {
                "no index".into()
            },
        });
        e
    };
    s.record_event(&staged("m1", 1000, 30, true)).await.unwrap();
    s.record_event(&staged("m2", 1000, 1000, false))
        .await
        .unwrap();
    s.record_event(&event("m2", EventKind::Staged, "no transfer", later))
        .await
        .unwrap();
    let back = s.events(Some("m1"), 1).await.unwrap();
    assert_eq!(back[0].transfer, staged("m1", 1000, 30, true).transfer);
    assert_eq!(
        s.transfer_totals().await.unwrap(),
        vec![store::TransferTotals {
            version: v("2.0.0"),
            staged: 2,
            deltas: 1,
            image_bytes: 2000,
            fetched_bytes: 1030,
        }]
    );

    // Retention: by count, then by age.
    for i in 0..10 {
        s.record_event(&event("m2", EventKind::Checked, &i.to_string(), later))
            .await
            .unwrap();
    }
    let keep5 = Retention {
        max_age: Duration::from_secs(86_400),
        max_count: 5,
    };
    assert_eq!(s.prune_events(keep5, later).await.unwrap(), 11);
    let left = s.events(None, 100).await.unwrap();
    assert_eq!(left.len(), 5);
    assert_eq!(left[0].detail, "9", "the newest are kept");
    let much_later = later + SignedDuration::from_secs(2 * 86_400);
    assert_eq!(s.prune_events(keep5, much_later).await.unwrap(), 5);
    assert!(s.events(None, 100).await.unwrap().is_empty());

    // Reopening runs no migration twice and keeps everything.
    s.close().await;
    drop(s);
    let s = store::open(&url, 4).await.unwrap();
    assert_eq!(s.releases().await.unwrap().len(), 2);
    assert_eq!(s.machine_count().await.unwrap(), 3);
}

#[tokio::test]
async fn store_suite_sqlite() {
    suite(Backend::Sqlite).await;
}

#[tokio::test]
async fn store_suite_postgres() {
    suite(Backend::Postgres).await;
}

#[tokio::test]
async fn a_bad_database_url_is_refused() {
    let err = store::open("mysql://x", 1).await.err().unwrap();
    assert_eq!(err.kind(), "config");
}
