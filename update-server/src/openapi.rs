//! The server's HTTP API as an OpenAPI 3.1 document, served at `GET /openapi.json` and
//! committed as `docs/openapi.json` (a test fails when the two differ).
//!
//! Bodies' schemas are generated from the Rust types the handlers parse and answer with
//! (schemars, JSON Schema 2020-12, which is OpenAPI 3.1's own dialect); the operations are
//! listed here, one per route of [`crate::routes::router`], with every status the handler can
//! answer. The dashboard's pages and its `/api/*` JSON (made for the dashboard itself, free to
//! change with it) are left out.

use std::sync::OnceLock;

use bytes::Bytes;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};
use slipway_api::Envelope;
use slipway_api::manifest::NAME_PATTERN;
use slipway_api::wire::{
    CheckRequest, CheckResponse, ClusterReport, ErrorBody, EventReport, MACHINE_ID_PATTERN,
};

use crate::routes::admin::{
    AdvisoryRequest, ChannelStatus, MachineDetail, PayloadStored, PromoteRequest, Published,
    ReleaseSummary,
};
use crate::routes::machine::EventAccepted;
use crate::store::{EventRecord, MachineRecord};

/// The document, as served (built once).
pub fn document_bytes() -> Bytes {
    static DOC: OnceLock<Bytes> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
        text.push('\n');
        Bytes::from(text)
    })
    .clone()
}

/// Collects the schemas that operations refer to.
struct Builder {
    generator: SchemaGenerator,
    paths: Map<String, Value>,
}

/// A response's status and what it means.
type Status = (u16, &'static str);

const BAD_REQUEST: Status = (400, "The request is malformed (see the error's kind).");
const UNAUTHORIZED: Status = (401, "No bearer token, or not a valid one.");
const FORBIDDEN: Status = (
    403,
    "The server has no admin tokens configured: the admin API is off.",
);
const NOT_FOUND: Status = (404, "No such resource (see the error's kind).");
const TOO_LARGE: Status = (413, "The body is larger than the server's limit.");
const UNPROCESSABLE: Status = (
    422,
    "The body is JSON of the wrong shape, or refused on its content.",
);
const UNAVAILABLE: Status = (503, "The database does not answer; retry later.");
const BODY_TIMEOUT: Status = (408, "The body did not arrive in time (`body-timeout`).");

impl Builder {
    fn schema<T: JsonSchema>(&mut self) -> Value {
        self.generator.subschema_for::<T>().to_value()
    }

    fn json_content<T: JsonSchema>(&mut self) -> Value {
        json!({"application/json": {"schema": self.schema::<T>()}})
    }

    fn ok<T: JsonSchema>(&mut self, status: u16, description: &str) -> (String, Value) {
        (
            status.to_string(),
            json!({"description": description, "content": self.json_content::<T>()}),
        )
    }

    fn errors(&mut self, statuses: &[Status]) -> Vec<(String, Value)> {
        let content = self.json_content::<ErrorBody>();
        statuses
            .iter()
            .map(|(code, description)| {
                (
                    code.to_string(),
                    json!({"description": description, "content": content}),
                )
            })
            .collect()
    }

    /// Adds an operation. Admin operations take the bearer token and may answer 401 and 403.
    #[allow(clippy::too_many_arguments)]
    fn op(
        &mut self,
        method: &str,
        path: &str,
        id: &str,
        summary: &str,
        tag: &str,
        parameters: Vec<Value>,
        body: Option<Value>,
        mut responses: Vec<(String, Value)>,
    ) {
        let admin = tag == "admin";
        if admin {
            responses.extend(self.errors(&[UNAUTHORIZED, FORBIDDEN]));
        }
        responses.sort_by(|a, b| a.0.cmp(&b.0));
        let mut op = json!({
            "operationId": id,
            "summary": summary,
            "tags": [tag],
            "responses": responses.into_iter().collect::<Map<_, _>>(),
        });
        if !parameters.is_empty() {
            op["parameters"] = Value::Array(parameters);
        }
        if let Some(body) = body {
            op["requestBody"] = body;
        }
        if admin {
            op["security"] = json!([{"adminToken": []}]);
        }
        let item = self
            .paths
            .entry(path.to_owned())
            .or_insert_with(|| json!({}));
        item[method] = op;
    }

    fn json_body<T: JsonSchema>(&mut self) -> Option<Value> {
        Some(json!({"required": true, "content": self.json_content::<T>()}))
    }
}

fn path_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema})
}

fn query_param(name: &str, description: &str, schema: Value) -> Value {
    json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema})
}

fn header_param(name: &str, description: &str) -> Value {
    json!({"name": name, "in": "header", "required": false, "description": description, "schema": {"type": "string"}})
}

fn text(status: u16, description: &str, media: &str) -> (String, Value) {
    (
        status.to_string(),
        json!({"description": description, "content": {media: {"schema": {"type": "string"}}}}),
    )
}

fn channel_param() -> Value {
    path_param(
        "channel",
        "The channel's name.",
        json!({"type": "string", "pattern": NAME_PATTERN}),
    )
}

fn version_param(b: &mut Builder) -> Value {
    let schema = b.schema::<semver::Version>();
    path_param("version", "A release's version (SemVer).", schema)
}

fn digest_param() -> Value {
    path_param(
        "sha256",
        "The payload's SHA-256, 64 lowercase hex digits.",
        json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
    )
}

fn limit_param(what: &str) -> Value {
    query_param(
        "limit",
        &format!("At most this many {what} (default 100, at most 1000)."),
        json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
    )
}

/// The whole document.
pub fn document() -> Value {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = "/components/schemas".into();
        s.meta_schema = None;
    });
    let mut b = Builder {
        generator: settings.into_generator(),
        paths: Map::new(),
    };

    // What machines call.
    let body = b.json_body::<CheckRequest>();
    let ok = b.ok::<CheckResponse>(
        200,
        "The release to apply (a signed envelope the machine verifies), or `{\"update\": null}`.",
    );
    let mut responses = vec![ok];
    responses.extend(b.errors(&[
        BAD_REQUEST,
        NOT_FOUND,
        TOO_LARGE,
        BODY_TIMEOUT,
        UNPROCESSABLE,
        UNAVAILABLE,
    ]));
    b.op(
        "post",
        "/v1/check",
        "check",
        "A machine asks whether an update is due",
        "machine",
        vec![],
        body,
        responses,
    );

    let body = b.json_body::<EventReport>();
    let mut responses = vec![b.ok::<EventAccepted>(200, "Recorded.")];
    responses.extend(b.errors(&[
        BAD_REQUEST,
        TOO_LARGE,
        BODY_TIMEOUT,
        UNPROCESSABLE,
        UNAVAILABLE,
    ]));
    b.op(
        "post",
        "/v1/events",
        "reportEvent",
        "A machine reports a step of its update",
        "machine",
        vec![],
        body,
        responses,
    );

    for (method, id, summary) in [
        (
            "get",
            "getPayload",
            "A payload's bytes, whole or one byte range",
        ),
        (
            "head",
            "headPayload",
            "Whether a payload is here, and its size",
        ),
    ] {
        let mut responses = vec![
            text(200, "The whole payload.", "application/octet-stream"),
            text(
                206,
                "The range asked for (`Content-Range` says which).",
                "application/octet-stream",
            ),
            (
                "304".to_owned(),
                json!({"description": "`If-None-Match` matched the payload's ETag."}),
            ),
        ];
        responses.extend(b.errors(&[
            BAD_REQUEST,
            NOT_FOUND,
            (416, "The range starts past the payload's end."),
        ]));
        b.op(
            method,
            "/v1/payloads/{sha256}",
            id,
            summary,
            "machine",
            vec![
                digest_param(),
                header_param(
                    "Range",
                    "One range: `bytes=A-B`, `bytes=A-` or `bytes=-N` (anything else: the whole payload).",
                ),
                header_param("If-Range", "Apply `Range` only if this ETag matches."),
                header_param("If-None-Match", "Answer 304 if this ETag matches."),
            ],
            None,
            responses,
        );
    }

    // Admin.
    let mut responses = vec![
        b.ok::<PayloadStored>(200, "Already stored."),
        b.ok::<PayloadStored>(201, "Stored."),
    ];
    responses.extend(b.errors(&[
        BAD_REQUEST,
        TOO_LARGE,
        BODY_TIMEOUT,
        (422, "The bytes do not hash to the name."),
        UNAVAILABLE,
    ]));
    b.op(
        "put",
        "/v1/admin/payloads/{sha256}",
        "uploadPayload",
        "Uploads a payload, kept only if its bytes hash to its name",
        "admin",
        vec![digest_param()],
        Some(json!({
            "required": true,
            "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
        })),
        responses,
    );

    let body = b.json_body::<Envelope>();
    let mut responses = vec![
        b.ok::<Published>(200, "This exact envelope was already published."),
        b.ok::<Published>(201, "Published."),
    ];
    responses.extend(b.errors(&[
        BAD_REQUEST,
        (
            409,
            "No root of trust, a payload not uploaded, or another envelope under this version.",
        ),
        TOO_LARGE,
        BODY_TIMEOUT,
        (
            422,
            "Not signed by the root's release keys, expired, or a payload of the wrong size.",
        ),
        UNAVAILABLE,
    ]));
    b.op(
        "post",
        "/v1/admin/releases",
        "publishRelease",
        "Publishes a signed release",
        "admin",
        vec![],
        body,
        responses,
    );

    let mut responses = vec![b.ok::<Vec<ReleaseSummary>>(200, "Every release.")];
    responses.extend(b.errors(&[UNAVAILABLE]));
    b.op(
        "get",
        "/v1/admin/releases",
        "listReleases",
        "Lists releases by channel and version",
        "admin",
        vec![],
        None,
        responses,
    );

    let mut responses = vec![b.ok::<Vec<ChannelStatus>>(200, "Every channel.")];
    responses.extend(b.errors(&[UNAVAILABLE]));
    b.op(
        "get",
        "/v1/admin/channels",
        "listChannels",
        "Lists channels with their rollout state",
        "admin",
        vec![],
        None,
        responses,
    );

    let mut responses = vec![b.ok::<ChannelStatus>(200, "The channel.")];
    responses.extend(b.errors(&[BAD_REQUEST, NOT_FOUND, UNAVAILABLE]));
    b.op(
        "get",
        "/v1/admin/channels/{channel}",
        "getChannel",
        "A channel's rollout state",
        "admin",
        vec![channel_param()],
        None,
        responses,
    );

    let body = b.json_body::<PromoteRequest>();
    let mut responses = vec![b.ok::<ChannelStatus>(200, "Promoted; the channel's new state.")];
    responses.extend(b.errors(&[
        BAD_REQUEST,
        (404, "The version is not published on the channel."),
        TOO_LARGE,
        BODY_TIMEOUT,
        (
            422,
            "The body's shape, or a wave schedule that is not valid.",
        ),
        UNAVAILABLE,
    ]));
    b.op(
        "post",
        "/v1/admin/channels/{channel}/promote",
        "promote",
        "Starts rolling out a published release in waves",
        "admin",
        vec![channel_param()],
        body,
        responses,
    );

    for (verb, id, summary) in [
        ("pause", "pause", "Stops offering anything on the channel"),
        (
            "resume",
            "resume",
            "Offers again (the waves kept running while paused)",
        ),
    ] {
        let mut responses = vec![b.ok::<ChannelStatus>(200, "The channel's new state.")];
        responses.extend(b.errors(&[BAD_REQUEST, NOT_FOUND, UNAVAILABLE]));
        b.op(
            "post",
            &format!("/v1/admin/channels/{{channel}}/{verb}"),
            id,
            summary,
            "admin",
            vec![channel_param()],
            None,
            responses,
        );
    }

    let body = b.json_body::<AdvisoryRequest>();
    let params = vec![channel_param(), version_param(&mut b)];
    let mut responses = vec![b.ok::<ChannelStatus>(200, "The channel's new state.")];
    responses.extend(b.errors(&[
        BAD_REQUEST,
        (404, "No such release on the channel."),
        TOO_LARGE,
        BODY_TIMEOUT,
        UNPROCESSABLE,
        UNAVAILABLE,
    ]));
    b.op(
        "put",
        "/v1/admin/channels/{channel}/releases/{version}/advisory",
        "setAdvisory",
        "Marks a release as advised against: machines running it get the target at once",
        "admin",
        params,
        body,
        responses,
    );
    for (method, path, id, summary) in [
        (
            "delete",
            "advisory",
            "clearAdvisory",
            "Clears a release's advisory",
        ),
        (
            "put",
            "floor",
            "setFloor",
            "Makes a release a floor: older machines pass through it first",
        ),
        ("delete", "floor", "clearFloor", "Clears a release's floor"),
    ] {
        let params = vec![channel_param(), version_param(&mut b)];
        let mut responses = vec![b.ok::<ChannelStatus>(200, "The channel's new state.")];
        responses.extend(b.errors(&[
            BAD_REQUEST,
            (404, "No such release on the channel."),
            UNAVAILABLE,
        ]));
        b.op(
            method,
            &format!("/v1/admin/channels/{{channel}}/releases/{{version}}/{path}"),
            id,
            summary,
            "admin",
            params,
            None,
            responses,
        );
    }

    let mut responses = vec![b.ok::<Vec<MachineRecord>>(200, "Machines, by id.")];
    responses.extend(b.errors(&[BAD_REQUEST, UNAVAILABLE]));
    b.op(
        "get",
        "/v1/admin/machines",
        "listMachines",
        "Lists machines by id, a page at a time",
        "admin",
        vec![
            query_param(
                "channel",
                "Only machines following this channel.",
                json!({"type": "string"}),
            ),
            query_param(
                "after",
                "Only ids after this one (the last id of the previous page).",
                json!({"type": "string"}),
            ),
            limit_param("machines"),
        ],
        None,
        responses,
    );

    let mut responses = vec![b.ok::<MachineDetail>(200, "The machine and its newest events.")];
    responses.extend(b.errors(&[BAD_REQUEST, NOT_FOUND, UNAVAILABLE]));
    b.op(
        "get",
        "/v1/admin/machines/{id}",
        "getMachine",
        "One machine, with its newest 100 events",
        "admin",
        vec![path_param(
            "id",
            "The machine's id.",
            json!({"type": "string", "pattern": MACHINE_ID_PATTERN}),
        )],
        None,
        responses,
    );

    let mut responses = vec![b.ok::<Vec<EventRecord>>(200, "Events, newest first.")];
    responses.extend(b.errors(&[BAD_REQUEST, UNAVAILABLE]));
    b.op(
        "get",
        "/v1/admin/events",
        "listEvents",
        "Lists the newest events",
        "admin",
        vec![
            query_param(
                "machine",
                "Only this machine's events.",
                json!({"type": "string"}),
            ),
            limit_param("events"),
        ],
        None,
        responses,
    );

    let body = b.json_body::<ClusterReport>();
    let mut responses = vec![(
        "204".to_owned(),
        json!({"description": "Kept as the cluster's newest report."}),
    )];
    responses.extend(b.errors(&[BAD_REQUEST, TOO_LARGE, BODY_TIMEOUT, UNPROCESSABLE]));
    b.op(
        "post",
        "/v1/admin/cluster",
        "reportCluster",
        "An operator reports what it sees of its cluster (for the dashboard)",
        "admin",
        vec![],
        body,
        responses,
    );

    // Operations.
    b.op(
        "get",
        "/healthz",
        "healthz",
        "Liveness: the process answers",
        "ops",
        vec![],
        None,
        vec![text(200, "Alive.", "text/plain")],
    );
    let mut responses = vec![text(200, "The database answers.", "text/plain")];
    responses.extend(b.errors(&[UNAVAILABLE]));
    b.op(
        "get",
        "/readyz",
        "readyz",
        "Readiness: the database answers",
        "ops",
        vec![],
        None,
        responses,
    );
    b.op(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics (OpenMetrics text)",
        "ops",
        vec![],
        None,
        vec![text(
            200,
            "The metrics.",
            slipway_api::names::OPENMETRICS_CONTENT_TYPE,
        )],
    );
    b.op(
        "get",
        "/openapi.json",
        "openapi",
        "This document",
        "ops",
        vec![],
        None,
        vec![(
            "200".to_owned(),
            json!({"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}),
        )],
    );

    let mut schemas = b.generator.take_definitions(true);
    // The semver crate keeps major, minor and patch as u64: at most 19 digits say so.
    schemas.insert(
        "SemVer".into(),
        json!({
            "description": "A semantic version (semver.org); major, minor and patch fit in 64 bits.",
            "type": "string",
            "pattern": r"^(0|[1-9]\d{0,18})\.(0|[1-9]\d{0,18})\.(0|[1-9]\d{0,18})(?:-((?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*)(?:\.(?:0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*))*))?(?:\+([0-9a-zA-Z-]+(?:\.[0-9a-zA-Z-]+)*))?$",
        }),
    );
    let mut doc = json!({
        "openapi": "3.1.1",
        "jsonSchemaDialect": "https://json-schema.org/draft/2020-12/schema",
        "info": {
            "title": "Slipway update server",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "What machines (the node agent's engine) call to check for updates, report progress and download payloads, and what admins (the `slipway` CLI) call to publish releases and run rollouts. Errors carry `{kind, message}`; see docs/protocol.md.",
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [
            {"name": "machine", "description": "Called by machines; no credentials."},
            {"name": "admin", "description": "Bearer token from the server's admin token file."},
            {"name": "ops", "description": "Health, readiness, metrics."},
        ],
        "paths": b.paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "adminToken": {"type": "http", "scheme": "bearer", "description": "A token from the server's --admin-tokens file."},
            },
        },
    });
    bound_integers(&mut doc);
    doc
}

/// Gives integer schemas the bounds of their Rust type: schemars names the type in `format`
/// (`uint32`), which validators and generators need not know; `minimum` and `maximum` they do.
fn bound_integers(value: &mut Value) {
    match value {
        Value::Object(map) => {
            let bounds = match map.get("format").and_then(Value::as_str) {
                Some("uint8") => Some((json!(0), json!(u8::MAX))),
                Some("uint16") => Some((json!(0), json!(u16::MAX))),
                Some("uint32") => Some((json!(0), json!(u32::MAX))),
                Some("uint64" | "uint") => Some((json!(0), json!(u64::MAX))),
                Some("int32") => Some((json!(i32::MIN), json!(i32::MAX))),
                Some("int64" | "int") => Some((json!(i64::MIN), json!(i64::MAX))),
                _ => None,
            };
            if let Some((min, max)) = bounds {
                map.entry("minimum").or_insert(min);
                map.entry("maximum").or_insert(max);
            }
            map.values_mut().for_each(bound_integers);
        }
        Value::Array(items) => items.iter_mut().for_each(bound_integers),
        _ => {}
    }
}
