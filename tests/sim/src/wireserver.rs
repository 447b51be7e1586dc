//! A fake Azure wire server (`168.63.129.16:80`) and HostGAPlugin (`:32526`), so that the real Linux guest agent
//! (WALinuxAgent) can drive kvvm's package in a test exactly as it does on a VM.
//!
//! Written from WALinuxAgent's own client code (`azurelinuxagent/common/protocol/wire.py`, `goal_state.py`,
//! `extensions_goal_state_from_extensions_config.py`, `hostplugin.py`, 2.7.3 as Debian ships it): the agent
//! asks `/?comp=versions`, then `/machine/?comp=goalstate` every goal-state period, and on a new incarnation
//! the hosting environment, shared config, certificates (with its transport certificate in a header) and
//! extensions config the goal state points to; it fetches the handler manifest and the package zip from the
//! plugin's `location`, and uploads its aggregate status through the HostGAPlugin's `/status` (falling back
//! to a direct PUT of the status blob). Every upload is kept, parsed, so a test asserts on what the agent
//! reported upstream — the same JSON CRP reads on Azure.
//!
//! Covered: wire protocol version negotiation, goal states with incarnations, ExtensionsConfig with one or more
//! single-config plugins (`enabled`, `disabled`, `uninstall`, sequence numbers, public settings), an empty
//! certificate set, the handler manifest with several versions, the package download, block-blob status via
//! HostGAPlugin or directly, telemetry (accepted, not interpreted). Not covered: FastTrack goal states
//! (`/vmSettings` answers 404, "not supported", as older HostGAPlugins do), protected settings and the
//! certificates they need, signatures, multi-config handlers, page blobs, agent (GA family) updates,
//! `InVMArtifactsProfile` / on-hold, health reports from provisioning. Artifacts are served over plain http from
//! the wire server's address instead of https blob storage.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine;
use serde_json::Value;

use crate::httpserver::{Handler, HttpServer, Outcome, Request, Response};

/// The wire server's well-known address on every Azure VM.
pub const WIRE_SERVER_IP: &str = "168.63.129.16";
/// The HostGAPlugin's port on the wire server's address.
pub const HOST_PLUGIN_PORT: u16 = 32526;
/// The wire protocol version the agent requires (`PROTOCOL_VERSION` in wire.py).
pub const PROTOCOL_VERSION: &str = "2012-11-30";
/// The HostGAPlugin API version the agent requires (`API_VERSION` in hostplugin.py).
pub const HOST_PLUGIN_API_VERSION: &str = "2015-09-01";

const CONTAINER_ID: &str = "c6d5526c-5ac2-4200-b6e2-56f2b70c5ab2";
const ROLE_INSTANCE: &str = "b61f93d0-e1ed-40b2-b067-22c243233448.kvvm-vm";
const ROLE_CONFIG: &str =
    "b61f93d0-e1ed-40b2-b067-22c243233448.2.b61f93d0-e1ed-40b2-b067-22c243233448.2.kvvm-vm.1.xml";
const MAX_UPLOADS_KEPT: usize = 400;

/// What CRP asks of one extension handler (the `state` attribute of its `<Plugin>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginState {
    /// `enabled`: install if needed, write the settings, run enable.
    Enabled,
    /// `disabled`: run disable if the handler is enabled.
    Disabled,
    /// `uninstall`: disable if enabled, uninstall, remove the handler's directory.
    Uninstall,
}

impl PluginState {
    fn as_str(self) -> &'static str {
        match self {
            PluginState::Enabled => "enabled",
            PluginState::Disabled => "disabled",
            PluginState::Uninstall => "uninstall",
        }
    }
}

/// One extension in the goal state's ExtensionsConfig.
#[derive(Debug, Clone, PartialEq)]
pub struct Plugin {
    /// `<Publisher>.<Type>`.
    pub name: String,
    /// The version CRP asks for (an exact version here; the agent picks the highest match in the manifest).
    pub version: String,
    /// Requested state.
    pub state: PluginState,
    /// `seqNo` of its RuntimeSettings; the agent passes it as `ConfigSequenceNumber`.
    pub seq_no: u64,
    /// Public settings; `None` sends `"publicSettings": null`-free handler settings (an empty object).
    pub public_settings: Option<Value>,
}

impl Plugin {
    /// An enabled plugin with these public settings.
    pub fn enabled(name: &str, version: &str, seq_no: u64, public: Value) -> Plugin {
        Plugin {
            name: name.to_string(),
            version: version.to_string(),
            state: PluginState::Enabled,
            seq_no,
            public_settings: Some(public),
        }
    }

    /// The same plugin with another state.
    pub fn with_state(mut self, state: PluginState) -> Plugin {
        self.state = state;
        self
    }

    /// The same plugin with another sequence number.
    pub fn with_seq(mut self, seq_no: u64) -> Plugin {
        self.seq_no = seq_no;
        self
    }
}

/// A substatus the agent reported.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedSubstatus {
    pub name: String,
    pub status: String,
    pub code: i64,
    pub message: String,
}

/// The extension (runtime settings) status inside a handler's status.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedExtension {
    /// `runtimeSettingsStatus.sequenceNumber`.
    pub sequence_number: Option<i64>,
    pub name: String,
    pub operation: String,
    pub status: String,
    pub code: i64,
    pub message: String,
    pub substatus: Vec<ReportedSubstatus>,
}

/// One entry of `aggregateStatus.handlerAggregateStatus`.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportedHandler {
    pub name: String,
    pub version: String,
    /// `Ready`, `NotReady`, `Unresponsive`, ...
    pub status: String,
    pub code: i64,
    pub message: Option<String>,
    pub extension: Option<ReportedExtension>,
}

/// One status upload of the agent, parsed.
#[derive(Debug, Clone)]
pub struct VmStatus {
    /// Incarnation the server was at when the upload arrived.
    pub incarnation: u64,
    /// When it arrived.
    pub at: Instant,
    /// `HostGAPlugin` or `direct`.
    pub channel: &'static str,
    /// `aggregateStatus.guestAgentStatus.version`.
    pub agent_version: String,
    /// `aggregateStatus.guestAgentStatus.status`.
    pub agent_status: String,
    pub handlers: Vec<ReportedHandler>,
    /// The whole document.
    pub raw: Value,
}

impl VmStatus {
    /// The handler entry with this name.
    pub fn handler(&self, name: &str) -> Option<&ReportedHandler> {
        self.handlers.iter().find(|h| h.name == name)
    }

    fn parse(raw: Value, incarnation: u64, channel: &'static str) -> Result<VmStatus, String> {
        let agg = raw
            .get("aggregateStatus")
            .ok_or("no aggregateStatus in the status blob")?;
        let ga = &agg["guestAgentStatus"];
        let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
        let msg = |v: &Value| v.get("formattedMessage").map(|m| text(&m["message"]));
        let mut handlers = Vec::new();
        for h in agg["handlerAggregateStatus"]
            .as_array()
            .ok_or("handlerAggregateStatus is not a list")?
        {
            let extension = h.get("runtimeSettingsStatus").map(|rs| {
                let st = &rs["settingsStatus"]["status"];
                ReportedExtension {
                    sequence_number: rs["sequenceNumber"]
                        .as_i64()
                        .or_else(|| rs["sequenceNumber"].as_str().and_then(|s| s.parse().ok())),
                    name: text(&st["name"]),
                    operation: text(&st["operation"]),
                    status: text(&st["status"]),
                    code: st["code"].as_i64().unwrap_or_default(),
                    message: msg(st).unwrap_or_default(),
                    substatus: st["substatus"]
                        .as_array()
                        .map(|l| {
                            l.iter()
                                .map(|s| ReportedSubstatus {
                                    name: text(&s["name"]),
                                    status: text(&s["status"]),
                                    code: s["code"].as_i64().unwrap_or_default(),
                                    message: msg(s).unwrap_or_default(),
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            });
            handlers.push(ReportedHandler {
                name: text(&h["handlerName"]),
                version: text(&h["handlerVersion"]),
                status: text(&h["status"]),
                code: h["code"].as_i64().unwrap_or_default(),
                message: msg(h),
                extension,
            });
        }
        Ok(VmStatus {
            incarnation,
            at: Instant::now(),
            channel,
            agent_version: text(&ga["version"]),
            agent_status: text(&ga["status"]),
            handlers,
            raw,
        })
    }
}

#[derive(Default)]
struct State {
    incarnation: u64,
    plugins: Vec<Plugin>,
    /// (name, version) → zip bytes.
    packages: Vec<(String, String, Vec<u8>)>,
    uploads: Vec<VmStatus>,
    upload_errors: Vec<String>,
    /// `METHOD path` → count.
    requests: HashMap<String, usize>,
    log: Vec<String>,
}

/// The running fake wire server and HostGAPlugin.
pub struct WireServer {
    state: Arc<(Mutex<State>, Condvar)>,
    base: String,
    _wire: HttpServer,
    _host_plugin: Option<HttpServer>,
}

impl WireServer {
    /// Serves the wire protocol on `wire` (normally `168.63.129.16:80`) and, if given, the HostGAPlugin on
    /// `host_plugin` (normally `168.63.129.16:32526`). The goal state starts at incarnation 1 with no plugins.
    pub fn start(wire: SocketAddr, host_plugin: Option<SocketAddr>) -> io::Result<WireServer> {
        let state = Arc::new((
            Mutex::new(State {
                incarnation: 1,
                ..State::default()
            }),
            Condvar::new(),
        ));
        // The URL the goal state names needs the bound port (a test may bind port 0): set once bound.
        let shared_base: Arc<std::sync::OnceLock<String>> = Arc::default();
        let handler: Handler = {
            let state = state.clone();
            let base = shared_base.clone();
            Arc::new(move |req: &Request| {
                wire_request(&state, base.get().map_or("", String::as_str), req)
            })
        };
        let wire_server = HttpServer::start(wire, None, handler, None)?;
        let bound = wire_server.addr();
        let base = if bound.port() == 80 {
            format!("http://{}", bound.ip())
        } else {
            format!("http://{bound}")
        };
        let _ = shared_base.set(base.clone());
        let host_plugin = match host_plugin {
            Some(addr) => {
                let state = state.clone();
                let base = base.clone();
                let h: Handler =
                    Arc::new(move |req: &Request| host_plugin_request(&state, &base, req));
                Some(HttpServer::start(addr, None, h, None)?)
            }
            None => None,
        };
        Ok(WireServer {
            state,
            base,
            _wire: wire_server,
            _host_plugin: host_plugin,
        })
    }

    /// Makes `zip` downloadable as version `version` of handler `name` (listed in its manifest).
    pub fn add_package(&self, name: &str, version: &str, zip: Vec<u8>) {
        let mut s = self.state.0.lock().unwrap();
        s.packages.retain(|(n, v, _)| !(n == name && v == version));
        s.packages
            .push((name.to_string(), version.to_string(), zip));
    }

    /// A new goal state (incarnation + 1) with these plugins; returns the new incarnation.
    pub fn publish(&self, plugins: Vec<Plugin>) -> u64 {
        let mut s = self.state.0.lock().unwrap();
        s.incarnation += 1;
        s.plugins = plugins;
        let inc = s.incarnation;
        s.log.push(format!("published incarnation {inc}"));
        inc
    }

    /// The current incarnation.
    pub fn incarnation(&self) -> u64 {
        self.state.0.lock().unwrap().incarnation
    }

    /// The most recent status upload, if any.
    pub fn latest(&self) -> Option<VmStatus> {
        self.state.0.lock().unwrap().uploads.last().cloned()
    }

    /// Every status upload kept (the most recent few hundred), oldest first.
    pub fn uploads(&self) -> Vec<VmStatus> {
        self.state.0.lock().unwrap().uploads.clone()
    }

    /// Uploads the server could not parse (should stay empty).
    pub fn upload_errors(&self) -> Vec<String> {
        self.state.0.lock().unwrap().upload_errors.clone()
    }

    /// How many requests `METHOD path` (path without the query) received, e.g. `GET /machine/`.
    pub fn requests(&self, method_and_path: &str) -> usize {
        self.state
            .0
            .lock()
            .unwrap()
            .requests
            .get(method_and_path)
            .copied()
            .unwrap_or(0)
    }

    /// The server's own log: goal states published, artifacts served, errors answered.
    pub fn log(&self) -> String {
        self.state.0.lock().unwrap().log.join("\n")
    }

    /// Where the wire server listens.
    pub fn wire_addr(&self) -> SocketAddr {
        self._wire.addr()
    }

    /// Where the HostGAPlugin listens, if it was started.
    pub fn host_plugin_addr(&self) -> Option<SocketAddr> {
        self._host_plugin.as_ref().map(HttpServer::addr)
    }

    /// The URL prefix the server puts in goal states (`http://168.63.129.16`).
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// Waits up to `within` for an upload made at incarnation ≥ `incarnation` that satisfies `done`; returns it,
    /// or the last upload seen (for the failure message) as `Err`.
    #[allow(clippy::result_large_err)] // a test helper: the error is the last upload, shown in the panic
    pub fn wait_status(
        &self,
        incarnation: u64,
        within: Duration,
        done: impl Fn(&VmStatus) -> bool,
    ) -> Result<VmStatus, Option<VmStatus>> {
        let deadline = Instant::now() + within;
        let (lock, cv) = &*self.state;
        let mut s = lock.lock().unwrap();
        let mut seen = 0;
        loop {
            for u in &s.uploads[seen.min(s.uploads.len())..] {
                if u.incarnation >= incarnation && done(u) {
                    return Ok(u.clone());
                }
            }
            seen = s.uploads.len();
            let now = Instant::now();
            if now >= deadline {
                return Err(s.uploads.last().cloned());
            }
            let (g, _) = cv.wait_timeout(s, deadline - now).unwrap();
            s = g;
            if s.uploads.len() < seen {
                seen = 0;
            }
        }
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn xml(status: u16, body: String) -> Outcome {
    Outcome::Respond(Response {
        status,
        headers: vec![("Content-Type".into(), "text/xml; charset=utf-8".into())],
        body: body.into_bytes(),
        body_delay: None,
    })
}

fn plain(status: u16, body: &str) -> Outcome {
    Outcome::Respond(Response {
        status,
        headers: vec![("Content-Type".into(), "text/plain".into())],
        body: body.as_bytes().to_vec(),
        body_delay: None,
    })
}

fn error_xml(status: u16, code: &str, message: &str) -> Outcome {
    xml(
        status,
        format!(
            "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Error xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\"><Code>{code}</Code><Message>{}</Message><Details /></Error>",
            xml_escape(message)
        ),
    )
}

fn count(state: &(Mutex<State>, Condvar), req: &Request) {
    let mut s = state.0.lock().unwrap();
    *s.requests
        .entry(format!("{} {}", req.method, req.path()))
        .or_default() += 1;
}

fn wire_request(state: &Arc<(Mutex<State>, Condvar)>, base: &str, req: &Request) -> Outcome {
    count(state, req);
    let comp = req.query("comp");
    let path = req.path();
    // The agent names itself and the protocol version on every wire call (get_header()).
    let needs_version = path.starts_with("/machine");
    if needs_version && req.header("x-ms-version") != Some(PROTOCOL_VERSION) {
        return error_xml(
            400,
            "InvalidHeaderValue",
            &format!(
                "x-ms-version must be {PROTOCOL_VERSION}, got {:?}",
                req.header("x-ms-version")
            ),
        );
    }
    match (req.method.as_str(), path, comp.as_deref()) {
        ("GET", "/", Some("versions")) => xml(200, versions_xml()),
        ("GET", "/machine/" | "/machine", Some("goalstate")) => {
            let inc = state.0.lock().unwrap().incarnation;
            xml(200, goal_state_xml(base, inc))
        }
        ("GET", p, Some("config")) if p.starts_with("/machine/") => {
            config_request(state, base, req)
        }
        ("POST", "/machine" | "/machine/", Some("telemetrydata" | "health" | "roleProperties")) => {
            plain(200, "")
        }
        // The agent's health observations (HealthService, on the wire server's port 80).
        ("POST", "/HealthService", _) => plain(200, ""),
        ("GET", p, _) if p.starts_with("/artifacts/") => artifact(state, base, p),
        ("PUT", p, _) if p.starts_with("/statusblob/") => {
            if req.header("x-ms-blob-type") != Some("BlockBlob") {
                return error_xml(400, "InvalidBlobType", "only BlockBlob status is served");
            }
            record_upload(state, &req.body, "direct");
            plain(201, "")
        }
        _ => {
            state
                .0
                .lock()
                .unwrap()
                .log
                .push(format!("404 {} {}", req.method, req.target));
            error_xml(
                404,
                "ResourceNotFound",
                "The specified resource does not exist.",
            )
        }
    }
}

fn config_request(state: &Arc<(Mutex<State>, Condvar)>, base: &str, req: &Request) -> Outcome {
    let s = state.0.lock().unwrap();
    let inc = s.incarnation;
    // A stale incarnation in the URL is what a real wire server answers 410 Gone for.
    if req.query("incarnation").and_then(|i| i.parse::<u64>().ok()) != Some(inc) {
        return error_xml(
            410,
            "ResourceGone",
            "The goal state incarnation is no longer current.",
        );
    }
    match req.query("type").as_deref() {
        Some("hostingEnvironmentConfig") => xml(200, hosting_env_xml(inc)),
        Some("sharedConfig") => xml(200, shared_config_xml(inc)),
        Some("certificates") => {
            // The agent sends its transport certificate so the host can encrypt the certificates to it.
            if req
                .header("x-ms-guest-agent-public-x509-cert")
                .is_none_or(str::is_empty)
                || req.header("x-ms-cipher-name").is_none()
            {
                return error_xml(
                    400,
                    "MissingRequiredHeader",
                    "x-ms-guest-agent-public-x509-cert and x-ms-cipher-name are required",
                );
            }
            xml(200, certificates_xml(inc))
        }
        Some("extensionsConfig") => xml(200, extensions_config_xml(base, inc, &s.plugins)),
        Some("fullConfig") => xml(200, full_config_xml(inc)),
        other => error_xml(
            400,
            "InvalidQueryParameterValue",
            &format!("type={other:?}"),
        ),
    }
}

fn artifact(state: &Arc<(Mutex<State>, Condvar)>, base: &str, path: &str) -> Outcome {
    let mut s = state.0.lock().unwrap();
    let rest = &path["/artifacts/".len()..];
    if let Some(name) = rest.strip_suffix("_manifest.xml") {
        let versions: Vec<String> = s
            .packages
            .iter()
            .filter(|(n, _, _)| n == name)
            .map(|(_, v, _)| v.clone())
            .collect();
        if versions.is_empty() {
            return error_xml(404, "BlobNotFound", "The specified blob does not exist.");
        }
        let body = manifest_xml(base, name, &versions);
        s.log
            .push(format!("served the manifest of {name}: {versions:?}"));
        return xml(200, body);
    }
    if let Some(file) = rest.strip_suffix(".zip")
        && let Some((name, version)) = file.rsplit_once("__")
        && let Some((_, _, zip)) = s
            .packages
            .iter()
            .find(|(n, v, _)| n == name && v == version)
    {
        let zip = zip.clone();
        s.log
            .push(format!("served {name} {version} ({} bytes)", zip.len()));
        return Outcome::Respond(Response {
            status: 200,
            headers: vec![("Content-Type".into(), "application/octet-stream".into())],
            body: zip,
            body_delay: None,
        });
    }
    error_xml(404, "BlobNotFound", "The specified blob does not exist.")
}

fn host_plugin_request(state: &Arc<(Mutex<State>, Condvar)>, base: &str, req: &Request) -> Outcome {
    count(state, req);
    match (req.method.as_str(), req.path()) {
        ("GET", "/versions") => Outcome::Respond(Response::json(
            200,
            &serde_json::json!([HOST_PLUGIN_API_VERSION, PROTOCOL_VERSION]),
        )),
        ("GET", "/health") => plain(200, ""),
        // FastTrack is not simulated: an older HostGAPlugin answers 404 and the agent uses ExtensionsConfig.
        ("GET", "/vmSettings") => plain(404, "vmSettings is not supported"),
        ("GET", "/extensionArtifact") => {
            if req.header("x-ms-containerid") != Some(CONTAINER_ID) {
                return plain(410, "container id mismatch");
            }
            match req.header("x-ms-artifact-location") {
                Some(loc) => match loc.strip_prefix(base) {
                    Some(p) => artifact(state, base, p),
                    None => plain(404, "unknown artifact location"),
                },
                None => plain(400, "x-ms-artifact-location missing"),
            }
        }
        ("PUT", "/status") => {
            if req.header("x-ms-containerid") != Some(CONTAINER_ID) {
                return plain(410, "container id mismatch");
            }
            let Ok(body) = serde_json::from_slice::<Value>(&req.body) else {
                return plain(400, "the status request is not JSON");
            };
            let is_block = body["headers"].as_array().is_some_and(|hs| {
                hs.iter()
                    .any(|h| h["headerName"] == "x-ms-blob-type" && h["headerValue"] == "BlockBlob")
            });
            if !is_block {
                return plain(400, "only BlockBlob status is served");
            }
            let Some(content) = body["content"].as_str() else {
                return plain(400, "no content");
            };
            match base64::engine::general_purpose::STANDARD.decode(content) {
                Ok(bytes) => {
                    record_upload(state, &bytes, "HostGAPlugin");
                    plain(200, "")
                }
                Err(e) => plain(400, &format!("content is not base64: {e}")),
            }
        }
        _ => plain(404, "not found"),
    }
}

fn record_upload(state: &Arc<(Mutex<State>, Condvar)>, bytes: &[u8], channel: &'static str) {
    let (lock, cv) = &**state;
    let mut s = lock.lock().unwrap();
    let inc = s.incarnation;
    match serde_json::from_slice::<Value>(bytes)
        .map_err(|e| e.to_string())
        .and_then(|v| VmStatus::parse(v, inc, channel))
    {
        Ok(st) => {
            s.uploads.push(st);
            if s.uploads.len() > MAX_UPLOADS_KEPT {
                let excess = s.uploads.len() - MAX_UPLOADS_KEPT;
                s.uploads.drain(..excess);
            }
        }
        Err(e) => s.upload_errors.push(e),
    }
    cv.notify_all();
}

fn versions_xml() -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<Versions>\n  <Preferred>\n    <Version>{PROTOCOL_VERSION}</Version>\n  </Preferred>\n  <Supported>\n    <Version>{PROTOCOL_VERSION}</Version>\n    <Version>2012-09-15</Version>\n    <Version>2011-12-31</Version>\n  </Supported>\n</Versions>\n"
    )
}

fn config_url(base: &str, kind: &str, inc: u64) -> String {
    xml_escape(&format!(
        "{base}/machine/{CONTAINER_ID}/{ROLE_INSTANCE}?comp=config&type={kind}&incarnation={inc}"
    ))
}

fn goal_state_xml(base: &str, inc: u64) -> String {
    let c = |k| config_url(base, k, inc);
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<GoalState xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" xsi:noNamespaceSchemaLocation="goalstate10.xsd">
  <Version>{PROTOCOL_VERSION}</Version>
  <Incarnation>{inc}</Incarnation>
  <Machine>
    <ExpectedState>Started</ExpectedState>
    <StopRolesDeadlineHint>300000</StopRolesDeadlineHint>
    <LBProbePorts><Port>16001</Port></LBProbePorts>
    <ExpectHealthReport>FALSE</ExpectHealthReport>
  </Machine>
  <Container>
    <ContainerId>{CONTAINER_ID}</ContainerId>
    <RoleInstanceList>
      <RoleInstance>
        <InstanceId>{ROLE_INSTANCE}</InstanceId>
        <State>Started</State>
        <Configuration>
          <HostingEnvironmentConfig>{hosting}</HostingEnvironmentConfig>
          <SharedConfig>{shared}</SharedConfig>
          <ExtensionsConfig>{ext}</ExtensionsConfig>
          <FullConfig>{full}</FullConfig>
          <Certificates>{certs}</Certificates>
          <ConfigName>{ROLE_CONFIG}</ConfigName>
        </Configuration>
      </RoleInstance>
    </RoleInstanceList>
  </Container>
</GoalState>
"#,
        hosting = c("hostingEnvironmentConfig"),
        shared = c("sharedConfig"),
        ext = c("extensionsConfig"),
        full = c("fullConfig"),
        certs = c("certificates"),
    )
}

fn hosting_env_xml(inc: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<HostingEnvironmentConfig version="1.0.0.0" goalStateIncarnation="{inc}">
  <StoredCertificates />
  <Deployment name="b61f93d0-e1ed-40b2-b067-22c243233448" guid="{{2e6b0c4f-8d8f-4a8c-9f3c-0b1a5c4f7d10}}" incarnation="0" isNonCancellableTopologyChangeEnabled="false">
    <Service name="kvvm-test" guid="{{00000000-0000-0000-0000-000000000000}}" />
    <ServiceInstance name="b61f93d0-e1ed-40b2-b067-22c243233448.0" guid="{{5b0f3c2a-3f8e-4c55-8e8a-1f2b3c4d5e6f}}" />
  </Deployment>
  <Incarnation number="1" instance="kvvm-vm" guid="{{9a3e6f1c-2b4d-4e8f-a1c3-5d7e9f0b2c4e}}" />
  <Role guid="{{7c1e3a5b-9d2f-4b6a-8c0e-2f4a6b8d0e1c}}" name="kvvm-vm" hostingEnvironmentVersion="1" software="" softwareType="ApplicationPackage" entryPoint="" parameters="" settleTimeSeconds="10" />
  <HostingEnvironmentSettings name="full" Runtime="rd_fabric_stable.110217-1402.RuntimePackage_1.0.0.8.zip">
    <CAS mode="full" />
    <PrivilegeLevel mode="max" />
    <AdditionalProperties><CgiHandlers></CgiHandlers></AdditionalProperties>
  </HostingEnvironmentSettings>
  <ResourceReferences>
    <Resource name="DiagnosticStore" type="directory" request="Microsoft.Cis.Fabric.Controller.Descriptions.ServiceDescription.Data.Policy" sticky="true" size="1" path="kvvm-vm.DiagnosticStore" disableQuota="false" />
  </ResourceReferences>
</HostingEnvironmentConfig>
"#
    )
}

fn shared_config_xml(inc: u64) -> String {
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<SharedConfig version="1.0.0.0" goalStateIncarnation="{inc}">
  <Deployment name="b61f93d0-e1ed-40b2-b067-22c243233448" guid="{{2e6b0c4f-8d8f-4a8c-9f3c-0b1a5c4f7d10}}" incarnation="0" isNonCancellableTopologyChangeEnabled="false">
    <Service name="kvvm-test" guid="{{00000000-0000-0000-0000-000000000000}}" />
    <ServiceInstance name="b61f93d0-e1ed-40b2-b067-22c243233448.0" guid="{{5b0f3c2a-3f8e-4c55-8e8a-1f2b3c4d5e6f}}" />
  </Deployment>
  <Incarnation number="1" instance="kvvm-vm" guid="{{9a3e6f1c-2b4d-4e8f-a1c3-5d7e9f0b2c4e}}" />
  <Role guid="{{7c1e3a5b-9d2f-4b6a-8c0e-2f4a6b8d0e1c}}" name="kvvm-vm" settleTimeSeconds="10" />
  <Instances>
    <Instance id="kvvm-vm" address="10.0.0.4">
      <FaultDomains randomId="0" updateId="0" updateCount="0" />
      <InputEndpoints />
    </Instance>
  </Instances>
</SharedConfig>
"#
    )
}

fn certificates_xml(inc: u64) -> String {
    // No <Data>: the VM has no certificates, so there is nothing encrypted to the transport certificate.
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<CertificateFile xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\" xsi:noNamespaceSchemaLocation=\"certificates10.xsd\">\n  <Version>{PROTOCOL_VERSION}</Version>\n  <Incarnation>{inc}</Incarnation>\n  <Format>Pkcs7BlobWithPfxContents</Format>\n</CertificateFile>\n"
    )
}

fn full_config_xml(inc: u64) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<RoleConfig goalStateIncarnation=\"{inc}\"><Instances><Instance id=\"kvvm-vm\" /></Instances></RoleConfig>\n"
    )
}

fn manifest_xml(base: &str, name: &str, versions: &[String]) -> String {
    let mut plugins = String::new();
    for v in versions {
        plugins.push_str(&format!(
            "    <Plugin>\n      <Version>{v}</Version>\n      <Uris>\n        <Uri>{}</Uri>\n      </Uris>\n    </Plugin>\n",
            xml_escape(&format!("{base}/artifacts/{name}__{v}.zip"))
        ));
    }
    format!(
        "<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<PluginVersionManifest xmlns:i=\"http://www.w3.org/2001/XMLSchema-instance\">\n  <Plugins>\n{plugins}  </Plugins>\n  <InternalPlugins />\n</PluginVersionManifest>\n"
    )
}

fn ticks_now() -> u128 {
    // .NET ticks (100 ns since 0001-01-01) as CRP stamps createdOnTicks.
    const EPOCH_TICKS: u128 = 621_355_968_000_000_000;
    let since = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    EPOCH_TICKS + since.as_nanos() / 100
}

fn extensions_config_xml(base: &str, inc: u64, plugins: &[Plugin]) -> String {
    let mut plugin_list = String::new();
    let mut settings = String::new();
    for p in plugins {
        let manifest = xml_escape(&format!("{base}/artifacts/{}_manifest.xml", p.name));
        plugin_list.push_str(&format!(
            "    <Plugin name=\"{name}\" version=\"{version}\" location=\"{manifest}\" state=\"{state}\" autoUpgrade=\"false\" failoverlocation=\"{manifest}\" runAsStartupTask=\"false\" isJson=\"true\" useExactVersion=\"true\" />\n",
            name = xml_escape(&p.name),
            version = xml_escape(&p.version),
            state = p.state.as_str(),
        ));
        let public = p
            .public_settings
            .clone()
            .unwrap_or_else(|| Value::Object(Default::default()));
        let runtime = serde_json::json!({
            "runtimeSettings": [{ "handlerSettings": { "publicSettings": public } }]
        });
        settings.push_str(&format!(
            "    <Plugin name=\"{name}\" version=\"{version}\">\n      <RuntimeSettings seqNo=\"{seq}\">{json}</RuntimeSettings>\n    </Plugin>\n",
            name = xml_escape(&p.name),
            version = xml_escape(&p.version),
            seq = p.seq_no,
            json = xml_escape(&runtime.to_string()),
        ));
    }
    let blob = xml_escape(&format!(
        "{base}/statusblob/{CONTAINER_ID}/status?sv=2018-03-28&sr=b&sk=system-1&sig=kvvm-test-signature&se=9999-01-01T00%3a00%3a00Z&sp=w"
    ));
    format!(
        r#"<?xml version="1.0" encoding="utf-8"?>
<Extensions version="1.0.0.0" goalStateIncarnation="{inc}">
  <StatusUploadBlob statusBlobType="BlockBlob">{blob}</StatusUploadBlob>
  <Plugins>
{plugin_list}  </Plugins>
  <PluginSettings>
{settings}  </PluginSettings>
  <InVMGoalStateMetaData inSvdSeqNo="{inc}" createdOnTicks="{ticks}" activityId="3b0a2c1d-4e5f-4a6b-8c7d-{inc:012x}" correlationId="9f8e7d6c-5b4a-4c3d-8e2f-{inc:012x}" />
</Extensions>
"#,
        ticks = ticks_now(),
    )
}
