//! Machine lists at fleet scale: a page of the machines matching some conditions, found by
//! reading the table in id order from a cursor, a bounded number of rows at a time, with the
//! conditions evaluated by the database.
//!
//! A condition that an index serves (an id prefix on both backends; a failed or updating
//! state on both through partial indexes; channel, version or group on PostgreSQL) drives the
//! read, so a rare match is found without reading the rest of the fleet. The others are
//! evaluated on the rows read, and a request reads at most [`PageRequest::scan`] rows: a
//! rare match that no index serves returns a short page with a cursor saying where the read
//! stopped, and the next request goes on from there. A request therefore costs what it reads,
//! never what the fleet holds.
//!
//! A machine's dashboard state (see `dashboard::view::machine_state`) is a function of stored
//! columns, the channels' targets and the time; it is written here as SQL, with versions
//! compared through the order-preserving [`version_key`] stored beside each version.

use jiff::Timestamp;
use semver::Version;

use super::MachineRecord;
use crate::dashboard::view::MachineState;
use crate::error::Result;

/// A text that sorts, byte by byte, as its version does by `semver`'s order (precedence, then
/// build metadata, as `Version`'s `Ord`); stored as `machines.vkey` so that SQL can say
/// "older than the target".
///
/// Numbers are written with their length first (so `10` sorts after `9`); a release sorts after
/// its prereleases (`~` after `-`); a prerelease's identifiers each start with a tag, numeric
/// (`0`) before alphanumeric (`1`), and alphanumeric ones end with `!`, below every character
/// an identifier may hold, so `alpha` sorts before `alpha-1`. Build metadata follows after a
/// `#`, which sorts below an identifier's tag (fewer prerelease identifiers sort first).
pub fn version_key(v: &Version) -> String {
    let mut k = String::with_capacity(24);
    for n in [v.major, v.minor, v.patch] {
        number(&mut k, &n.to_string());
    }
    if v.pre.is_empty() {
        k.push('~');
    } else {
        k.push('-');
        for id in v.pre.as_str().split('.') {
            if id.bytes().all(|b| b.is_ascii_digit()) {
                // semver compares numeric prerelease identifiers by length, then text.
                k.push('0');
                number(&mut k, id);
            } else {
                alphanumeric(&mut k, id);
            }
        }
    }
    if !v.build.is_empty() {
        k.push('#');
        for id in v.build.as_str().split('.') {
            if id.bytes().all(|b| b.is_ascii_digit()) {
                // semver compares numeric build identifiers without their leading zeros,
                // then by their full length (0 < 00 < 1 < 01).
                let trimmed = id.trim_start_matches('0');
                k.push('0');
                number(&mut k, trimmed);
                length(&mut k, id.len());
            } else {
                alphanumeric(&mut k, id);
            }
        }
    }
    k
}

/// A digit string, its length first.
fn number(k: &mut String, digits: &str) {
    length(k, digits.len());
    k.push_str(digits);
}

/// A length, sortable: how many digits it has, then the digits.
fn length(k: &mut String, n: usize) {
    let s = n.to_string();
    k.push(char::from(b'0' + s.len() as u8));
    k.push_str(&s);
}

fn alphanumeric(k: &mut String, id: &str) {
    k.push('1');
    k.push_str(id);
    k.push('!');
}

/// Conditions on machines, all of which a listed machine meets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MachineQuery {
    /// Its id starts with this (ids are `[A-Za-z0-9._-]`).
    pub prefix: Option<String>,
    /// Its channel.
    pub channel: Option<String>,
    /// Its version, as text (`2.0.0`).
    pub version: Option<String>,
    /// Its group.
    pub group: Option<String>,
    /// Its id or group contains this, ASCII letters in any case.
    pub text: Option<String>,
    /// Its dashboard state.
    pub state: Option<StateCondition>,
}

/// A dashboard state, with what deciding it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct StateCondition {
    /// The state.
    pub state: MachineState,
    /// Every channel's target.
    pub targets: Vec<(String, Version)>,
    /// A machine last seen before this is stale.
    pub stale_before: Timestamp,
}

/// Which page of the matches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// Machines with ids after this (a previous page's [`MachinePage::next`]).
    pub after: Option<String>,
    /// Most machines returned.
    pub limit: u32,
    /// Most machines read to find them (beyond what an index narrows).
    pub scan: u32,
}

/// A page of matching machines.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MachinePage {
    /// The matches, by id.
    pub machines: Vec<MachineRecord>,
    /// Where the next page starts (ids after this), when more may match: after the last match
    /// returned, or where the read stopped when it had read [`PageRequest::scan`] rows.
    pub next: Option<String>,
    /// Rows read.
    pub scanned: u64,
}

/// What one bounded read found: the matches among at most `window` rows after the cursor.
#[derive(Debug, Default)]
pub struct Window {
    /// Matches, by id, at most the number asked for.
    pub matches: Vec<MachineRecord>,
    /// The last id read.
    pub last: Option<String>,
    /// Rows read.
    pub read: u64,
}

/// The SQL dialect: how parameters are written and which conditions have an index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// `?1`; partial indexes for failed and updating machines.
    Sqlite,
    /// `$1`; also indexes on channel, version and group.
    Postgres,
}

/// A parameter value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Text.
    Text(String),
    /// An integer.
    Int(i64),
}

/// SQL text and its parameters, in order.
#[derive(Debug, Clone, PartialEq)]
pub struct Sql {
    /// The statement.
    pub text: String,
    /// Its parameters.
    pub params: Vec<Value>,
    dialect: Dialect,
}

impl Sql {
    fn new(dialect: Dialect) -> Self {
        Self {
            text: String::new(),
            params: Vec::new(),
            dialect,
        }
    }

    /// Adds a parameter, returning its placeholder.
    fn param(&mut self, v: Value) -> String {
        self.params.push(v);
        match self.dialect {
            Dialect::Sqlite => format!("?{}", self.params.len()),
            Dialect::Postgres => format!("${}", self.params.len()),
        }
    }

    fn text(&mut self, s: &str) -> String {
        self.param(Value::Text(s.to_owned()))
    }
}

/// The machine columns every backend reads, in `machine_row`'s order.
pub(crate) const MACHINE_COLUMNS: &str = "id, channel, grp, version, arch, boot_id, first_seen, \
     last_seen, last_event, last_event_at, last_error";

/// A failed machine, as its partial index `machines_failed` says it (written the same in the
/// schema, so both databases see that the index serves the query).
pub(crate) const FAILED_INDEXED: &str =
    "last_error IS NOT NULL AND last_event IN ('failed', 'rolled-back')";
/// A machine with an update in flight (not yet against its target), as `machines_updating`.
pub(crate) const UPDATING_INDEXED: &str =
    "last_event IN ('downloading', 'staged', 'rebooting', 'booted')";

/// The highest character a machine id may hold is `z`; every id that starts with a prefix
/// sorts below the prefix followed by this.
const ABOVE_ID_CHARS: char = '\u{7f}';

/// One bounded read: among at most `window` machines after `after` that the driving (indexed)
/// condition admits, the first `need` that meet every condition, with the last id read and
/// how many rows were read.
///
/// Columns: the machine columns and the version key (NULL when nothing matched), then the
/// last id read and the number read.
pub fn window_sql(q: &MachineQuery, after: &str, window: u32, need: u32, d: Dialect) -> Sql {
    let mut s = Sql::new(d);
    let after = s.text(after);
    // The driving condition: what an index serves, evaluated while reading.
    let mut drive = format!("id > {after}");
    if let Some(p) = &q.prefix {
        let lo = s.text(p);
        let hi = s.text(&format!("{p}{ABOVE_ID_CHARS}"));
        drive.push_str(&format!(" AND id >= {lo} AND id < {hi}"));
    }
    let state = q.state.as_ref().map(|c| c.state);
    match state {
        Some(MachineState::Failed) => drive.push_str(&format!(" AND {FAILED_INDEXED}")),
        Some(MachineState::Updating) => drive.push_str(&format!(" AND {UPDATING_INDEXED}")),
        _ if d == Dialect::Postgres => {
            // One column index at most: a second condition would make the read unbounded
            // (it would go on until `window` rows met both).
            if let Some(v) = &q.version {
                let v = s.text(v);
                drive.push_str(&format!(" AND version = {v}"));
            } else if let Some(g) = &q.group {
                let g = s.text(g);
                drive.push_str(&format!(" AND grp = {g}"));
            } else if let Some(c) = &q.channel {
                let c = s.text(c);
                drive.push_str(&format!(" AND channel = {c}"));
            }
        }
        _ => {}
    }
    // Every condition, on the rows read.
    let mut all: Vec<String> = Vec::new();
    if let Some(c) = &q.channel {
        all.push(format!("channel = {}", s.text(c)));
    }
    if let Some(v) = &q.version {
        all.push(format!("version = {}", s.text(v)));
    }
    if let Some(g) = &q.group {
        all.push(format!("grp = {}", s.text(g)));
    }
    if let Some(t) = &q.text {
        let t = s.text(&t.to_ascii_lowercase());
        all.push(match d {
            Dialect::Sqlite => format!("(instr(lower(id), {t}) > 0 OR instr(lower(grp), {t}) > 0)"),
            Dialect::Postgres => {
                format!("(strpos(lower(id), {t}) > 0 OR strpos(lower(grp), {t}) > 0)")
            }
        });
    }
    if let Some(c) = &q.state {
        all.push(state_sql(c, &mut s));
    }
    let all = if all.is_empty() {
        "1 = 1".to_owned()
    } else {
        all.join(" AND ")
    };
    let window = s.param(Value::Int(i64::from(window)));
    let need = s.param(Value::Int(i64::from(need)));
    s.text = format!(
        "WITH w AS (SELECT {MACHINE_COLUMNS}, vkey FROM machines WHERE {drive} ORDER BY id LIMIT {window})
         SELECT h.*, e.last, e.n
         FROM (SELECT MAX(id) AS last, COUNT(*) AS n FROM w) AS e
         LEFT JOIN (SELECT * FROM w WHERE {all} ORDER BY id LIMIT {need}) AS h ON 1 = 1
         ORDER BY h.id"
    );
    s
}

/// A dashboard state as SQL, in `machine_state`'s order: failed first, then an update in
/// flight, then silence, then the version against the channel's target.
fn state_sql(c: &StateCondition, s: &mut Sql) -> String {
    // Every parameter added is used: PostgreSQL cannot type one that is not.
    let failed =
        "(last_error IS NOT NULL AND COALESCE(last_event, '') IN ('failed', 'rolled-back'))";
    if c.state == MachineState::Failed {
        return failed.to_owned();
    }
    let needs_equal = matches!(c.state, MachineState::UpToDate | MachineState::Ahead);
    let mut older = Vec::new();
    let mut equal = Vec::new();
    let mut targeted = Vec::new();
    for (channel, target) in &c.targets {
        let ch = s.text(channel);
        let key = s.text(&version_key(target));
        older.push(format!("(channel = {ch} AND vkey < {key})"));
        if needs_equal {
            let text = s.text(&target.to_string());
            equal.push(format!("(channel = {ch} AND version = {text})"));
        }
        targeted.push(ch);
    }
    let any = |v: &[String]| {
        if v.is_empty() {
            "1 = 0".to_owned()
        } else {
            format!("({})", v.join(" OR "))
        }
    };
    let (older, equal) = (any(&older), any(&equal));
    let targeted = if targeted.is_empty() {
        "1 = 0".to_owned()
    } else {
        format!("channel IN ({})", targeted.join(", "))
    };
    let updating = format!(
        "(COALESCE(last_event, '') IN ('downloading', 'staged', 'rebooting', 'booted') AND {older})"
    );
    if c.state == MachineState::Updating {
        return format!("NOT {failed} AND {updating}");
    }
    let stale = format!(
        "last_seen < {}",
        s.param(Value::Int(c.stale_before.as_millisecond()))
    );
    let settled = format!("NOT {failed} AND NOT {updating} AND NOT {stale}");
    match c.state {
        MachineState::Stale => format!("NOT {failed} AND NOT {updating} AND {stale}"),
        MachineState::NoTarget => format!("{settled} AND NOT {targeted}"),
        MachineState::UpToDate => format!("{settled} AND {equal}"),
        MachineState::Behind => format!("{settled} AND {older}"),
        _ => format!("{settled} AND {targeted} AND NOT {older} AND NOT {equal}"),
    }
}

/// Reads windows from the cursor, each four times the last, until a page is full (one match
/// more than the page is looked for, so that a last page says so), the table ends, or
/// `req.scan` rows were read; `read` runs one [`window_sql`].
pub(crate) async fn page<F, Fut>(
    q: &MachineQuery,
    req: &PageRequest,
    d: Dialect,
    mut read: F,
) -> Result<MachinePage>
where
    F: FnMut(Sql) -> Fut,
    Fut: std::future::Future<Output = Result<Window>>,
{
    let limit = req.limit.max(1);
    let budget = u64::from(req.scan.max(limit + 1));
    let mut after = req.after.clone().unwrap_or_default();
    let mut out = MachinePage::default();
    let mut window = (limit + 1).saturating_mul(2).max(256);
    loop {
        let need = (limit + 1).saturating_sub(out.machines.len() as u32);
        let this = u32::try_from(u64::from(window).min(budget - out.scanned)).unwrap_or(window);
        let w = read(window_sql(q, &after, this, need, d)).await?;
        out.scanned += w.read;
        out.machines.extend(w.matches);
        if out.machines.len() > limit as usize {
            out.machines.truncate(limit as usize);
            out.next = out.machines.last().map(|m| m.id.clone());
            return Ok(out);
        }
        let Some(last) = w.last.filter(|_| w.read >= u64::from(this)) else {
            // The table (or the index's range) ended within this window.
            return Ok(out);
        };
        if out.scanned >= budget {
            out.next = Some(last);
            return Ok(out);
        }
        after = last;
        window = window.saturating_mul(4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Versions whose order is easy to get wrong: numbers of different lengths, prerelease
    /// identifiers numeric and not, longer and shorter, build metadata with leading zeros.
    const TRICKY: &[&str] = &[
        "0.0.0",
        "0.0.1",
        "0.1.0",
        "1.0.0-0",
        "1.0.0-0.0",
        "1.0.0-1",
        "1.0.0-2",
        "1.0.0-10",
        "1.0.0-a",
        "1.0.0-a-1",
        "1.0.0-a.0",
        "1.0.0-a.b",
        "1.0.0-a0",
        "1.0.0-alpha",
        "1.0.0-alpha.1",
        "1.0.0-alpha.beta",
        "1.0.0-beta",
        "1.0.0-beta.2",
        "1.0.0-beta.11",
        "1.0.0-rc.1",
        "1.0.0-A",
        "1.0.0-Z.1",
        "1.0.0-a--",
        "1.0.0",
        "1.0.0+0",
        "1.0.0+00",
        "1.0.0+1",
        "1.0.0+01",
        "1.0.0+001",
        "1.0.0+2",
        "1.0.0+10",
        "1.0.0+a",
        "1.0.0+a.1",
        "1.0.0+build.5",
        "1.0.0-rc.1+build.1",
        "1.0.1",
        "1.2.3",
        "1.10.0",
        "2.0.0",
        "9.9.9",
        "10.0.0",
        "18446744073709551615.0.0",
    ];

    #[test]
    fn version_keys_sort_as_versions_do() {
        let vs: Vec<Version> = TRICKY.iter().map(|s| Version::parse(s).unwrap()).collect();
        for a in &vs {
            for b in &vs {
                assert_eq!(
                    version_key(a).cmp(&version_key(b)),
                    a.cmp(b),
                    "{a} against {b}: {} and {}",
                    version_key(a),
                    version_key(b)
                );
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn version_keys_sort_as_random_versions_do(
            a in (0u64..12, 0u64..12, 0u64..3, "([0-9]{1,3}|[a-c-]{1,3})(\\.([0-9]{1,2}|[a-c]{1,2})){0,2}", proptest::bool::ANY,
                  "([0-9]{1,3}|[a-c]{1,2})(\\.[0-9a-c]{1,2}){0,1}", proptest::bool::ANY),
            b in (0u64..12, 0u64..12, 0u64..3, "([0-9]{1,3}|[a-c-]{1,3})(\\.([0-9]{1,2}|[a-c]{1,2})){0,2}", proptest::bool::ANY,
                  "([0-9]{1,3}|[a-c]{1,2})(\\.[0-9a-c]{1,2}){0,1}", proptest::bool::ANY),
        ) {
            let make = |(ma, mi, pa, pre, has_pre, build, has_build): (u64, u64, u64, String, bool, String, bool)| {
                let mut s = format!("{ma}.{mi}.{pa}");
                if has_pre {
                    s.push('-');
                    s.push_str(&pre);
                }
                if has_build {
                    s.push('+');
                    s.push_str(&build);
                }
                // Numeric prerelease identifiers with leading zeros are not semver.
                Version::parse(&s).ok()
            };
            if let (Some(a), Some(b)) = (make(a), make(b)) {
                proptest::prop_assert_eq!(version_key(&a).cmp(&version_key(&b)), a.cmp(&b), "{} {}", a, b);
            }
        }
    }

    /// Whether `$n` (not `$n0`…) occurs in `sql`.
    fn uses(sql: &str, n: usize) -> bool {
        let p = format!("${n}");
        sql.match_indices(&p)
            .any(|(i, _)| !sql[i + p.len()..].starts_with(|c: char| c.is_ascii_digit()))
    }

    #[test]
    fn a_query_names_each_condition_once_and_drives_by_an_index() {
        let q = MachineQuery {
            prefix: Some("gpu-".into()),
            channel: Some("stable".into()),
            state: Some(StateCondition {
                state: MachineState::Failed,
                targets: vec![("stable".into(), Version::new(2, 0, 0))],
                stale_before: Timestamp::UNIX_EPOCH,
            }),
            ..Default::default()
        };
        let s = window_sql(&q, "gpu-0007", 512, 51, Dialect::Postgres);
        assert!(
            s.text.contains(&format!("AND {FAILED_INDEXED}")),
            "{}",
            s.text
        );
        // Failed machines are found by their index, not the channel's.
        assert!(!s.text.contains("AND channel = $4 ORDER BY"), "{}", s.text);
        assert_eq!(s.params[0], Value::Text("gpu-0007".into()));
        assert_eq!(s.params[1], Value::Text("gpu-".into()));
        assert_eq!(s.params[2], Value::Text("gpu-\u{7f}".into()));
        assert_eq!(s.params.last(), Some(&Value::Int(51)));
        let placeholders = (1..=s.params.len()).all(|n| uses(&s.text, n));
        assert!(placeholders, "{}", s.text);
        for state in MachineState::ALL {
            let q = MachineQuery {
                state: Some(StateCondition {
                    state,
                    ..q.state.clone().unwrap()
                }),
                text: Some("Rack".into()),
                ..q.clone()
            };
            let s = window_sql(&q, "", 512, 51, Dialect::Postgres);
            for n in 1..=s.params.len() {
                assert!(uses(&s.text, n), "{state:?}: ${n} unused");
            }
            assert!(!uses(&s.text, s.params.len() + 1));
        }
        let s = window_sql(&q, "", 512, 51, Dialect::Sqlite);
        assert!(s.text.contains("?1") && !s.text.contains('$'), "{}", s.text);
    }

    #[test]
    fn the_partial_indexes_are_written_as_the_queries_use_them() {
        let step = super::super::MIGRATIONS
            .iter()
            .find(|m| m.version == super::super::VERSION_KEYS)
            .unwrap();
        for sql in [step.sqlite, step.postgres] {
            assert!(sql.contains(&format!("WHERE {FAILED_INDEXED};")), "{sql}");
            assert!(sql.contains(&format!("WHERE {UPDATING_INDEXED};")), "{sql}");
        }
    }
}
