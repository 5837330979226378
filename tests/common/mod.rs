//! The integration-test harness for portcullis.
//!
//! Every test drives the REAL binary, the way a user would: it writes a
//! `gateway.yaml` into a temporary directory, starts `portcullis run --config
//! <that file>`, waits for the "ready" log line, and talks HTTP to the edge
//! address printed there. Behind the gateway sits a small recording upstream
//! that echoes back what it received, so a test can see exactly what the
//! gateway forwarded.
//!
//! The pieces, in the order a test uses them:
//!
//! * [`Upstream`]: the echoing upstream app (plus [`refusing_addr`], an address
//!   where nothing listens).
//! * [`Config`]: the standard `gateway.yaml`, with `set`/`unset` to tweak it.
//! * [`Gateway`]: the running `portcullis` process (killed on drop; its logs
//!   are printed when a test panics).
//! * [`Signer`], [`access`], [`refresh`], [`token`]: tokens of every algorithm,
//!   plus raw helpers ([`b64url`], [`raw_token`]) for hand-built hostile ones.
//! * [`get`], [`request`], [`send`] (any body, e.g. a streaming [`Pattern`]),
//!   [`download`], [`get_h2`] and [`raw`] (bytes over TCP): HTTP clients, one
//!   fresh connection per request;
//! * [`assert_refused`], [`assert_forwarded`] and [`echoed`] to check answers.
//! * [`RedisServer`]: a `redis-server` (or Sentinel) of the test's own, for the
//!   Redis store's tests (see [`redis_server`]).
//!
//! When a test panics, [`Gateway`]'s drop prints the gateway.yaml it used and
//! everything the process logged.
//!
//! A typical test:
//!
//! ```ignore
//! let up = Upstream::start().await;
//! let gw = Gateway::start(Config::new(up.addr)).await;
//! let reply = get(gw.edge, "/x", &[("Authorization", &bearer(&token(&access("alice"))))]).await;
//! assert_eq!(reply.0, 200);
//! ```
#![allow(dead_code)]

pub mod inproc;
pub mod redis_server;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::{json, Value};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The HMAC secret of the standard config.
pub const SECRET: &str = "test-secret-please-change-0123456789";

/// How long the gateway may take to log its ready line.
const READY_TIMEOUT: Duration = Duration::from_secs(15);
/// Upper bound for any one HTTP exchange in a test (generous: 2-core CI).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

// ---------------------------------------------------------------------------
// The recording upstream
// ---------------------------------------------------------------------------

/// A real HTTP server on `127.0.0.1:<random port>` standing in for the app
/// behind the gateway. It answers every request `200` with a JSON echo:
///
/// ```json
/// {"method": "GET", "path": "/x", "query": "a=1" | null,
///  "headers": {"lowercase-name": "value", ...}}
/// ```
///
/// (repeated headers are joined with `", "`). Special paths:
/// * `/slow`: waits 5 s before answering (for the upstream timeout);
/// * `/download/<n>`: streams `n` bytes in 64 KiB chunks;
/// * `/upload`: reads the request body as a stream, answers `{"bytes": n}`.
///
/// Every request's `METHOD path` is also recorded in [`Upstream::seen`].
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    pub async fn start() -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let seen = seen2.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| upstream_answer(req, seen.clone()));
                    // http1 and h2c both, whatever the gateway speaks upstream.
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen, task }
    }

    /// `http://127.0.0.1:<port>`, for `upstreams.<name>.url`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The requests this upstream received so far, as `METHOD path`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

async fn upstream_answer(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<Response<UpBody>, Infallible> {
    let path = req.uri().path().to_string();
    seen.lock()
        .unwrap()
        .push(format!("{} {}", req.method(), path));

    if path == "/slow" {
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
    if let Some(n) = path.strip_prefix("/download/") {
        let n: u64 = n.parse().expect("/download/<n>");
        return Ok(Response::new(BoxBody::new(Pattern::new(n))));
    }
    if path == "/upload" {
        let mut body = req.into_body();
        let mut bytes = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => bytes += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return Ok(json_response(json!({ "upload_error": e.to_string() }))),
            }
        }
        return Ok(json_response(json!({ "bytes": bytes })));
    }

    let mut headers = serde_json::Map::new();
    for name in req.headers().keys() {
        let values: Vec<String> = req
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        headers.insert(name.as_str().to_string(), Value::String(values.join(", ")));
    }
    Ok(json_response(json!({
        "method": req.method().as_str(),
        "path": path,
        "query": req.uri().query(),
        "headers": headers,
    })))
}

fn json_response(v: Value) -> Response<UpBody> {
    Response::builder()
        .header("content-type", "application/json")
        .body(BoxBody::new(Full::new(Bytes::from(v.to_string()))))
        .unwrap()
}

/// A body of `n` bytes produced lazily in 64 KiB chunks: used for the
/// upstream's downloads and for the client's streaming uploads. Its size is
/// deliberately not announced, so it goes out chunked.
pub struct Pattern {
    remaining: u64,
    chunk: Bytes,
}

impl Pattern {
    pub fn new(n: u64) -> Pattern {
        Pattern {
            remaining: n,
            chunk: Bytes::from(vec![b'p'; 64 * 1024]),
        }
    }
}

impl Body for Pattern {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }
}

/// An address where nothing listens: connecting to it is refused.
pub fn refusing_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
    // dropped here: the port is closed again
}

/// Parses the upstream's JSON echo out of a reply body.
pub fn echoed(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not an upstream echo ({e}): {body}"))
}

// ---------------------------------------------------------------------------
// gateway.yaml
// ---------------------------------------------------------------------------

/// A `gateway.yaml` under construction, plus the temporary directory it (and
/// any key files) will live in. Start from [`Config::new`], the standard
/// config below, and tweak it with [`Config::set`] / [`Config::unset`]:
///
/// ```yaml
/// server: { listen: 127.0.0.1:0 }
/// jwt: { algorithms: [HS256], secret: "test-secret-please-change-0123456789" }
/// blocklist: { store: memory }
/// upstreams: { app: { url: "http://<upstream>", connect_timeout: 1s, timeout: 2s } }
/// routes:
///   - { prefix: /public, upstream: app, auth: none }
///   - { prefix: /refresh, upstream: app, auth: refresh }
///   - { prefix: /admin, upstream: app, auth: access, fresh: true, require_claims: { scopes: admin } }
///   - { prefix: /, upstream: app, auth: access }
/// forward: { token: true, identity_headers: { sub: X-Auth-Subject, jti: X-Auth-Token-Id }, strip_headers: ["X-Auth-*"] }
/// ```
pub struct Config {
    pub doc: Value,
    pub dir: TempDir,
}

impl Config {
    pub fn new(upstream: SocketAddr) -> Config {
        let doc = json!({
            "server": { "listen": "127.0.0.1:0" },
            "jwt": { "algorithms": ["HS256"], "secret": SECRET },
            "blocklist": { "store": "memory" },
            "upstreams": {
                "app": { "url": format!("http://{upstream}"), "connect_timeout": "1s", "timeout": "2s" }
            },
            "routes": [
                { "prefix": "/public", "upstream": "app", "auth": "none" },
                { "prefix": "/refresh", "upstream": "app", "auth": "refresh" },
                { "prefix": "/admin", "upstream": "app", "auth": "access", "fresh": true,
                  "require_claims": { "scopes": "admin" } },
                { "prefix": "/", "upstream": "app", "auth": "access" },
            ],
            "forward": {
                "token": true,
                "identity_headers": { "sub": "X-Auth-Subject", "jti": "X-Auth-Token-Id" },
                "strip_headers": ["X-Auth-*"],
            },
        });
        Config {
            doc,
            dir: tempfile::tempdir().expect("tempdir"),
        }
    }

    /// Sets the value at a dotted path (`"jwt.csrf.enabled"`, `"routes.0.auth"`),
    /// creating missing mappings on the way.
    pub fn set(&mut self, path: &str, value: Value) -> &mut Config {
        let parts: Vec<&str> = path.split('.').collect();
        let mut node = &mut self.doc;
        for part in &parts {
            node = child_mut(node, part);
        }
        *node = value;
        self
    }

    /// Removes the key at a dotted path, if present.
    pub fn unset(&mut self, path: &str) -> &mut Config {
        let (parent, key) = path.rsplit_once('.').unwrap_or(("", path));
        let mut node = &mut self.doc;
        for part in parent.split('.').filter(|p| !p.is_empty()) {
            node = child_mut(node, part);
        }
        if let Some(map) = node.as_object_mut() {
            map.remove(key);
        }
        self
    }

    /// Replaces the whole route list.
    pub fn routes(&mut self, routes: Value) -> &mut Config {
        self.set("routes", routes)
    }

    /// Inserts a route before all the others (first match wins).
    pub fn route_first(&mut self, route: Value) -> &mut Config {
        self.doc["routes"].as_array_mut().unwrap().insert(0, route);
        self
    }

    /// Configures `jwt` to accept exactly the signer's algorithm with its key:
    /// the HMAC secret, or the PEM files `jwt.pub`/`jwt.key` written into the
    /// config directory.
    pub fn trust(&mut self, signer: &Signer) -> &mut Config {
        self.set("jwt.algorithms", json!([signer.alg_name()]));
        if let (Some(public), Some(private)) = (&signer.public_pem, &signer.private_pem) {
            let public = self.write_file("jwt.pub", public);
            let private = self.write_file("jwt.key", private);
            self.unset("jwt.secret");
            self.set("jwt.public_key_file", json!(public.display().to_string()));
            self.set("jwt.private_key_file", json!(private.display().to_string()));
        }
        self
    }

    /// Writes a file into the config directory and returns its path.
    pub fn write_file(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).expect("write file");
        path
    }

    /// The config as block-style YAML (strings are always double-quoted).
    pub fn to_yaml(&self) -> String {
        let mut out = String::new();
        yaml_node(&self.doc, 0, &mut out);
        out
    }

    /// Writes `gateway.yaml` into the config directory and returns its path.
    pub fn save(&self) -> PathBuf {
        self.write_file("gateway.yaml", &self.to_yaml())
    }
}

/// The child `part` of a mapping (created if missing) or list (by index).
fn child_mut<'a>(node: &'a mut Value, part: &str) -> &'a mut Value {
    if node.is_array() {
        let i: usize = part.parse().expect("a list index");
        return &mut node.as_array_mut().unwrap()[i];
    }
    if !node.is_object() {
        *node = json!({});
    }
    node.as_object_mut()
        .unwrap()
        .entry(part)
        .or_insert(Value::Null)
}

/// A minimal YAML emitter for the config: enough for mappings, lists and
/// scalars, and readable when the file is printed after a failure.
fn yaml_node(v: &Value, indent: usize, out: &mut String) {
    let pad = " ".repeat(indent);
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by_key(|(k, _)| key_rank(k));
            for (k, v) in entries {
                match v {
                    Value::Object(m) if !m.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml_node(v, indent + 2, out);
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}{k}:\n"));
                        yaml_node(v, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}{k}: {}\n", yaml_scalar(v))),
                }
            }
        }
        Value::Array(items) => {
            for item in items {
                match item {
                    Value::Object(m) if !m.is_empty() => {
                        // Emit the mapping two columns deeper, then turn the
                        // first line's indentation into the "- " marker.
                        let mut inner = String::new();
                        yaml_node(item, indent + 2, &mut inner);
                        out.push_str(&format!("{pad}- {}", &inner[indent + 2..]));
                    }
                    Value::Array(a) if !a.is_empty() => {
                        out.push_str(&format!("{pad}-\n"));
                        yaml_node(item, indent + 2, out);
                    }
                    _ => out.push_str(&format!("{pad}- {}\n", yaml_scalar(item))),
                }
            }
        }
        _ => out.push_str(&format!("{pad}{}\n", yaml_scalar(v))),
    }
}

/// Keys in the order the CONTRACT lists them (then alphabetical), so the
/// written file reads like the documented one.
fn key_rank(key: &str) -> (usize, String) {
    const ORDER: &[&str] = &[
        "server",
        "admin",
        "jwt",
        "blocklist",
        "logout",
        "upstreams",
        "routes",
        "forward",
        "listen",
        "algorithms",
        "secret",
        "prefix",
        "upstream",
        "auth",
        "url",
    ];
    let rank = ORDER.iter().position(|k| *k == key).unwrap_or(ORDER.len());
    (rank, key.to_string())
}

fn yaml_scalar(v: &Value) -> String {
    match v {
        Value::Object(_) => "{}".into(),
        Value::Array(_) => "[]".into(),
        // JSON string escapes are valid in YAML double-quoted scalars.
        other => other.to_string(),
    }
}

// ---------------------------------------------------------------------------
// The gateway process
// ---------------------------------------------------------------------------

/// Lines the gateway printed (stderr, and stdout prefixed `stdout: `).
pub type Logs = Arc<Mutex<Vec<String>>>;

/// A running `portcullis run --config <dir>/gateway.yaml`. Killed on drop;
/// when the test is panicking, its config and logs are printed first.
pub struct Gateway {
    /// The edge listener, from the ready line's `edge=<ip:port>`.
    pub edge: SocketAddr,
    /// The admin listener, from `admin=<ip:port>`, when one is configured.
    pub admin: Option<SocketAddr>,
    pub logs: Logs,
    pub config: Config,
    child: Child,
}

impl Gateway {
    /// Starts the gateway with this config and waits (at most 15 s) until it
    /// logs that it is ready.
    pub async fn start(config: Config) -> Gateway {
        Gateway::launch(config, &[], &[], None).await
    }

    /// [`Gateway::start`] with extra environment variables (e.g. the test-only
    /// `PORTCULLIS_TEST_FAULT_DIR`).
    pub async fn start_with_env(config: Config, env: &[(&str, &str)]) -> Gateway {
        Gateway::launch(config, &[], env, None).await
    }

    /// [`Gateway::start`] with global arguments before the subcommand
    /// (`--log-format json`).
    pub async fn start_with_args(config: Config, global: &[&str]) -> Gateway {
        Gateway::launch(config, global, &[], None).await
    }

    /// Starts the gateway and has signal `name` sent to it the moment its ready
    /// line is read (by a shell waiting on a pipe, so no process start-up delay).
    pub async fn start_and_signal_on_ready(config: Config, name: &str) -> Gateway {
        Gateway::launch(config, &[], &[], Some(name)).await
    }

    /// The one way the tests start the binary: `portcullis [global] run --config
    /// <dir>/gateway.yaml` with `env` added, optionally signalled on its ready line.
    pub async fn launch(
        config: Config,
        global: &[&str],
        env: &[(&str, &str)],
        signal_on_ready: Option<&str>,
    ) -> Gateway {
        // `read pid; kill -s SIG "$pid"`: the shell and its builtin kill are already
        // running when the ready line arrives.
        let mut killer = signal_on_ready.map(|name| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("read pid && kill -s {name} \"$pid\""))
                .stdin(Stdio::piped())
                .spawn()
                .expect("spawn sh")
        });
        let path = config.save();
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(global)
            .arg("run")
            .arg("--config")
            .arg(&path)
            .current_dir(config.dir.path())
            .env_remove("PORTCULLIS_CONFIG")
            .env_remove("RUST_LOG")
            .envs(env.iter().copied())
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn portcullis");

        let logs: Logs = Arc::new(Mutex::new(Vec::new()));
        // stderr carries the log, including the ready line: a thread keeps
        // draining it for the whole life of the process (a full pipe would
        // block the gateway) and reports the ready line once.
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<String>();
        let on_ready = killer
            .as_mut()
            .map(|k| (k.stdin.take().unwrap(), format!("{}\n", child.id())));
        spawn_drain(
            child.stderr.take().unwrap(),
            logs.clone(),
            "",
            Some(ready_tx),
            on_ready,
        );
        spawn_drain(
            child.stdout.take().unwrap(),
            logs.clone(),
            "stdout: ",
            None,
            None,
        );

        let mut gw = Gateway {
            edge: "0.0.0.0:0".parse().unwrap(),
            admin: None,
            logs,
            config,
            child,
        };
        let line = match tokio::time::timeout(READY_TIMEOUT, ready_rx).await {
            Ok(Ok(line)) => line,
            Ok(Err(_)) => {
                let status = gw.child.wait().ok();
                panic!("portcullis exited before it was ready ({status:?})");
            }
            Err(_) => panic!("portcullis did not log its ready line within {READY_TIMEOUT:?}"),
        };
        gw.edge = listener_addr(&line, "edge")
            .unwrap_or_else(|| panic!("no edge=<addr> in the ready line: {line}"));
        gw.admin = listener_addr(&line, "admin");
        if let Some(mut killer) = killer {
            let status = killer.wait().expect("wait for sh");
            assert!(status.success(), "sh: kill failed: {status}");
        }
        gw
    }

    /// Waits (bounded) for the process to exit on its own.
    pub async fn wait(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "portcullis did not exit within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().expect("try_wait")
    }

    /// Every line logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Rewrites gateway.yaml from `self.config` and sends SIGHUP.
    pub fn save_and_reload(&self) {
        self.config.save();
        self.signal("HUP");
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal (`"HUP"`, `"TERM"`) with `kill(1)`.
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{name} failed: {status}");
    }

    /// Waits (at most `within`) until the log holds `needle`; returns that line.
    pub async fn wait_log(&self, needle: &str, within: Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            if let Some(line) = self
                .logs
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return line.clone();
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no log line with {needle:?} within {within:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the gateway logged so far, one line each.
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Fails the test unless the gateway still answers a valid request with
    /// 200 (used after every hostile request).
    pub async fn assert_still_serving(&self, signer: &Signer) {
        let t = signer.token(&access("alice"));
        let (status, _, body) = get(
            self.edge,
            "/still-serving",
            &[("Authorization", &bearer(&t))],
        )
        .await;
        assert_eq!(
            status, 200,
            "the gateway stopped serving valid requests: {body}"
        );
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("----- gateway.yaml -----\n{}", self.config.to_yaml());
            eprintln!("----- portcullis log -----\n{}\n-----", self.log_text());
        }
    }
}

fn spawn_drain(
    stream: impl Read + Send + 'static,
    logs: Logs,
    prefix: &'static str,
    mut ready: Option<tokio::sync::oneshot::Sender<String>>,
    mut on_ready: Option<(std::process::ChildStdin, String)>,
) {
    use std::io::Write;
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            if line.contains("ready") && listener_addr(&line, "edge").is_some() {
                if let Some((mut stdin, text)) = on_ready.take() {
                    let _ = stdin.write_all(text.as_bytes());
                }
                if let Some(tx) = ready.take() {
                    let _ = tx.send(line.clone());
                }
            }
            logs.lock().unwrap().push(format!("{prefix}{line}"));
        }
        // EOF: the process is gone. Dropping `ready` (if still unsent) tells
        // `Gateway::start` that it will never come.
    });
}

/// Finds `<key>=<ip:port>` in a log line (tolerating `key="..."`).
pub fn listener_addr(line: &str, key: &str) -> Option<SocketAddr> {
    // `edge=ADDR` in text logs, `"edge":"ADDR"` in JSON ones.
    let json = format!("\"{key}\":\"");
    if let Some(i) = line.find(&json) {
        let rest = &line[i + json.len()..];
        return rest[..rest.find('"').unwrap_or(rest.len())].parse().ok();
    }
    let needle = format!("{key}=");
    let start = line
        .match_indices(&needle)
        // a whole word: not the tail of `knowledge=`
        .find(|(i, _)| *i == 0 || !line.as_bytes()[i - 1].is_ascii_alphanumeric())?
        .0
        + needle.len();
    let rest = line[start..].trim_start_matches('"');
    let end = rest
        .find(|c: char| c.is_whitespace() || c == '"' || c == ',' || c == '}')
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// Removes terminal colour codes (`ESC [ ... letter`) from a log line.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Runs `portcullis <args>` to completion (for `check` and other one-shot
/// subcommands): `(exit code, stdout, stderr)`.
pub fn portcullis(args: &[&str], dir: &Path) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(args)
        .current_dir(dir)
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis");
    (
        out.status.code().unwrap_or(-1),
        strip_ansi(&String::from_utf8_lossy(&out.stdout)),
        strip_ansi(&String::from_utf8_lossy(&out.stderr)),
    )
}

// ---------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------

/// Seconds since the epoch.
pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// A jti no other token in this test run has.
pub fn unique_jti() -> String {
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "jti-{}-{}-{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The claims of a valid token: `sub`, a unique `jti`, `type`, `iat` = now,
/// `exp` = now + 10 min.
pub fn claims(sub: &str, kind: &str) -> Value {
    let now = now();
    json!({ "sub": sub, "jti": unique_jti(), "type": kind, "iat": now, "exp": now + 600 })
}

pub fn access(sub: &str) -> Value {
    claims(sub, "access")
}

pub fn refresh(sub: &str) -> Value {
    claims(sub, "refresh")
}

/// `access("alice").with(json!({"fresh": true}))`, `.without("exp")`.
pub trait ClaimsExt {
    fn with(self, extra: Value) -> Value;
    fn without(self, key: &str) -> Value;
}

impl ClaimsExt for Value {
    fn with(mut self, extra: Value) -> Value {
        for (k, v) in extra.as_object().expect("with(json!({...}))") {
            self[k.as_str()] = v.clone();
        }
        self
    }

    fn without(mut self, key: &str) -> Value {
        self.as_object_mut().unwrap().remove(key);
        self
    }
}

/// An HS256 token for these claims, signed with the standard [`SECRET`].
pub fn token(claims: &Value) -> String {
    Signer::hmac(Algorithm::HS256).token(claims)
}

/// `Bearer <token>`, for the Authorization header.
pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// base64url without padding, as in JWTs.
pub fn b64url(bytes: impl AsRef<[u8]>) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A hand-built token: `b64url(header).b64url(payload).signature`, the
/// header and payload given as raw text (need not be JSON) and the signature
/// part as is.
pub fn raw_token(header: &str, payload: &str, signature: &str) -> String {
    format!("{}.{}.{}", b64url(header), b64url(payload), signature)
}

/// PEM key pairs generated once per test binary (RSA generation is slow-ish).
pub struct TestKeys {
    pub rsa: KeyPem,
    /// A second RSA key the gateway never trusts (the attacker's).
    pub rsa_other: KeyPem,
    pub p256: KeyPem,
    pub p384: KeyPem,
    pub ed25519: KeyPem,
}

/// A private key (PKCS#8 PEM) and its public key (SPKI PEM).
#[derive(Clone)]
pub struct KeyPem {
    pub private: String,
    pub public: String,
}

pub fn keys() -> &'static TestKeys {
    static KEYS: OnceLock<TestKeys> = OnceLock::new();
    KEYS.get_or_init(|| TestKeys {
        rsa: rsa_key(),
        rsa_other: rsa_key(),
        p256: rcgen_key(&rcgen::PKCS_ECDSA_P256_SHA256),
        p384: rcgen_key(&rcgen::PKCS_ECDSA_P384_SHA384),
        ed25519: rcgen_key(&rcgen::PKCS_ED25519),
    })
}

fn rsa_key() -> KeyPem {
    use aws_lc_rs::encoding::AsDer;
    use aws_lc_rs::signature::KeyPair as _;
    let key = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let private = key.as_der().unwrap();
    let public = key.public_key().as_der().unwrap();
    KeyPem {
        private: pem("PRIVATE KEY", private.as_ref()),
        public: pem("PUBLIC KEY", public.as_ref()),
    }
}

fn rcgen_key(alg: &'static rcgen::SignatureAlgorithm) -> KeyPem {
    let key = rcgen::KeyPair::generate_for(alg).unwrap();
    KeyPem {
        private: key.serialize_pem(),
        public: key.public_key_pem(),
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Signs tokens with one algorithm and key. Header and payload are built as
/// JSON by the test, so any header field (`kid`, `jwk`, `jku`, ...) can be
/// set; jsonwebtoken only computes the signature.
#[derive(Clone)]
pub struct Signer {
    pub alg: Algorithm,
    key: EncodingKey,
    /// PEMs of an asymmetric key (`None` for HMAC).
    pub private_pem: Option<String>,
    pub public_pem: Option<String>,
}

impl Signer {
    /// HS256/384/512 with the standard [`SECRET`].
    pub fn hmac(alg: Algorithm) -> Signer {
        Signer::hmac_with(alg, SECRET.as_bytes())
    }

    /// HS256/384/512 with any secret bytes.
    pub fn hmac_with(alg: Algorithm, secret: &[u8]) -> Signer {
        Signer {
            alg,
            key: EncodingKey::from_secret(secret),
            private_pem: None,
            public_pem: None,
        }
    }

    /// The test key for any algorithm: [`SECRET`] for HS*, the shared RSA key
    /// for RS*/PS*, P-256 for ES256, P-384 for ES384, Ed25519 for EdDSA.
    pub fn for_alg(alg: Algorithm) -> Signer {
        use Algorithm::*;
        let k = keys();
        match alg {
            HS256 | HS384 | HS512 => Signer::hmac(alg),
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => Signer::with_pem(alg, &k.rsa),
            ES256 => Signer::with_pem(alg, &k.p256),
            ES384 => Signer::with_pem(alg, &k.p384),
            EdDSA => Signer::with_pem(alg, &k.ed25519),
            other => panic!("no test key for {other:?}"),
        }
    }

    /// An asymmetric signer for the given key pair.
    pub fn with_pem(alg: Algorithm, key: &KeyPem) -> Signer {
        use Algorithm::*;
        let private = key.private.as_bytes();
        let encoding = match alg {
            RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(private),
            ES256 | ES384 => EncodingKey::from_ec_pem(private),
            EdDSA => EncodingKey::from_ed_pem(private),
            other => panic!("{other:?} takes no PEM key"),
        }
        .expect("load private PEM");
        Signer {
            alg,
            key: encoding,
            private_pem: Some(key.private.clone()),
            public_pem: Some(key.public.clone()),
        }
    }

    /// `"HS256"`, `"EdDSA"`, ...: the JWT `alg` name.
    pub fn alg_name(&self) -> String {
        serde_json::to_value(self.alg)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    /// A token with header `{"alg": .., "typ": "JWT"}`.
    pub fn token(&self, claims: &Value) -> String {
        self.token_with_header(json!({}), claims)
    }

    /// A token whose header is `{"alg": .., "typ": "JWT"}` plus `extra`
    /// (extra fields win, so `{"alg": "none"}` would override the alg).
    pub fn token_with_header(&self, extra: Value, claims: &Value) -> String {
        let header = json!({ "alg": self.alg_name(), "typ": "JWT" }).with(extra);
        self.sign_parts(&b64url(header.to_string()), &b64url(claims.to_string()))
    }

    /// Signs already-encoded parts: returns `header.payload.signature`.
    pub fn sign_parts(&self, header_b64: &str, payload_b64: &str) -> String {
        let message = format!("{header_b64}.{payload_b64}");
        let signature =
            jsonwebtoken::crypto::sign(message.as_bytes(), &self.key, self.alg).expect("sign");
        format!("{message}.{signature}")
    }

    /// The public key as a JWK (for hostile `jwk` headers).
    pub fn public_jwk(&self) -> Value {
        let jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&self.key, self.alg).expect("jwk");
        serde_json::to_value(jwk).unwrap()
    }
}

// ---------------------------------------------------------------------------
// HTTP clients
// ---------------------------------------------------------------------------

/// What a request got back: `(status, headers, body as text)`.
pub type Reply = (u16, HeaderMap, String);

/// `GET path` on a fresh HTTP/1.1 connection. `Host` is the address unless
/// the headers name one.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    request(addr, "GET", path, headers, Bytes::new()).await
}

/// Any method with an in-memory body.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Reply {
    let req = build_request(addr, method, path, headers, Full::new(body.into()));
    send(addr, req).await
}

/// Builds a request for [`send`] (origin-form URI, `Host` filled in).
pub fn build_request<B>(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: B,
) -> Request<B> {
    let mut req = Request::builder()
        .method(Method::from_bytes(method.as_bytes()).unwrap())
        .uri(path)
        .body(body)
        .unwrap_or_else(|e| panic!("cannot build request for {path:?}: {e}"));
    append_headers(req.headers_mut(), headers);
    if !req.headers().contains_key("host") {
        req.headers_mut()
            .insert("host", HeaderValue::from_str(&addr.to_string()).unwrap());
    }
    req
}

/// Sends a request with any body (e.g. a streaming [`Pattern`]) over a fresh
/// HTTP/1.1 connection and reads the whole answer.
pub async fn send<B>(addr: SocketAddr, req: Request<B>) -> Reply
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {}", req.method(), req.uri());
    let exchange = async { read_reply(http1_exchange(addr, req).await).await };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("{what}: no complete answer within {REQUEST_TIMEOUT:?}"))
}

/// `GET path` and count the body bytes as they stream in (nothing is kept):
/// `(status, bytes)`.
pub async fn download(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> (u16, u64) {
    let req = build_request(addr, "GET", path, headers, Full::new(Bytes::new()));
    let exchange = async {
        let resp = http1_exchange(addr, req).await;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut n = 0u64;
        while let Some(frame) = body.frame().await {
            let frame =
                frame.unwrap_or_else(|e| panic!("GET {path}: body broke after {n} bytes: {e}"));
            n += frame.data_ref().map_or(0, |d| d.len() as u64);
        }
        (status, n)
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path}: not complete within {REQUEST_TIMEOUT:?}"))
}

/// `GET http://addr/path` over HTTP/2 with prior knowledge (h2c).
pub async fn get_h2(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let exchange = async {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                .await
                .expect("h2 handshake");
        tokio::spawn(conn);
        // HTTP/2 carries scheme and authority as pseudo-headers: absolute URI.
        let mut req = Request::builder()
            .uri(format!("http://{addr}{path}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        append_headers(req.headers_mut(), headers);
        let resp = sender.send_request(req).await.expect("h2 request");
        read_reply(resp).await
    };
    tokio::time::timeout(REQUEST_TIMEOUT, exchange)
        .await
        .unwrap_or_else(|_| panic!("h2 GET {path}: no complete answer within {REQUEST_TIMEOUT:?}"))
}

/// Opens a fresh HTTP/1.1 connection (no pooling: every request stands alone)
/// and sends one request; returns the response with its body still unread.
async fn http1_exchange<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let what = format!("{} {}", req.method(), req.uri());
    let stream = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("http1 handshake");
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

async fn read_reply(resp: Response<Incoming>) -> Reply {
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .expect("read the response body")
        .to_bytes();
    (
        parts.status.as_u16(),
        parts.headers,
        String::from_utf8_lossy(&body).into_owned(),
    )
}

fn append_headers(map: &mut HeaderMap, headers: &[(&str, &str)]) {
    for (name, value) in headers {
        map.append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
}

/// Writes raw bytes to the address and returns everything read back until the
/// server closes (or 15 s pass). For requests hyper's client will not send.
/// Send `Connection: close` so the server ends the exchange. Write and read
/// errors (a server may reset the connection after answering) end the
/// exchange quietly: the caller checks what arrived.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr)
        .await
        .expect("connect to the gateway");
    let _ = stream.write_all(bytes).await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(15), async {
        let mut chunk = [0u8; 16384];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Splits a raw HTTP/1.1 response into `(status, head, body)`, undoing
/// chunked transfer-encoding. Panics on anything that is not a response.
pub fn parse_raw(response: &str) -> (u16, String, String) {
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line: {response:?}"));
    let chunked = head
        .lines()
        .any(|l| l.to_ascii_lowercase().starts_with("transfer-encoding:") && l.contains("chunked"));
    let body = if chunked {
        let mut out = String::new();
        let mut rest = body;
        while let Some((size, after)) = rest.split_once("\r\n") {
            let size =
                usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap_or(0);
            if size == 0 || after.len() < size {
                break;
            }
            out.push_str(&after[..size]);
            rest = after[size..].trim_start_matches("\r\n");
        }
        out
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

// ---------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------

/// `GET path` with `Authorization: Bearer <token>`.
pub async fn get_with_token(gw: &Gateway, path: &str, token: &str) -> Reply {
    get(gw.edge, path, &[("Authorization", &bearer(token))]).await
}

/// Asserts the gateway's own logout answer: `200 {"message": "Logged out"}`, JSON.
#[track_caller]
pub fn assert_logged_out(reply: &Reply) {
    let (status, headers, body) = reply;
    let got: Value = serde_json::from_str(body).unwrap_or_else(|_| {
        panic!("expected 200 Logged out, got {status} with a non-JSON body: {body:?}")
    });
    assert_eq!(
        (*status, &got),
        (200, &json!({ "message": "Logged out" })),
        "expected the logout to succeed"
    );
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        content_type.starts_with("application/json"),
        "content-type of the logout answer: {content_type:?}"
    );
}

/// Asserts 401 `RevokedTokenError`.
#[track_caller]
pub fn assert_revoked(reply: &Reply) {
    assert_refused(reply, 401, "RevokedTokenError", "Invalid token");
}

/// Asserts 503 `RevocationStoreError`.
#[track_caller]
pub fn assert_store_unavailable(reply: &Reply) {
    assert_refused(
        reply,
        503,
        "RevocationStoreError",
        "Revocation store unavailable",
    );
}

/// Asserts a refusal from the CONTRACT §3 table: the status, the exact JSON
/// body `{"message": .., "error_type": ..}`, and for 401s the
/// `WWW-Authenticate` header (`Bearer` alone for a missing token, else
/// `Bearer error="invalid_token"`).
#[track_caller]
pub fn assert_refused(reply: &Reply, status: u16, error_type: &str, message: &str) {
    let (got_status, headers, body) = reply;
    let got: Value = serde_json::from_str(body).unwrap_or_else(|_| {
        panic!("expected {status} {error_type}, got {got_status} with a non-JSON body: {body:?}")
    });
    assert_eq!(
        (*got_status, &got),
        (
            status,
            &json!({ "message": message, "error_type": error_type })
        ),
        "expected {status} {error_type}"
    );
    if status == 401 {
        let expected = if error_type == "MissingTokenError" {
            "Bearer"
        } else {
            r#"Bearer error="invalid_token""#
        };
        let got = headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("<non-ascii>"));
        assert_eq!(
            got,
            Some(expected),
            "WWW-Authenticate of a 401 {error_type}"
        );
    }
}

/// Asserts a 200 and returns the upstream's echo from the body.
#[track_caller]
pub fn assert_forwarded(reply: &Reply) -> Value {
    let (status, _, body) = reply;
    assert_eq!(
        *status, 200,
        "expected the request to be forwarded; body: {body}"
    );
    echoed(body)
}

// ---------------------------------------------------------------------------
// Shared by the revocation, durability and redis tests
// ---------------------------------------------------------------------------

/// The `gateway.yaml` the gateway runs on.
pub fn config_path(gw: &Gateway) -> PathBuf {
    gw.config.dir.path().join("gateway.yaml")
}

/// SIGKILLs the gateway (dropping a [`Gateway`] kills it and reaps it) and starts a
/// new one on the same config directory, hence the same sqlite file.
pub async fn kill_and_restart(mut gw: Gateway) -> Gateway {
    let placeholder = Config {
        doc: json!({}),
        dir: tempfile::tempdir().expect("tempdir"),
    };
    let config = std::mem::replace(&mut gw.config, placeholder);
    drop(gw);
    Gateway::start(config).await
}

/// Asserts that `token` is forwarded on `path` (and that the upstream saw its subject).
pub async fn assert_accepted(gw: &Gateway, path: &str, token: &str, sub: &str) {
    let echo = assert_forwarded(&get_with_token(gw, path, token).await);
    assert_eq!(echo["headers"]["x-auth-subject"], sub, "echo: {echo}");
}

/// Runs `portcullis <args>` in the config directory without blocking the runtime
/// (the recording upstream lives on it): `(exit code, stdout, stderr)`.
pub async fn cli(gw: &Gateway, args: &[&str]) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let dir = gw.config.dir.path().to_path_buf();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        portcullis(&args, &dir)
    })
    .await
    .expect("run portcullis")
}

/// `portcullis revoke --config <gateway.yaml> <what>`; asserts exit 0.
pub async fn cli_revoke(gw: &Gateway, what: &[&str]) {
    let config = config_path(gw).display().to_string();
    let mut args = vec!["revoke", "--config", config.as_str()];
    args.extend_from_slice(what);
    let (code, stdout, stderr) = cli(gw, &args).await;
    assert_eq!(
        code, 0,
        "portcullis {args:?} failed\nstdout: {stdout}\nstderr: {stderr}"
    );
}
