//! Names every component agrees on (see docs/protocol.md).

/// The API group of Slipway's custom resources.
pub const API_GROUP: &str = "slipway.dev";
/// The API version of Slipway's custom resources.
pub const API_VERSION: &str = "v1alpha1";
/// Prefix of Slipway's labels and annotations.
pub const LABEL_PREFIX: &str = "slipway.dev/";
/// The engine's well-known D-Bus name.
pub const DBUS_NAME: &str = "dev.slipway.Engine1";
/// The engine's D-Bus object path.
pub const DBUS_PATH: &str = "/dev/slipway/Engine1";
/// The engine's D-Bus interface.
pub const DBUS_INTERFACE: &str = "dev.slipway.Engine1";
/// `Content-Type` of every component's `/metrics` (OpenMetrics text).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";
