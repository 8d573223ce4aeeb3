//! The crate's one error type. Every variant maps onto a Kubernetes `Status` object, so the server
//! answers client mistakes with the same codes and reasons kube-apiserver would.

use serde_json::{Value, json};

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One field-level problem in an `Invalid` (422) or `TooManyRequests` (429) answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    /// Machine-readable reason, e.g. `FieldValueRequired`.
    pub reason: String,
    /// Human-readable message.
    pub message: String,
    /// Field path such as `spec.windows[0].schedule` (empty when not about a field).
    pub field: String,
}

impl Cause {
    /// A cause about `field`.
    pub fn new(reason: &str, field: &str, message: impl Into<String>) -> Self {
        Self {
            reason: reason.to_owned(),
            message: message.into(),
            field: field.to_owned(),
        }
    }
}

/// What a not-found / conflict / invalid answer is about (goes into `Status.details`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Target {
    /// API group ("" for core).
    pub group: String,
    /// Resource plural (for NotFound/AlreadyExists/Conflict) or Kind (for Invalid), as kube-apiserver does.
    pub kind: String,
    /// Object name.
    pub name: String,
}

/// Everything that can go wrong in the test kit.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 404: the object (or namespace, or resource type) does not exist.
    #[error("{} \"{}\" not found", qualified(&.0.kind, &.0.group), .0.name)]
    NotFound(Target),
    /// 404 for a path that names no known resource.
    #[error("the server could not find the requested resource ({0})")]
    NoSuchResource(String),
    /// 409: create of an existing name.
    #[error("{} \"{}\" already exists", qualified(&.0.kind, &.0.group), .0.name)]
    AlreadyExists(Target),
    /// 409: stale `metadata.resourceVersion` or failed precondition.
    #[error("Operation cannot be fulfilled on {} \"{}\": {message}", qualified(&target.kind, &target.group), target.name)]
    Conflict {
        /// The object.
        target: Target,
        /// Why.
        message: String,
    },
    /// 422: the object failed validation.
    #[error("{} \"{}\" is invalid: {}", qualified(&target.kind, &target.group), target.name, render_causes(causes))]
    Invalid {
        /// The object (kind is the Kind here).
        target: Target,
        /// The field problems.
        causes: Vec<Cause>,
    },
    /// 400: malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// 405: verb not supported on this path.
    #[error("the server does not allow this method on the requested resource: {0}")]
    MethodNotAllowed(String),
    /// 415: patch content type not supported.
    #[error(
        "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml, application/strategic-merge-patch+json ({0})"
    )]
    UnsupportedMediaType(String),
    /// 410: a resourceVersion older than the kept history.
    #[error("too old resource version: {requested} ({oldest})")]
    Gone {
        /// The version the client asked for.
        requested: u64,
        /// The oldest version still replayable.
        oldest: u64,
    },
    /// 429: an eviction a PodDisruptionBudget forbids.
    #[error("{message}")]
    TooManyRequests {
        /// Names the budget.
        message: String,
        /// One `DisruptionBudget` cause.
        causes: Vec<Cause>,
    },
    /// 500: something the server cannot do (e.g. a pod covered by two budgets).
    #[error("{0}")]
    Internal(String),
    /// An error injected by a test through [`crate::Fault`].
    #[error("{message}")]
    Injected {
        /// HTTP code.
        code: u16,
        /// Status reason.
        reason: String,
        /// Status message.
        message: String,
    },
    /// A CRD document the kit cannot register.
    #[error("invalid CustomResourceDefinition {name}: {message}")]
    Crd {
        /// The CRD's name (or "?" when unnamed).
        name: String,
        /// Why.
        message: String,
    },
    /// YAML that does not parse.
    #[error("YAML: {0}")]
    Yaml(#[from] serde_saphyr::Error),
    /// JSON that does not parse, or a typed object that does not (de)serialize.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// I/O (binding the listener, writing a kubeconfig).
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// Building the kube client.
    #[error("kube client: {0}")]
    Kube(#[from] kube::Error),
    /// A URL that does not parse.
    #[error("URL: {0}")]
    Uri(#[from] http::uri::InvalidUri),
}

fn qualified(plural: &str, group: &str) -> String {
    if group.is_empty() {
        plural.to_owned()
    } else {
        format!("{plural}.{group}")
    }
}

fn render_causes(causes: &[Cause]) -> String {
    let parts: Vec<String> = causes
        .iter()
        .map(|c| {
            if c.field.is_empty() {
                c.message.clone()
            } else {
                format!("{}: {}", c.field, c.message)
            }
        })
        .collect();
    if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("[{}]", parts.join(", "))
    }
}

impl Error {
    /// HTTP status code of the answer.
    pub fn code(&self) -> u16 {
        match self {
            Error::NotFound(_) | Error::NoSuchResource(_) => 404,
            Error::AlreadyExists(_) | Error::Conflict { .. } => 409,
            Error::Invalid { .. } | Error::Crd { .. } => 422,
            Error::BadRequest(_) | Error::Yaml(_) | Error::Json(_) => 400,
            Error::MethodNotAllowed(_) => 405,
            Error::UnsupportedMediaType(_) => 415,
            Error::Gone { .. } => 410,
            Error::TooManyRequests { .. } => 429,
            Error::Injected { code, .. } => *code,
            Error::Internal(_) | Error::Io(_) | Error::Kube(_) | Error::Uri(_) => 500,
        }
    }

    /// `Status.reason`.
    pub fn reason(&self) -> String {
        match self {
            Error::NotFound(_) | Error::NoSuchResource(_) => "NotFound".into(),
            Error::AlreadyExists(_) => "AlreadyExists".into(),
            Error::Conflict { .. } => "Conflict".into(),
            Error::Invalid { .. } | Error::Crd { .. } => "Invalid".into(),
            Error::BadRequest(_) | Error::Yaml(_) | Error::Json(_) => "BadRequest".into(),
            Error::MethodNotAllowed(_) => "MethodNotAllowed".into(),
            Error::UnsupportedMediaType(_) => "UnsupportedMediaType".into(),
            Error::Gone { .. } => "Expired".into(),
            Error::TooManyRequests { .. } => "TooManyRequests".into(),
            Error::Injected { reason, .. } => reason.clone(),
            Error::Internal(_) | Error::Io(_) | Error::Kube(_) | Error::Uri(_) => {
                "InternalError".into()
            }
        }
    }

    /// A short label for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound(_) => "not_found",
            Error::NoSuchResource(_) => "no_such_resource",
            Error::AlreadyExists(_) => "already_exists",
            Error::Conflict { .. } => "conflict",
            Error::Invalid { .. } => "invalid",
            Error::BadRequest(_) => "bad_request",
            Error::MethodNotAllowed(_) => "method_not_allowed",
            Error::UnsupportedMediaType(_) => "unsupported_media_type",
            Error::Gone { .. } => "gone",
            Error::TooManyRequests { .. } => "too_many_requests",
            Error::Internal(_) => "internal",
            Error::Injected { .. } => "injected",
            Error::Crd { .. } => "crd",
            Error::Yaml(_) => "yaml",
            Error::Json(_) => "json",
            Error::Io(_) => "io",
            Error::Kube(_) => "kube",
            Error::Uri(_) => "uri",
        }
    }

    /// The `Status` object (meta/v1) kube-apiserver would send for this error.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.to_string(),
            "reason": self.reason(),
            "code": self.code(),
        });
        let details = match self {
            Error::NotFound(t) | Error::AlreadyExists(t) | Error::Conflict { target: t, .. } => {
                Some(target_details(t, &[]))
            }
            Error::Invalid { target, causes } => Some(target_details(target, causes)),
            Error::TooManyRequests { causes, .. } => {
                Some(target_details(&Target::default(), causes))
            }
            _ => None,
        };
        if let Some(details) = details {
            status["details"] = details;
        }
        status
    }
}

fn target_details(t: &Target, causes: &[Cause]) -> Value {
    let mut d = json!({ "name": t.name, "kind": t.kind });
    if !t.group.is_empty() {
        d["group"] = json!(t.group);
    }
    if !causes.is_empty() {
        d["causes"] = causes
            .iter()
            .map(|c| {
                let mut v = json!({ "reason": c.reason, "message": c.message });
                if !c.field.is_empty() {
                    v["field"] = json!(c.field);
                }
                v
            })
            .collect();
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_reads_like_kube_apiserver() {
        let e = Error::NotFound(Target {
            group: "slipway.dev".into(),
            kind: "nodeupdates".into(),
            name: "n1".into(),
        });
        assert_eq!(e.to_string(), "nodeupdates.slipway.dev \"n1\" not found");
        let s = e.to_status();
        assert_eq!(s["code"], 404);
        assert_eq!(s["details"]["group"], "slipway.dev");
    }

    #[test]
    fn invalid_lists_every_field() {
        let e = Error::Invalid {
            target: Target {
                group: "slipway.dev".into(),
                kind: "RolloutPolicy".into(),
                name: "p".into(),
            },
            causes: vec![
                Cause::new("FieldValueRequired", "spec.channel", "Required value"),
                Cause::new("FieldValueInvalid", "spec.x", "Invalid value"),
            ],
        };
        assert_eq!(
            e.to_string(),
            "RolloutPolicy.slipway.dev \"p\" is invalid: [spec.channel: Required value, spec.x: Invalid value]"
        );
        assert_eq!(e.to_status()["details"]["causes"][1]["field"], "spec.x");
    }
}
