//! Building a release manifest for `slipway manifest new` and `slipway sign`: fields given as
//! flags, payload entries completed from the files themselves (size, sha256, format by magic
//! bytes, a content-addressed url), and errors that name the field and the fix. Pure: the CLI
//! measures the files and reads the clock.

use jiff::Timestamp;
use semver::Version;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use slipway_api::Sha256Digest;
use slipway_api::manifest::{
    Advisory, Manifest, OsImage, PayloadFormat, RELEASE_TYPE, RuntimeImage, Severity, is_valid_name,
};

use crate::error::{Error, Result};
use crate::magic::Magic;

/// The url a payload gets unless the manifest or `--payload-url` says otherwise: the update
/// server's content-addressed path (`GET /v1/payloads/{sha256}`), where `slipway publish`
/// uploads it.
pub const DEFAULT_PAYLOAD_URL: &str = "/v1/payloads/{sha256}";

/// What a payload url template says where the digest goes.
pub const SHA256_PLACEHOLDER: &str = "{sha256}";

/// The update server's payload path, before the digest.
const SERVER_PAYLOAD_PREFIX: &str = "/v1/payloads/";

/// Every field a release manifest has (the JSON spelling).
const FIELDS: [&str; 8] = [
    "type",
    "channel",
    "version",
    "expires",
    "os",
    "runtime",
    "minFromVersion",
    "advisories",
];

/// The rule for channel and runtime image names, for messages.
const NAME_RULE: &str = "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit";

/// Manifest fields given as flags; each one given replaces what the manifest file says.
#[derive(Debug, Clone, Default)]
pub struct Fields {
    /// `channel`.
    pub channel: Option<String>,
    /// `version`.
    pub version: Option<Version>,
    /// `expires`.
    pub expires: Option<Timestamp>,
    /// `minFromVersion`.
    pub min_from_version: Option<Version>,
    /// Added to `advisories`, each replacing one with the same id.
    pub advisories: Vec<Advisory>,
}

/// A payload file as measured by the CLI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PayloadFile {
    /// How messages name it (the path as given).
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: Sha256Digest,
    /// What its first bytes say.
    pub magic: Magic,
}

/// A manifest being built: JSON that may still lack fields or hold placeholders until
/// [`Draft::finish`] turns it into a [`Manifest`].
#[derive(Debug, Clone, PartialEq)]
pub struct Draft {
    doc: Map<String, Value>,
}

fn field(name: impl Into<String>, problem: impl Into<String>, fix: impl Into<String>) -> Error {
    Error::ManifestField {
        field: name.into(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// Deserializes one part of the manifest, naming it when it does not parse.
fn parse_part<T: DeserializeOwned>(name: &str, value: &Value, fix: &str) -> Result<T> {
    serde_json::from_value(value.clone()).map_err(|e| field(name, e.to_string(), fix))
}

impl Default for Draft {
    fn default() -> Self {
        Self::new()
    }
}

impl Draft {
    /// An empty release manifest (only its `type`), for building from flags alone.
    pub fn new() -> Self {
        let mut doc = Map::new();
        doc.insert("type".into(), RELEASE_TYPE.into());
        Self { doc }
    }

    /// A manifest file's JSON, as written (placeholders and missing fields allowed for now).
    /// A missing `type` is filled in: it is always the same.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        match serde_json::from_slice(bytes) {
            Ok(Value::Object(mut doc)) => {
                doc.entry("type").or_insert_with(|| RELEASE_TYPE.into());
                Ok(Self { doc })
            }
            Ok(_) => Err(Error::InvalidManifest(
                "not a JSON object (`slipway manifest new` writes one)".into(),
            )),
            Err(e) => Err(Error::InvalidManifest(format!("not valid JSON: {e}"))),
        }
    }

    /// Sets the fields given as flags.
    pub fn apply(&mut self, fields: &Fields) -> Result<()> {
        let doc = &mut self.doc;
        if let Some(c) = &fields.channel {
            doc.insert("channel".into(), c.clone().into());
        }
        if let Some(v) = &fields.version {
            doc.insert("version".into(), v.to_string().into());
        }
        if let Some(t) = &fields.expires {
            doc.insert("expires".into(), t.to_string().into());
        }
        if let Some(v) = &fields.min_from_version {
            doc.insert("minFromVersion".into(), v.to_string().into());
        }
        if !fields.advisories.is_empty() {
            let list = doc
                .entry("advisories")
                .or_insert_with(|| Value::Array(Vec::new()));
            let Value::Array(list) = list else {
                return Err(field(
                    "advisories",
                    "is not a list",
                    "make it [{\"id\": ...}, ...] or remove it, then pass --advisory",
                ));
            };
            for a in &fields.advisories {
                list.retain(|old| old.get("id").and_then(Value::as_str) != Some(a.id.as_str()));
                list.push(serde_json::to_value(a).map_err(|e| {
                    field("advisories", e.to_string(), "pass --advisory ID[:SEVERITY]")
                })?);
            }
        }
        Ok(())
    }

    /// Checks everything but the payloads, so that mistakes show before big files are hashed:
    /// no unknown fields, `type`, `channel`, `version`, `expires` (after `now`),
    /// `minFromVersion` and `advisories`.
    pub fn check_header(&self, now: Timestamp) -> Result<()> {
        let doc = &self.doc;
        if let Some(unknown) = doc.keys().find(|k| !FIELDS.contains(&k.as_str())) {
            return Err(field(
                unknown,
                "unknown (not a release manifest field)",
                format!("remove it; the fields are {}", FIELDS.join(", ")),
            ));
        }
        match doc.get("type") {
            Some(Value::String(t)) if t == RELEASE_TYPE => {}
            None => {
                return Err(field(
                    "type",
                    "missing",
                    format!("add \"type\": \"{RELEASE_TYPE}\""),
                ));
            }
            Some(other) => {
                return Err(field(
                    "type",
                    format!("is {other}, not a release manifest's"),
                    format!("it must be \"{RELEASE_TYPE}\" (is this the right file?)"),
                ));
            }
        }
        match doc.get("channel") {
            None | Some(Value::Null) => {
                return Err(field("channel", "missing", "pass --channel stable"));
            }
            Some(Value::String(c)) if is_valid_name(c) => {}
            Some(other) => {
                return Err(field(
                    "channel",
                    format!("{other} is not a valid channel name"),
                    format!("use {NAME_RULE}, e.g. --channel stable"),
                ));
            }
        }
        let version = match doc.get("version") {
            None | Some(Value::Null) => {
                return Err(field("version", "missing", "pass --version 2.0.0"));
            }
            Some(v) => parse_version("version", v, "--version 2.0.0")?,
        };
        let expires = match doc.get("expires") {
            None | Some(Value::Null) => {
                return Err(field(
                    "expires",
                    "missing",
                    "pass --expires-in 30d, or --expires with an RFC 3339 instant",
                ));
            }
            Some(Value::String(s)) => s.parse::<Timestamp>().map_err(|e| {
                field(
                    "expires",
                    format!("{s:?} is not an RFC 3339 instant ({e})"),
                    "write it like 2026-09-01T00:00:00Z, or pass --expires-in 30d",
                )
            })?,
            Some(other) => {
                return Err(field(
                    "expires",
                    format!("{other} is not an RFC 3339 instant"),
                    "write it like \"2026-09-01T00:00:00Z\", or pass --expires-in 30d",
                ));
            }
        };
        if now >= expires {
            return Err(field(
                "expires",
                format!("{expires} has passed, so nodes would refuse the release"),
                "pass --expires-in 30d, or a later --expires",
            ));
        }
        if let Some(v) = doc.get("minFromVersion").filter(|v| !v.is_null()) {
            let min = parse_version("minFromVersion", v, "--min-from-version 1.4.0")?;
            if min >= version {
                return Err(field(
                    "minFromVersion",
                    format!("{min} is not older than the release's version {version}"),
                    "pass an older --min-from-version, or remove it",
                ));
            }
        }
        if let Some(list) = doc.get("advisories").filter(|v| !v.is_null()) {
            let fix = "write {\"id\": ..., \"severity\": ..., \"summary\": ...}, or pass \
                       --advisory ID[:SEVERITY[:SUMMARY]]";
            let Value::Array(list) = list else {
                return Err(field("advisories", "is not a list", fix));
            };
            for (i, a) in list.iter().enumerate() {
                let name = format!("advisories[{i}]");
                let a: Advisory = parse_part(&name, a, fix)?;
                if a.id.is_empty() || a.id.len() > 128 {
                    return Err(field(
                        format!("{name}.id"),
                        "must be 1-128 characters",
                        "use an identifier like CVE-2026-1234",
                    ));
                }
            }
        }
        for (name, fix) in [
            ("os", "remove it and pass --os FILE"),
            ("runtime", "remove it and pass --runtime NAME=FILE"),
        ] {
            let ok = match doc.get(name) {
                None | Some(Value::Null) => true,
                Some(Value::Object(_)) => name == "os",
                Some(Value::Array(_)) => name == "runtime",
                Some(_) => false,
            };
            if !ok {
                let shape = if name == "os" {
                    "an object {url, size, sha256, format}"
                } else {
                    "a list of {name, url, size, sha256}"
                };
                return Err(field(name, format!("must be {shape}"), fix));
            }
        }
        Ok(())
    }

    /// Creates or completes `os` from the image file: size, sha256, format (from its magic
    /// bytes; a `format` already in the manifest must agree) and url (see [`payload_url`]).
    pub fn set_os(&mut self, file: &PayloadFile, url_template: Option<&str>) -> Result<()> {
        let format = match file.magic {
            Magic::Format(f) => f,
            Magic::Unsupported(name) => {
                return Err(field(
                    "os.format",
                    format!(
                        "{} is {name}-compressed, which nodes cannot decode",
                        file.name
                    ),
                    "recompress it with zstd or xz, or pass the uncompressed image",
                ));
            }
        };
        let os = self
            .doc
            .entry("os")
            .or_insert_with(|| Value::Object(Map::new()));
        if os.is_null() {
            *os = Value::Object(Map::new());
        }
        let Value::Object(os) = os else {
            return Err(field(
                "os",
                "must be an object {url, size, sha256, format}",
                "remove it and pass --os FILE",
            ));
        };
        if let Some(declared) = os.get("format").filter(|v| !v.is_null()) {
            let declared: PayloadFormat =
                serde_json::from_value(declared.clone()).map_err(|_| {
                    field(
                        "os.format",
                        format!("{declared} is not a payload format"),
                        "use raw, zstd or xz, or remove it: sign takes it from the file",
                    )
                })?;
            if declared != format {
                return Err(field(
                    "os.format",
                    format!(
                        "says {}, but {} is {}",
                        declared.as_str(),
                        file.name,
                        file.magic
                    ),
                    format!(
                        "pass the {} image, or remove `format` from the manifest to take {} \
                         from the file",
                        match declared {
                            PayloadFormat::Raw => "uncompressed".to_owned(),
                            other => format!("{}-compressed", other.as_str()),
                        },
                        format.as_str()
                    ),
                ));
            }
        }
        let url = payload_url(os.get("url"), &file.sha256, url_template);
        os.insert("url".into(), url.into());
        os.insert("size".into(), file.size.into());
        os.insert("sha256".into(), file.sha256.to_hex().into());
        os.insert("format".into(), format.as_str().into());
        Ok(())
    }

    /// Sets `os.delta` from the delta files made of the OS payload (after [`Self::set_os`]).
    pub fn set_delta(
        &mut self,
        files: &crate::deltafiles::DeltaFiles,
        url_template: Option<&str>,
    ) -> Result<()> {
        let Some(Value::Object(os)) = self.doc.get_mut("os") else {
            return Err(field("os", "missing", "pass --os FILE"));
        };
        let old = os.get("delta").cloned();
        let old_url = |part: &str| {
            old.as_ref()
                .and_then(|d| d.get(part))
                .and_then(|p| p.get("url"))
        };
        let image_url = if files.image.sha256.to_hex()
            == os.get("sha256").and_then(Value::as_str).unwrap_or("")
        {
            // A raw payload is its own image.
            os.get("url").cloned().unwrap_or(Value::Null)
        } else {
            payload_url(old_url("image"), &files.image.sha256, url_template).into()
        };
        let index_url = payload_url(old_url("index"), &files.index.sha256, url_template);
        os.insert(
            "delta".into(),
            serde_json::json!({
                "blockSize": files.block_size,
                "index": {
                    "url": index_url,
                    "size": files.index.size,
                    "sha256": files.index.sha256.to_hex(),
                },
                "image": {
                    "url": image_url,
                    "size": files.image.size,
                    "sha256": files.image.sha256.to_hex(),
                },
            }),
        );
        Ok(())
    }

    /// Removes `os.delta` (`--no-delta`): every node downloads the whole payload.
    pub fn clear_delta(&mut self) {
        if let Some(Value::Object(os)) = self.doc.get_mut("os") {
            os.remove("delta");
        }
    }

    /// Creates or completes the `runtime` entry `name` from the image file: size, sha256 and
    /// url. Runtime images are installed as served, so a compressed one is refused.
    pub fn set_runtime(
        &mut self,
        name: &str,
        file: &PayloadFile,
        url_template: Option<&str>,
    ) -> Result<()> {
        if !is_valid_name(name) {
            return Err(field(
                "runtime",
                format!("{name:?} is not a valid runtime image name"),
                format!("use {NAME_RULE} (it becomes <name>.raw on the node)"),
            ));
        }
        if file.magic != Magic::Format(PayloadFormat::Raw) {
            return Err(field(
                format!("runtime.{name}"),
                format!(
                    "{} is {}, but runtime images are installed as served, as {name}.raw",
                    file.name, file.magic
                ),
                "decompress it and pass the image itself",
            ));
        }
        let list = self
            .doc
            .entry("runtime")
            .or_insert_with(|| Value::Array(Vec::new()));
        if list.is_null() {
            *list = Value::Array(Vec::new());
        }
        let Value::Array(list) = list else {
            return Err(field(
                "runtime",
                "must be a list of {name, url, size, sha256}",
                "remove it and pass --runtime NAME=FILE",
            ));
        };
        let named = |e: &Value| e.get("name").and_then(Value::as_str) == Some(name);
        let at = match list.iter().position(named) {
            Some(i) => i,
            None => {
                list.push(serde_json::json!({ "name": name }));
                list.len() - 1
            }
        };
        let entry = list[at]
            .as_object_mut()
            .expect("an entry with a name is an object");
        let url = payload_url(entry.get("url"), &file.sha256, url_template);
        entry.insert("url".into(), url.into());
        entry.insert("size".into(), file.size.into());
        entry.insert("sha256".into(), file.sha256.to_hex().into());
        Ok(())
    }

    /// The finished manifest, ready to sign: the header checks, no placeholders left in the
    /// payloads, something to install, and the manifest's own rules.
    pub fn finish(self, now: Timestamp) -> Result<Manifest> {
        self.check_header(now)?;
        self.check_payloads()?;
        self.into_manifest()
    }

    /// As [`Self::finish`], but a manifest without any payload yet passes: what
    /// `slipway manifest new` writes for `slipway sign --os` to complete.
    pub fn finish_draft(self, now: Timestamp) -> Result<Manifest> {
        if self.has_payloads() {
            return self.finish(now);
        }
        self.check_header(now)?;
        let manifest: Manifest = serde_json::from_value(Value::Object(self.doc))
            .map_err(|e| Error::InvalidManifest(e.to_string()))?;
        // The manifest's own rules refuse a release that installs nothing; judge everything
        // else with a stand-in image, so a draft meets exactly the rules a release does.
        let mut judged = manifest.clone();
        judged.os = Some(OsImage {
            url: DEFAULT_PAYLOAD_URL.into(),
            size: 1,
            sha256: Sha256Digest([0; 32]),
            format: PayloadFormat::Raw,
            delta: None,
        });
        judged
            .validate()
            .map_err(|e| Error::InvalidManifest(e.to_string()))?;
        Ok(manifest)
    }

    fn has_payloads(&self) -> bool {
        let os = self.doc.get("os").is_some_and(|v| !v.is_null());
        let runtime = self
            .doc
            .get("runtime")
            .and_then(Value::as_array)
            .is_some_and(|l| !l.is_empty());
        os || runtime
    }

    fn check_payloads(&self) -> Result<()> {
        if !self.has_payloads() {
            return Err(field(
                "os",
                "missing, and there are no runtime images either: the release installs nothing",
                "pass --os FILE (or --runtime NAME=FILE for a runtime-only release)",
            ));
        }
        if let Some(os) = self.doc.get("os").filter(|v| !v.is_null()) {
            let fix = "pass --os FILE to fill it in from the image";
            let os = os
                .as_object()
                .ok_or_else(|| field("os", "must be an object", fix))?;
            check_payload_entry("os", os, fix)?;
            let _: OsImage = parse_part("os", &Value::Object(os.clone()), fix)?;
        }
        let runtime = self.doc.get("runtime").and_then(Value::as_array);
        for (i, entry) in runtime.into_iter().flatten().enumerate() {
            let Some(name) = entry.get("name").and_then(Value::as_str) else {
                return Err(field(
                    format!("runtime[{i}].name"),
                    "missing",
                    "name every runtime image, or remove the entry and pass --runtime NAME=FILE",
                ));
            };
            let prefix = format!("runtime.{name}");
            let fix = format!("pass --runtime {name}=FILE to fill it in from the image");
            let obj = entry
                .as_object()
                .ok_or_else(|| field(&prefix, "must be an object", &fix))?;
            check_payload_entry(&prefix, obj, &fix)?;
            let _: RuntimeImage = parse_part(&prefix, entry, &fix)?;
        }
        Ok(())
    }

    fn into_manifest(self) -> Result<Manifest> {
        let manifest: Manifest = serde_json::from_value(Value::Object(self.doc))
            .map_err(|e| Error::InvalidManifest(e.to_string()))?;
        manifest
            .validate()
            .map_err(|e| Error::InvalidManifest(e.to_string()))?;
        Ok(manifest)
    }
}

/// Refuses what is left of a placeholder in a payload entry: no url, size or sha256, a
/// `{sha256}` url, size 0, an all-zero digest.
fn check_payload_entry(prefix: &str, entry: &Map<String, Value>, fix: &str) -> Result<()> {
    for key in ["url", "size", "sha256"] {
        if entry.get(key).is_none_or(Value::is_null) {
            return Err(field(format!("{prefix}.{key}"), "missing", fix));
        }
    }
    match entry.get("url") {
        Some(Value::String(u)) if u.is_empty() => {
            return Err(field(format!("{prefix}.url"), "is empty", fix));
        }
        Some(Value::String(u)) if u.contains(SHA256_PLACEHOLDER) => {
            return Err(field(
                format!("{prefix}.url"),
                format!("still has the {SHA256_PLACEHOLDER} placeholder"),
                fix,
            ));
        }
        _ => {}
    }
    if entry.get("size").and_then(Value::as_u64) == Some(0) {
        return Err(field(format!("{prefix}.size"), "is 0 (a placeholder)", fix));
    }
    if let Some(Value::String(d)) = entry.get("sha256")
        && !d.is_empty()
        && d.bytes().all(|b| b == b'0')
    {
        return Err(field(
            format!("{prefix}.sha256"),
            "is all zeros (a placeholder)",
            fix,
        ));
    }
    Ok(())
}

fn parse_version(name: &str, value: &Value, example: &str) -> Result<Version> {
    let text = value.as_str().ok_or_else(|| {
        field(
            name,
            format!("{value} is not a SemVer version"),
            format!("write it as a string, or pass {example}"),
        )
    })?;
    text.parse().map_err(|e| {
        field(
            name,
            format!("{text:?} is not a SemVer version ({e})"),
            format!("pass e.g. {example}"),
        )
    })
}

/// The url of a payload just measured. An explicit template wins; otherwise the manifest's
/// url is kept, with a `{sha256}` placeholder filled in, and a path on the update server
/// (`/v1/payloads/<digest>`, content-addressed) follows the new digest; with no url,
/// [`DEFAULT_PAYLOAD_URL`].
pub fn payload_url(
    existing: Option<&Value>,
    sha256: &Sha256Digest,
    template: Option<&str>,
) -> String {
    let hex = sha256.to_hex();
    let fill = |t: &str| t.replace(SHA256_PLACEHOLDER, &hex);
    match (template, existing) {
        (Some(t), _) => fill(t),
        (None, Some(Value::String(u))) if u.contains(SHA256_PLACEHOLDER) => fill(u),
        (None, Some(Value::String(u))) if is_server_payload_path(u) => fill(DEFAULT_PAYLOAD_URL),
        (None, Some(Value::String(u))) if !u.is_empty() => u.clone(),
        _ => fill(DEFAULT_PAYLOAD_URL),
    }
}

fn is_server_payload_path(url: &str) -> bool {
    url.strip_prefix(SERVER_PAYLOAD_PREFIX)
        .is_some_and(|d| d.parse::<Sha256Digest>().is_ok())
}

/// Parses `--advisory ID[:SEVERITY[:SUMMARY]]`.
pub fn parse_advisory(s: &str) -> Result<Advisory, String> {
    let mut parts = s.splitn(3, ':');
    let id = parts.next().unwrap_or_default().trim();
    if id.is_empty() || id.len() > 128 {
        return Err(format!(
            "expected ID[:SEVERITY[:SUMMARY]] with an id of 1-128 characters, got {s:?}"
        ));
    }
    let severity = match parts.next().map(str::trim) {
        None | Some("") => None,
        Some(sev) => Some(
            serde_json::from_value::<Severity>(Value::from(sev.to_ascii_lowercase())).map_err(
                |_| format!("severity {sev:?} is not low, moderate, important or critical"),
            )?,
        ),
    };
    let summary = parts
        .next()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned);
    Ok(Advisory {
        id: id.to_owned(),
        severity,
        summary,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: &str = "2030-01-01T00:00:00Z";

    fn now() -> Timestamp {
        NOW.parse().unwrap()
    }

    fn fields() -> Fields {
        Fields {
            channel: Some("stable".into()),
            version: Some("2.0.0".parse().unwrap()),
            expires: Some("2030-02-01T00:00:00Z".parse().unwrap()),
            ..Fields::default()
        }
    }

    fn file(name: &str, magic: Magic) -> PayloadFile {
        PayloadFile {
            name: name.into(),
            size: 4096,
            sha256: Sha256Digest::of(name.as_bytes()),
            magic,
        }
    }

    const RAW: Magic = Magic::Format(PayloadFormat::Raw);
    const ZSTD: Magic = Magic::Format(PayloadFormat::Zstd);

    fn draft(json: &str) -> Draft {
        Draft::from_json(json.as_bytes()).unwrap()
    }

    fn field_of(e: Error) -> String {
        match e {
            Error::ManifestField { field, .. } => field,
            other => panic!("not a field error: {other}"),
        }
    }

    #[test]
    fn flags_alone_and_an_image_make_a_release() {
        let mut d = Draft::new();
        d.apply(&fields()).unwrap();
        let img = file("os.img.zst", ZSTD);
        d.set_os(&img, None).unwrap();
        let m = d.finish(now()).unwrap();
        let os = m.os.unwrap();
        assert_eq!(os.size, 4096);
        assert_eq!(os.sha256, img.sha256);
        assert_eq!(os.format, PayloadFormat::Zstd);
        assert_eq!(os.url, format!("/v1/payloads/{}", img.sha256));
        assert_eq!(
            (m.channel.as_str(), m.version.to_string()),
            ("stable", "2.0.0".into())
        );
    }

    #[test]
    fn missing_fields_are_named_with_the_flag_that_sets_them() {
        for (missing, flag) in [
            ("channel", "--channel stable"),
            ("version", "--version 2.0.0"),
            ("expires", "--expires-in 30d"),
        ] {
            let mut f = fields();
            match missing {
                "channel" => f.channel = None,
                "version" => f.version = None,
                _ => f.expires = None,
            }
            let mut d = Draft::new();
            d.apply(&f).unwrap();
            let msg = d.check_header(now()).unwrap_err().to_string();
            assert!(
                msg.starts_with(&format!("manifest field `{missing}`: missing; pass {flag}")),
                "{msg}"
            );
        }
    }

    #[test]
    fn bad_fields_are_named() {
        let base = r#""type": "slipway.dev/release/v1", "channel": "stable", "version": "2.0.0", "expires": "2030-02-01T00:00:00Z""#;
        let cases = [
            (
                r#"{"channel": "no/slash", "version": "2.0.0"}"#.to_owned(),
                "channel",
            ),
            (format!("{{{base}, \"colour\": 1}}"), "colour"),
            (
                format!("{{{base}, \"minFromVersion\": \"3.0.0\"}}"),
                "minFromVersion",
            ),
            (
                format!("{{{base}, \"minFromVersion\": \"1.0\"}}"),
                "minFromVersion",
            ),
            (
                format!("{{{base}, \"advisories\": [{{\"id\": \"\"}}]}}"),
                "advisories[0].id",
            ),
            (
                format!("{{{base}, \"advisories\": [{{\"id\": \"X\", \"severity\": \"dire\"}}]}}"),
                "advisories[0]",
            ),
            (format!("{{{base}, \"os\": []}}"), "os"),
            (r#"{"type": "slipway.dev/root/v1"}"#.to_owned(), "type"),
            (
                base.replace("2.0.0", "two")
                    .replace("\"type\"", "{\"type\"")
                    + "}",
                "version",
            ),
            (
                base.replace("2030-02-01T00:00:00Z", "soon")
                    .replace("\"type\"", "{\"type\"")
                    + "}",
                "expires",
            ),
            // Already expired at NOW.
            (
                base.replace("2030-02-01", "2029-01-01")
                    .replace("\"type\"", "{\"type\"")
                    + "}",
                "expires",
            ),
        ];
        for (json, want) in cases {
            let d = draft(&json);
            let got = field_of(d.check_header(now()).unwrap_err());
            assert_eq!(got, want, "{json}");
        }
    }

    #[test]
    fn flags_replace_the_files_fields_and_add_advisories() {
        let mut d = draft(
            r#"{"channel": "beta", "version": "1.0.0", "expires": "2001-01-01T00:00:00Z",
                "advisories": [{"id": "CVE-1", "summary": "old"}, {"id": "CVE-2"}]}"#,
        );
        let mut f = fields();
        f.advisories = vec![parse_advisory("CVE-1:critical:new text").unwrap()];
        d.apply(&f).unwrap();
        d.set_os(&file("os.img", RAW), None).unwrap();
        let m = d.finish(now()).unwrap();
        assert_eq!(m.channel, "stable");
        assert_eq!(m.version.to_string(), "2.0.0");
        let ids: Vec<_> = m.advisories.iter().map(|a| a.id.as_str()).collect();
        assert_eq!(ids, ["CVE-2", "CVE-1"]);
        assert_eq!(m.advisories[1].severity, Some(Severity::Critical));
        assert_eq!(m.advisories[1].summary.as_deref(), Some("new text"));
    }

    #[test]
    fn placeholders_are_filled_and_a_declared_format_must_match_the_file() {
        let placeholder = format!(
            r#"{{"channel": "stable", "version": "2.0.0", "expires": "2030-02-01T00:00:00Z",
                "os": {{"url": "/v1/payloads/{{sha256}}", "size": 0, "sha256": "{}", "format": "zstd"}},
                "runtime": [{{"name": "containerd", "url": "https://cdn.example/{{sha256}}", "size": 0, "sha256": "{}"}}]}}"#,
            "0".repeat(64),
            "0".repeat(64)
        );
        // Not filled in: each placeholder is named with the flag that fills it.
        let err = draft(&placeholder).finish(now()).unwrap_err().to_string();
        assert!(
            err.starts_with(
                "manifest field `os.url`: still has the {sha256} placeholder; pass --os FILE"
            ),
            "{err}"
        );
        let mut d = draft(&placeholder);
        d.set_os(&file("os.img.zst", ZSTD), None).unwrap();
        let err = d.clone().finish(now()).unwrap_err().to_string();
        assert!(
            err.starts_with("manifest field `runtime.containerd.url`"),
            "{err}"
        );
        assert!(err.contains("pass --runtime containerd=FILE"), "{err}");
        let ctr = file("ctr.raw", RAW);
        d.set_runtime("containerd", &ctr, None).unwrap();
        let m = d.finish(now()).unwrap();
        assert_eq!(
            m.runtime[0].url,
            format!("https://cdn.example/{}", ctr.sha256)
        );

        // The manifest says zstd; the file is not.
        let mut d = draft(&placeholder);
        let err = d
            .set_os(&file("os.img", RAW), None)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(
                "manifest field `os.format`: says zstd, but os.img is not compressed (raw)"
            ),
            "{err}"
        );
    }

    #[test]
    fn compressions_nodes_cannot_install_are_refused() {
        let mut d = Draft::new();
        let err = d
            .set_os(&file("os.img.gz", Magic::Unsupported("gzip")), None)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "manifest field `os.format`: os.img.gz is gzip-compressed, which nodes cannot \
             decode; recompress it with zstd or xz, or pass the uncompressed image"
        );
        let err = d
            .set_runtime("kubelet", &file("k.raw.zst", ZSTD), None)
            .unwrap_err();
        assert_eq!(field_of(err), "runtime.kubelet");
        let err = d
            .set_runtime("../etc", &file("k.raw", RAW), None)
            .unwrap_err();
        assert_eq!(field_of(err), "runtime");
    }

    #[test]
    fn urls() {
        let d = Sha256Digest::of(b"new");
        let old = Sha256Digest::of(b"old");
        let s = |u: &str| Some(Value::from(u));
        let cases = [
            (None, None, format!("/v1/payloads/{d}")),
            (
                s("/v1/payloads/{sha256}"),
                None,
                format!("/v1/payloads/{d}"),
            ),
            // A previous signing's server path follows the new digest.
            (
                s(&format!("/v1/payloads/{old}")),
                None,
                format!("/v1/payloads/{d}"),
            ),
            (
                s("https://cdn.example/os.img"),
                None,
                "https://cdn.example/os.img".into(),
            ),
            (s(""), None, format!("/v1/payloads/{d}")),
            (
                s("https://kept"),
                Some("https://cdn/{sha256}.zst"),
                format!("https://cdn/{d}.zst"),
            ),
        ];
        for (existing, template, want) in cases {
            assert_eq!(
                payload_url(existing.as_ref(), &d, template),
                want,
                "{existing:?}"
            );
        }
    }

    #[test]
    fn a_draft_may_lack_payloads_but_a_release_may_not() {
        let mut d = Draft::new();
        d.apply(&fields()).unwrap();
        let m = d.clone().finish_draft(now()).unwrap();
        assert!(m.os.is_none() && m.runtime.is_empty());
        let err = d.finish(now()).unwrap_err();
        assert_eq!(field_of(err), "os");
        // A draft is held to every other rule.
        let mut d = Draft::new();
        let mut f = fields();
        f.min_from_version = Some("2.0.0".parse().unwrap());
        d.apply(&f).unwrap();
        assert_eq!(
            field_of(d.finish_draft(now()).unwrap_err()),
            "minFromVersion"
        );
    }

    #[test]
    fn runtime_only_releases_and_new_entries() {
        let mut d = Draft::new();
        d.apply(&fields()).unwrap();
        d.set_runtime("containerd", &file("c.raw", RAW), None)
            .unwrap();
        d.set_runtime("kubelet", &file("k.raw", RAW), None).unwrap();
        // Again: replaced, not listed twice.
        d.set_runtime("kubelet", &file("k2.raw", RAW), None)
            .unwrap();
        let m = d.finish(now()).unwrap();
        assert!(m.os.is_none());
        let names: Vec<_> = m.runtime.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["containerd", "kubelet"]);
        assert_eq!(m.runtime[1].sha256, Sha256Digest::of(b"k2.raw"));
    }

    #[test]
    fn advisory_flags() {
        let a = parse_advisory("CVE-2026-1234").unwrap();
        assert_eq!(
            (a.id.as_str(), a.severity, a.summary),
            ("CVE-2026-1234", None, None)
        );
        let a = parse_advisory("SLIPWAY-7:Important:kubelet: a fix").unwrap();
        assert_eq!(a.severity, Some(Severity::Important));
        assert_eq!(a.summary.as_deref(), Some("kubelet: a fix"));
        let a = parse_advisory("X::just a summary").unwrap();
        assert_eq!(
            (a.severity, a.summary.as_deref()),
            (None, Some("just a summary"))
        );
        assert!(parse_advisory("").is_err());
        assert!(parse_advisory("X:dire").unwrap_err().contains("dire"));
    }

    #[test]
    fn not_an_object() {
        for bad in ["[1]", "nope", ""] {
            assert!(matches!(
                Draft::from_json(bad.as_bytes()),
                Err(Error::InvalidManifest(_))
            ));
        }
    }
}
