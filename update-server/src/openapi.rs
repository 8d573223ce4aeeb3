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

/// Collects the operations and the schemas they refer to.
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
const BODY_TIMEOUT: Status = (408, "The body did not arrive in time (`body-timeout`).");
const TOO_LARGE: Status = (413, "The body is larger than the server's limit.");
const UNPROCESSABLE: Status = (
    422,
    "The body is JSON of the wrong shape, or refused on its content.",
);
const UNAVAILABLE: Status = (503, "The database does not answer; retry later.");
/// With `--client-ca`: a machine request without a client certificate.
const NO_SVID: Status = (
    401,
    "The server requires machines to present a client certificate (an X.509-SVID) and none came (`client-certificate-required`).",
);
/// With `--client-ca`: a client certificate that names another machine or trust domain.
const WRONG_SVID: Status = (
    403,
    "The client certificate's SPIFFE ID names another machine, or another trust domain (`identity-mismatch`).",
);
/// What every operation with a JSON body may also answer.
const BODY_ERRORS: [Status; 3] = [BAD_REQUEST, BODY_TIMEOUT, TOO_LARGE];

impl Builder {
    fn schema<T: JsonSchema>(&mut self) -> Value {
        self.generator.subschema_for::<T>().to_value()
    }

    /// Starts an operation; [`Op::add`] puts it in the document.
    fn op(&mut self, method: &str, path: &str, id: &str, summary: &str, tag: &str) -> Op<'_> {
        Op {
            b: self,
            method: method.to_owned(),
            path: path.to_owned(),
            op: json!({"operationId": id, "summary": summary, "tags": [tag]}),
            responses: Map::new(),
            admin: tag == "admin",
        }
    }
}

/// One operation being described.
struct Op<'a> {
    b: &'a mut Builder,
    method: String,
    path: String,
    op: Value,
    responses: Map<String, Value>,
    admin: bool,
}

impl Op<'_> {
    fn param(mut self, param: Value) -> Self {
        match self.op["parameters"].as_array_mut() {
            Some(list) => list.push(param),
            None => self.op["parameters"] = json!([param]),
        }
        self
    }

    fn path_param(self, name: &str, description: &str, schema: Value) -> Self {
        self.param(json!({"name": name, "in": "path", "required": true, "description": description, "schema": schema}))
    }

    fn query_param(self, name: &str, description: &str, schema: Value) -> Self {
        self.param(json!({"name": name, "in": "query", "required": false, "description": description, "schema": schema}))
    }

    fn header_param(self, name: &str, description: &str) -> Self {
        self.param(json!({"name": name, "in": "header", "required": false, "description": description, "schema": {"type": "string"}}))
    }

    fn channel(self) -> Self {
        self.path_param(
            "channel",
            "The channel's name.",
            json!({"type": "string", "pattern": NAME_PATTERN}),
        )
    }

    fn version(self) -> Self {
        let schema = self.b.schema::<semver::Version>();
        self.path_param("version", "A release's version (SemVer).", schema)
    }

    fn digest(self) -> Self {
        self.path_param(
            "sha256",
            "The payload's SHA-256, 64 lowercase hex digits.",
            json!({"type": "string", "pattern": "^[0-9a-f]{64}$"}),
        )
    }

    fn limit(self, what: &str) -> Self {
        self.query_param(
            "limit",
            &format!("At most this many {what} (default 100, at most 1000)."),
            json!({"type": "integer", "minimum": 0, "maximum": u32::MAX}),
        )
    }

    /// A required JSON body of type `T`; the body's own errors (400, 408, 413) come with it.
    fn body<T: JsonSchema>(mut self) -> Self {
        let schema = self.b.schema::<T>();
        self.op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
        self.errors(&BODY_ERRORS)
    }

    fn raw_body(mut self, media: &str) -> Self {
        self.op["requestBody"] = json!({
            "required": true,
            "content": {media: {"schema": {"type": "string", "format": "binary"}}},
        });
        self.errors(&BODY_ERRORS)
    }

    fn response(mut self, status: u16, response: Value) -> Self {
        self.responses.insert(status.to_string(), response);
        self
    }

    fn ok<T: JsonSchema>(self, status: u16, description: &str) -> Self {
        let schema = self.b.schema::<T>();
        self.response(
            status,
            json!({"description": description, "content": {"application/json": {"schema": schema}}}),
        )
    }

    fn text(self, status: u16, description: &str, media: &str) -> Self {
        self.response(
            status,
            json!({"description": description, "content": {media: {"schema": {"type": "string"}}}}),
        )
    }

    fn empty(self, status: u16, description: &str) -> Self {
        self.response(status, json!({"description": description}))
    }

    /// Error answers (`{kind, message}`); a later entry for the same status replaces an
    /// earlier one, so that an operation can say what a status means for it.
    fn errors(mut self, statuses: &[Status]) -> Self {
        let schema = self.b.schema::<ErrorBody>();
        for (code, description) in statuses {
            self = self.response(
                *code,
                json!({"description": description, "content": {"application/json": {"schema": schema}}}),
            );
        }
        self
    }

    /// Adds the operation to the document. Admin operations take the bearer token and may
    /// answer 401 and 403.
    fn add(mut self) {
        if self.admin {
            self = self.errors(&[UNAUTHORIZED, FORBIDDEN]);
            self.op["security"] = json!([{"adminToken": []}]);
        }
        self.op["responses"] = Value::Object(std::mem::take(&mut self.responses));
        let item = self.b.paths.entry(self.path).or_insert_with(|| json!({}));
        item[self.method.as_str()] = self.op;
    }
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
    b.op(
        "post",
        "/v1/check",
        "check",
        "A machine asks whether an update is due",
        "machine",
    )
    .body::<CheckRequest>()
    .ok::<CheckResponse>(
        200,
        "The release to apply (a signed envelope the machine verifies), or `{\"update\": null}`.",
    )
    .errors(&[NOT_FOUND, UNPROCESSABLE, UNAVAILABLE, NO_SVID, WRONG_SVID])
    .add();
    b.op(
        "post",
        "/v1/events",
        "reportEvent",
        "A machine reports a step of its update",
        "machine",
    )
    .body::<EventReport>()
    .ok::<EventAccepted>(200, "Recorded.")
    .errors(&[UNPROCESSABLE, UNAVAILABLE, NO_SVID, WRONG_SVID])
    .add();
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
        b.op(method, "/v1/payloads/{sha256}", id, summary, "machine")
            .digest()
            .header_param(
                "Range",
                "One range: `bytes=A-B`, `bytes=A-` or `bytes=-N` (anything else: the whole payload).",
            )
            .header_param("If-Range", "Apply `Range` only if this ETag matches.")
            .header_param("If-None-Match", "Answer 304 if this ETag matches.")
            .text(200, "The whole payload.", "application/octet-stream")
            .text(206, "The range asked for (`Content-Range` says which).", "application/octet-stream")
            .empty(304, "`If-None-Match` matched the payload's ETag.")
            .errors(&[BAD_REQUEST, NOT_FOUND, (416, "The range starts past the payload's end.")])
            .add();
    }

    {
        let text = |max: u32| json!({"type": "string", "maxLength": max, "pattern": slipway_api::wire::NO_CONTROL_PATTERN});
        let graph_error = b.schema::<crate::routes::graph::GraphError>();
        let refusal = |description: &str| json!({"description": description, "content": {"application/json": {"schema": graph_error.clone()}}});
        b.op(
            "get",
            "/v1/graph",
            "getGraph",
            "A channel as a Cincinnati update graph (Fedora CoreOS Zincati's protocol), for the asking host",
            "machine",
        )
        .param(json!({"name": "stream", "in": "query", "required": true, "description": "The channel.", "schema": {"type": "string", "pattern": NAME_PATTERN}}))
        .param(json!({"name": "basearch", "in": "query", "required": true, "description": "The host's architecture (recorded).", "schema": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": slipway_api::wire::NO_CONTROL_PATTERN}}))
        .query_param("node_uuid", "The host's id: its place in the rollout, and how the dashboard counts it.", json!({"type": "string", "pattern": MACHINE_ID_PATTERN}))
        .query_param("os_checksum", "The SHA-256 of the OS image the host runs (finds its node).", text(253))
        .query_param("os_version", "The version the host runs, if its checksum is not in the graph.", text(253))
        .query_param("group", "The host's group (recorded).", text(253))
        .query_param("platform", "The host's platform (ignored).", text(253))
        .query_param("rollout_wariness", "The host's place in rollouts, 0 (eager) to 1 (wary); default: that of node_uuid.", json!({"type": "number", "minimum": 0, "maximum": 1}))
        .ok::<crate::routes::graph::Graph>(200, "The graph: releases oldest first, edges as [from, to] indexes.")
        .response(400, refusal("A mandatory parameter is missing (`missing_params`) or one is not valid (`invalid_params`)."))
        .response(404, refusal("No such stream (`unknown_stream`)."))
        .response(406, refusal("`Accept` is set and names no JSON type: neither `application/json`, `application/*` nor `*/*` (`invalid_content_type`)."))
        .add();
    }

    // Admin.
    b.op(
        "put",
        "/v1/admin/payloads/{sha256}",
        "uploadPayload",
        "Uploads a payload, kept only if its bytes hash to its name",
        "admin",
    )
    .digest()
    .raw_body("application/octet-stream")
    .ok::<PayloadStored>(200, "Already stored.")
    .ok::<PayloadStored>(201, "Stored.")
    .errors(&[
        (
            408,
            "The upload sent nothing for too long (`body-timeout`).",
        ),
        (422, "The bytes do not hash to the name."),
        UNAVAILABLE,
    ])
    .add();
    b.op(
        "post",
        "/v1/admin/releases",
        "publishRelease",
        "Publishes a signed release",
        "admin",
    )
    .body::<Envelope>()
    .ok::<Published>(200, "This exact envelope was already published.")
    .ok::<Published>(201, "Published.")
    .errors(&[
        (
            409,
            "No root of trust, a payload not uploaded, or another envelope under this version.",
        ),
        (
            422,
            "Not signed by the root's release keys, expired, or a payload of the wrong size.",
        ),
        UNAVAILABLE,
    ])
    .add();
    b.op(
        "get",
        "/v1/admin/releases",
        "listReleases",
        "Lists releases by channel and version",
        "admin",
    )
    .ok::<Vec<ReleaseSummary>>(200, "Every release.")
    .errors(&[UNAVAILABLE])
    .add();
    b.op(
        "get",
        "/v1/admin/channels",
        "listChannels",
        "Lists channels with their rollout state",
        "admin",
    )
    .ok::<Vec<ChannelStatus>>(200, "Every channel.")
    .errors(&[UNAVAILABLE])
    .add();
    b.op(
        "get",
        "/v1/admin/channels/{channel}",
        "getChannel",
        "A channel's rollout state",
        "admin",
    )
    .channel()
    .ok::<ChannelStatus>(200, "The channel.")
    .errors(&[BAD_REQUEST, NOT_FOUND, UNAVAILABLE])
    .add();
    b.op(
        "post",
        "/v1/admin/channels/{channel}/promote",
        "promote",
        "Starts rolling out a published release in waves, optionally behind a health gate",
        "admin",
    )
    .channel()
    .body::<PromoteRequest>()
    .ok::<ChannelStatus>(200, "Promoted; the channel's new state.")
    .errors(&[
        (404, "The version is not published on the channel."),
        (
            422,
            "The body's shape, a wave schedule that is not valid (`invalid-waves`), or a gate that is not (`invalid-gate`).",
        ),
        UNAVAILABLE,
    ])
    .add();
    for (verb, summary) in [
        ("pause", "Stops offering anything on the channel"),
        (
            "resume",
            "Offers again (the waves kept running while paused)",
        ),
    ] {
        b.op(
            "post",
            &format!("/v1/admin/channels/{{channel}}/{verb}"),
            verb,
            summary,
            "admin",
        )
        .channel()
        .ok::<ChannelStatus>(200, "The channel's new state.")
        .errors(&[BAD_REQUEST, NOT_FOUND, UNAVAILABLE])
        .add();
    }
    let no_release: Status = (404, "No such release on the channel.");
    b.op(
        "get",
        "/v1/admin/channels/{channel}/releases/{version}",
        "getRelease",
        "A release's signed envelope, exactly as published",
        "admin",
    )
    .channel()
    .version()
    .ok::<slipway_api::Envelope>(200, "The DSSE envelope.")
    .errors(&[BAD_REQUEST, no_release, UNAVAILABLE])
    .add();
    b.op(
        "put",
        "/v1/admin/channels/{channel}/releases/{version}/advisory",
        "setAdvisory",
        "Marks a release as advised against: machines running it get the target at once",
        "admin",
    )
    .channel()
    .version()
    .body::<AdvisoryRequest>()
    .ok::<ChannelStatus>(200, "The channel's new state.")
    .errors(&[no_release, UNPROCESSABLE, UNAVAILABLE])
    .add();
    for (method, what, id, summary) in [
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
        let path = format!("/v1/admin/channels/{{channel}}/releases/{{version}}/{what}");
        b.op(method, &path, id, summary, "admin")
            .channel()
            .version()
            .ok::<ChannelStatus>(200, "The channel's new state.")
            .errors(&[BAD_REQUEST, no_release, UNAVAILABLE])
            .add();
    }
    b.op(
        "get",
        "/v1/admin/machines",
        "listMachines",
        "Lists machines by id, a page at a time",
        "admin",
    )
    .query_param(
        "channel",
        "Only machines following this channel.",
        json!({"type": "string"}),
    )
    .query_param(
        "after",
        "Only ids after this one (the last id of the previous page).",
        json!({"type": "string"}),
    )
    .limit("machines")
    .ok::<Vec<MachineRecord>>(200, "Machines, by id.")
    .errors(&[BAD_REQUEST, UNAVAILABLE])
    .add();
    b.op(
        "get",
        "/v1/admin/machines/{id}",
        "getMachine",
        "One machine, with its newest 100 events",
        "admin",
    )
    .path_param(
        "id",
        "The machine's id.",
        json!({"type": "string", "pattern": MACHINE_ID_PATTERN}),
    )
    .ok::<MachineDetail>(200, "The machine and its newest events.")
    .errors(&[BAD_REQUEST, NOT_FOUND, UNAVAILABLE])
    .add();
    b.op(
        "get",
        "/v1/admin/events",
        "listEvents",
        "Lists the newest events",
        "admin",
    )
    .query_param(
        "machine",
        "Only this machine's events.",
        json!({"type": "string"}),
    )
    .limit("events")
    .ok::<Vec<EventRecord>>(200, "Events, newest first.")
    .errors(&[BAD_REQUEST, UNAVAILABLE])
    .add();
    b.op(
        "post",
        "/v1/admin/cluster",
        "reportCluster",
        "An operator reports what it sees of its cluster (for the dashboard)",
        "admin",
    )
    .body::<ClusterReport>()
    .empty(204, "Kept as the cluster's newest report.")
    .errors(&[UNPROCESSABLE])
    .add();

    // Operations.
    b.op(
        "get",
        "/healthz",
        "healthz",
        "Liveness: the process answers",
        "ops",
    )
    .text(200, "Alive.", "text/plain")
    .add();
    b.op(
        "get",
        "/readyz",
        "readyz",
        "Readiness: the database answers",
        "ops",
    )
    .text(200, "The database answers.", "text/plain")
    .errors(&[UNAVAILABLE])
    .add();
    b.op(
        "get",
        "/metrics",
        "metrics",
        "Prometheus metrics (OpenMetrics text)",
        "ops",
    )
    .text(
        200,
        "The metrics.",
        slipway_api::names::OPENMETRICS_CONTENT_TYPE,
    )
    .add();
    b.op("get", "/openapi.json", "openapi", "This document", "ops")
        .response(
            200,
            json!({"description": "The OpenAPI document.", "content": {"application/json": {"schema": {"type": "object"}}}}),
        )
        .add();

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
