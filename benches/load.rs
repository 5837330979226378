//! Load bench: direct-to-upstream vs HAProxy `jwt_verify` vs HAProxy forwarding with no
//! auth at all (`plain`: the limit for any proxy in this topology) vs HAProxy forwarding
//! with no auth but the contract's forwarding rules (`plain-fwd`: client `X-Auth-*`
//! headers removed, `X-Forwarded-For`/`-Proto`/`-Host` and two identity headers set, as
//! portcullis must) vs portcullis (proxying, and as a forward-auth endpoint: wrk
//! straight at `forward_auth.path` with `X-Forwarded-Uri`, as nginx or Traefik would
//! ask) vs wrk straight at the upstream with the five headers portcullis adds
//! (`direct-fwd`: what parsing them costs the upstream, which shares the proxy's CPU),
//! in one run. The revocations are preloaded with one bulk NDJSON import. Beside
//! req/s and latency, each row gives the CPU time (user + system, from
//! `/proc/PID/stat`) per request of the proxy under test and of the upstream: CPU 0's
//! time, split between the two, which req/s alone cannot show.
//!
//! `bash benches/load.sh` (installs wrk and haproxy, then runs this), or
//! `cargo bench --bench load` when they are installed.
//!
//! Workload (issue 7): HTTP/1.1 keep-alive GETs with `Authorization: Bearer <JWT>`,
//! rotating over 1 000 valid tokens, of which 10 (1%) are revoked among 100 000 revoked
//! jtis; HS256 and ES256; a tiny upstream answering `200 ok` (HAProxy
//! `http-request return`). wrk runs with 1 thread and 64 connections pinned to CPU 1;
//! the upstream and the proxy under test share CPU 0 (`taskset`). Rounds interleave the
//! three targets so drift on a noisy machine hits them alike; the table reports the
//! median round of each.
//!
//! Before measuring, every token is sent once through each proxy: exactly the revoked
//! ones must be refused (portcullis 401, HAProxy 403), the others answered 200.
//!
//! Environment: `LOAD_SECONDS` (default 10), `LOAD_ROUNDS` (3), `LOAD_ALGS` (`HS256,ES256`),
//! `LOAD_CONNECTIONS` (64). `LOAD_BASELINE_BIN=/path/to/portcullis` adds a fourth target,
//! `baseline`: that binary (an earlier build) on the same config and revocations, in the
//! same interleaved rounds, for before/after comparisons of a change in one run.
//! `LOAD_CACHE_MAX_ENTRIES` / `LOAD_BASELINE_CACHE_MAX_ENTRIES` set `cache_max_entries`
//! of each (default 1 000 000): below the 100 000 revocations, the overflow tier serves.

#[path = "support/process.rs"]
mod process;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use process::{env_or, free_port, wait_for_port, Proc};
use serde_json::json;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

const TOKENS: usize = 1_000;
const REVOKED_IN_ROTATION: usize = 10;
const REVOKED_TOTAL: usize = 100_000;
const SECRET: &str = "load-bench-secret-0123456789abcdef";
const ADMIN_TOKEN: &str = "load-bench-admin-token-0123456789";

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// Starts `binary` on `config` pinned to CPU 0, its log relayed with `label`.
fn start_gateway(binary: &str, config: &Path, label: &str) -> Proc {
    let child = pinned(
        "0",
        binary,
        &["run", "--config", config.to_str().expect("utf8")],
    )
    .env("RUST_LOG", "warn")
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .expect("start portcullis");
    let mut gateway = Proc(child);
    if let Some(stderr) = gateway.0.stderr.take() {
        let label = label.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{label}: {line}")
            }
        });
    }
    gateway
}

fn pinned(cpu: &str, program: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpu).arg(program).args(args);
    cmd
}

fn haproxy(dir: &Path, name: &str, config: &str, port: u16) -> Proc {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config).expect("write haproxy config");
    let check = Command::new("haproxy")
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .output()
        .expect("run haproxy -c");
    assert!(
        check.status.success(),
        "haproxy rejected {name}.cfg: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    let child = pinned(
        "0",
        "haproxy",
        &["-db", "-f", path.to_str().expect("utf8 path")],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .expect("start haproxy");
    wait_for_port(port);
    Proc(child)
}

struct Scenario {
    alg: Algorithm,
    /// PEM public key file for ES256.
    public_pem: Option<PathBuf>,
    encoding: EncodingKey,
}

fn scenario(alg: Algorithm, dir: &Path) -> Scenario {
    match alg {
        Algorithm::HS256 => Scenario {
            alg,
            public_pem: None,
            encoding: EncodingKey::from_secret(SECRET.as_bytes()),
        },
        Algorithm::ES256 => {
            let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("keygen");
            let public = dir.join("es256.pub.pem");
            std::fs::write(&public, key.public_key_pem()).expect("write pub");
            Scenario {
                alg,
                public_pem: Some(public),
                encoding: EncodingKey::from_ec_pem(key.serialize_pem().as_bytes()).expect("ec key"),
            }
        }
        other => panic!("unsupported scenario {other:?}"),
    }
}

/// The rotation's tokens, and the jtis of the revoked ones.
fn tokens(s: &Scenario) -> (Vec<String>, Vec<String>) {
    let iat = now() - 5;
    let mut tokens = Vec::with_capacity(TOKENS);
    let mut revoked = Vec::new();
    for i in 0..TOKENS {
        let jti = format!(
            "tok-{i:06}-{:016x}",
            iat.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ i as u64
        );
        let claims = json!({"sub": format!("user{i}"), "jti": jti, "type": "access", "iat": iat, "exp": iat + 3600});
        tokens.push(jsonwebtoken::encode(&Header::new(s.alg), &claims, &s.encoding).expect("sign"));
        if i % (TOKENS / REVOKED_IN_ROTATION) == 0 {
            revoked.push(jti);
        }
    }
    (tokens, revoked)
}

/// The forward-auth endpoint of the bench config (the current build only: a baseline
/// binary may predate the key).
const FORWARD_AUTH_PATH: &str = "/_portcullis/auth";

fn portcullis_config(s: &Scenario, upstream: u16, edge: u16, admin: u16, label: &str) -> String {
    let forward_auth = label == "portcullis";
    let key = match &s.public_pem {
        None => format!("  secret: {SECRET}\n"),
        Some(p) => format!("  public_key_file: {}\n", p.display()),
    };
    // `LOAD_CACHE_MAX_ENTRIES` below the 100 000 revocations measures the overflow tier;
    // `LOAD_BASELINE_CACHE_MAX_ENTRIES` sets the baseline's, so one run can compare a
    // build overflowed against the same build (LOAD_BASELINE_BIN) holding everything.
    let cache: u64 = match label {
        "baseline" => env_or("LOAD_BASELINE_CACHE_MAX_ENTRIES", 1_000_000),
        _ => env_or("LOAD_CACHE_MAX_ENTRIES", 1_000_000),
    };
    let mut config = format!(
        "server:\n  listen: 127.0.0.1:{edge}\n  access_log: false\nadmin:\n  listen: 127.0.0.1:{admin}\n  token: {ADMIN_TOKEN}\n\
         jwt:\n  algorithms: [{:?}]\n{key}blocklist:\n  store: memory\n  cache_max_entries: {cache}\n\
         upstreams:\n  app:\n    url: http://127.0.0.1:{upstream}\nroutes:\n  - prefix: /\n    upstream: app\n    auth: access\n",
        s.alg
    );
    if forward_auth {
        config.push_str(&format!(
            "forward_auth:\n  path: {FORWARD_AUTH_PATH}\n  trusted_proxies: [127.0.0.1/32]\n"
        ));
    }
    config
}

fn haproxy_jwt_config(s: &Scenario, upstream: u16, port: u16, acl: &Path) -> String {
    let (alg, key) = match &s.public_pem {
        None => ("HS256", format!("\"{SECRET}\"")),
        Some(p) => ("ES256", format!("\"{}\"", p.display())),
    };
    let acl = acl.display();
    [
        "global",
        "  nbthread 1",
        "  maxconn 4096",
        "defaults",
        "  mode http",
        "  timeout connect 5s",
        "  timeout client 30s",
        "  timeout server 30s",
        "frontend fe",
        &format!("  bind 127.0.0.1:{port}"),
        "  http-request set-var(txn.bearer) http_auth_bearer",
        "  http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('$.alg')",
        &format!("  http-request deny unless {{ var(txn.alg) -m str {alg} }}"),
        &format!(
            "  http-request deny unless {{ var(txn.bearer),jwt_verify(txn.alg,{key}) -m int 1 }}"
        ),
        "  http-request set-var(txn.now) date",
        "  http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('$.exp','int')",
        "  http-request deny if { var(txn.exp),sub(txn.now) -m int lt 0 }",
        "  http-request set-var(txn.jti) var(txn.bearer),jwt_payload_query('$.jti')",
        &format!("  http-request deny if {{ var(txn.jti) -m str -f {acl} }}"),
        "  default_backend be",
        "backend be",
        "  http-reuse always",
        &format!("  server up 127.0.0.1:{upstream}"),
        "",
    ]
    .join("\n")
}

/// `plain` plus the header work CONTRACT.md asks of any gateway in this place: client
/// `X-Auth-*` headers removed (`forward.strip_headers`), `X-Forwarded-For`, `-Proto` and
/// `-Host` set, and the two default identity headers. Their values are constants as
/// long as the bench tokens' `sub` and `jti` (HAProxy reads no token here), so this
/// target moves the same bytes as portcullis with less work: no JWT, no revocation
/// check, no per-token value.
fn haproxy_plain_fwd_config(upstream: u16, port: u16) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
         frontend plain_fwd\n  bind 127.0.0.1:{port}\n  option forwardfor\n\
         \x20 http-request del-header x-auth- -m beg\n\
         \x20 http-request set-header x-forwarded-proto http\n\
         \x20 http-request set-header x-forwarded-host %[req.hdr(host)]\n\
         \x20 http-request set-header x-auth-token-id tok-000500-0123456789abcdef\n\
         \x20 http-request set-header x-auth-subject user500\n\
         \x20 default_backend app\nbackend app\n  server up 127.0.0.1:{upstream}\n"
    )
}

type HttpClient = Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

/// HAProxy 2.6 forwarding to the upstream with no auth: one thread, connection reuse.
fn haproxy_plain_config(upstream: u16, port: u16) -> String {
    format!(
        "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
         frontend plain\n  bind 127.0.0.1:{port}\n  default_backend app\nbackend app\n  server up 127.0.0.1:{upstream}\n"
    )
}

async fn status_of(client: &HttpClient, port: u16, token: &str) -> u16 {
    let request = http::Request::get(format!("http://127.0.0.1:{port}/"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    let response = client.request(request).await.expect("send");
    let status = response.status().as_u16();
    let _ = response.into_body().collect().await;
    status
}

/// Every token once: exactly the revoked ones refused.
async fn check_refusals(
    client: &HttpClient,
    port: u16,
    tokens: &[String],
    revoked_idx: &[usize],
    refused: u16,
    name: &str,
) {
    for (i, token) in tokens.iter().enumerate() {
        let status = status_of(client, port, token).await;
        let expected = if revoked_idx.contains(&i) {
            refused
        } else {
            200
        };
        assert_eq!(
            status, expected,
            "{name}: token {i} answered {status}, expected {expected}"
        );
    }
    println!(
        "  {name}: exactly the {} revoked tokens were refused ({refused}), {} answered 200",
        revoked_idx.len(),
        tokens.len() - revoked_idx.len()
    );
}

/// Preloads the revocations in one bulk NDJSON import (all or nothing, one transaction).
async fn load_revocations(admin: u16, revoked: &[String]) {
    let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
    let exp = now() + 7200;
    let body: String = revoked
        .iter()
        .map(|jti| json!({"jti": jti, "exp": exp}).to_string() + "\n")
        .collect();
    let request = http::Request::post(format!("http://127.0.0.1:{admin}/revocations"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .header("content-type", "application/x-ndjson")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    let response = client.request(request).await.expect("import");
    let status = response.status();
    let answer = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    assert_eq!(status, 201, "import: {}", String::from_utf8_lossy(&answer));
}

#[derive(Clone, Copy, Default)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    requests: u64,
    non2xx: u64,
    /// CPU time (user + system) per request of the proxy under test, and of the
    /// upstream, in microseconds: where CPU 0's time goes.
    proxy_us: f64,
    upstream_us: f64,
}

/// User + system CPU time of process `pid` so far, in clock ticks (`/proc/PID/stat`
/// fields 14 and 15, counted after the parenthesized command name).
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // After the name: state is field 3, so utime (14) and stime (15) are at 11 and 12.
    field(11) + field(12)
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 on Linux).
fn ticks_per_second() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

/// [`wrk`] at `port`, with the CPU time per request of `proxy` (none when wrk goes
/// straight to the upstream) and of `upstream`.
fn measured(
    port: u16,
    script: &Path,
    seconds: u64,
    connections: u64,
    proxy: Option<u32>,
    upstream: u32,
) -> Run {
    let before = (proxy.map(cpu_ticks), cpu_ticks(upstream));
    let mut run = wrk(port, script, seconds, connections);
    let per_request =
        |ticks: u64| ticks as f64 / ticks_per_second() * 1e6 / run.requests.max(1) as f64;
    run.proxy_us = proxy.zip(before.0).map_or(0.0, |(pid, was)| {
        per_request(cpu_ticks(pid).saturating_sub(was))
    });
    run.upstream_us = per_request(cpu_ticks(upstream).saturating_sub(before.1));
    run
}

fn parse_ms(value: &str) -> f64 {
    let value = value.trim();
    let (number, factor) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (value, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}

fn wrk(port: u16, script: &Path, seconds: u64, connections: u64) -> Run {
    let output = pinned(
        "1",
        "wrk",
        &[
            "-t1",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
            script.to_str().expect("utf8"),
            &format!("http://127.0.0.1:{port}/"),
        ],
    )
    .output()
    .expect("run wrk");
    let text = String::from_utf8_lossy(&output.stdout);
    let mut run = Run::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("Requests/sec:") {
            run.rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("50%") {
            run.p50_ms = parse_ms(v);
        } else if let Some(v) = line.strip_prefix("99%") {
            run.p99_ms = parse_ms(v);
        } else if let Some(v) = line.strip_prefix("Non-2xx or 3xx responses:") {
            run.non2xx = v.trim().parse().unwrap_or(0);
        } else if line.contains("requests in") {
            run.requests = line
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    assert!(
        run.rps > 0.0,
        "wrk produced no result:\n{text}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    run
}

fn median(runs: &[Run]) -> Run {
    let mut sorted = runs.to_vec();
    sorted.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    sorted[sorted.len() / 2]
}

fn main() {
    for tool in ["wrk", "haproxy", "taskset"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| !o.status.success())
            .unwrap_or(true)
        {
            eprintln!("load bench: {tool} is not installed; run `bash benches/load.sh`, which installs it");
            std::process::exit(1);
        }
    }
    let seconds: u64 = env_or("LOAD_SECONDS", 10);
    let rounds: usize = env_or("LOAD_ROUNDS", 3);
    let connections: u64 = env_or("LOAD_CONNECTIONS", 64);
    let algs: String = env_or("LOAD_ALGS", "HS256,ES256".to_owned());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let binary = env!("CARGO_BIN_EXE_portcullis");

    let upstream_port = free_port();
    let upstream = haproxy(
        dir.path(),
        "upstream",
        &format!(
            "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend up\n  bind 127.0.0.1:{upstream_port}\n  http-request return status 200 content-type text/plain string ok\n"
        ),
        upstream_port,
    );
    let upstream_pid = upstream.0.id();
    println!(
        "machine: {} CPUs; wrk -t1 -c{connections} -d{seconds}s pinned to CPU 1; upstream and proxy pinned to CPU 0; {rounds} interleaved rounds",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
    );

    let mut table = Vec::new();
    for alg_name in algs.split(',') {
        let alg: Algorithm = alg_name.trim().parse().expect("algorithm");
        let s = scenario(alg, dir.path());
        let (tokens, revoked_rotation) = tokens(&s);
        let revoked_idx: Vec<usize> = (0..TOKENS).step_by(TOKENS / REVOKED_IN_ROTATION).collect();
        let mut revoked_all = revoked_rotation.clone();
        revoked_all.extend((revoked_all.len()..REVOKED_TOTAL).map(|i| format!("other-{i:08}")));
        let token_file = dir.path().join(format!("tokens-{alg_name}.txt"));
        std::fs::write(&token_file, tokens.join("\n") + "\n").expect("tokens");
        let acl = dir.path().join(format!("revoked-{alg_name}.acl"));
        std::fs::write(&acl, revoked_all.join("\n") + "\n").expect("acl");
        // Requests to `path` with `extra` headers (a Lua table body), rotating the tokens.
        let lua = |name: &str, path: &str, extra: &str| {
            let script = dir.path().join(format!("{name}-{alg_name}.lua"));
            std::fs::write(
                &script,
                format!(
                    "local tokens = {{}}\nfor line in io.lines(\"{}\") do tokens[#tokens + 1] = line end\nlocal i = 0\n\
                     request = function()\n  i = i + 1\n  return wrk.format(\"GET\", \"{path}\", {{{extra}[\"Authorization\"] = \"Bearer \" .. tokens[(i % #tokens) + 1]}})\nend\n",
                    token_file.display()
                ),
            )
            .expect("lua");
            script
        };
        let script = lua("rotate", "/", "");
        // Straight to the upstream with the headers portcullis adds on the way (the same
        // bytes, `sub` and `jti` of one token): what those headers alone cost the upstream.
        let direct_fwd_script = lua(
            "direct-fwd",
            "/",
            "[\"X-Forwarded-For\"] = \"127.0.0.1\", [\"X-Forwarded-Proto\"] = \"http\", \
             [\"X-Forwarded-Host\"] = \"127.0.0.1:18000\", \
             [\"X-Auth-Token-Id\"] = \"tok-000500-0123456789abcdef\", [\"X-Auth-Subject\"] = \"user500\", ",
        );
        // Forward auth: wrk straight at the endpoint, as a proxy's subrequest would come.
        let forward_auth_script = lua(
            "forward-auth",
            FORWARD_AUTH_PATH,
            "[\"X-Forwarded-Method\"] = \"GET\", [\"X-Forwarded-Uri\"] = \"/\", ",
        );

        let start = |binary: &str, label: &str| {
            let (edge, admin) = (free_port(), free_port());
            let config = dir.path().join(format!("{label}-{alg_name}.yaml"));
            std::fs::write(
                &config,
                portcullis_config(&s, upstream_port, edge, admin, label),
            )
            .expect("config");
            let gateway = start_gateway(binary, &config, label);
            wait_for_port(edge);
            let started = Instant::now();
            rt.block_on(load_revocations(admin, &revoked_all));
            println!(
                "{alg_name}: {} revocations imported into {label} (admin API, NDJSON) in {:.1?}",
                revoked_all.len(),
                started.elapsed()
            );
            (gateway, edge)
        };
        let (gateway, edge) = start(binary, "portcullis");
        let baseline = std::env::var("LOAD_BASELINE_BIN")
            .ok()
            .map(|bin| start(&bin, "baseline"));

        let proxy_port = free_port();
        let _haproxy = haproxy(
            dir.path(),
            &format!("haproxy-{alg_name}"),
            &haproxy_jwt_config(&s, upstream_port, proxy_port, &acl),
            proxy_port,
        );

        // The limit for any proxy here: HAProxy forwarding with no auth at all.
        let plain_port = free_port();
        let _plain = haproxy(
            dir.path(),
            &format!("plain-{alg_name}"),
            &haproxy_plain_config(upstream_port, plain_port),
            plain_port,
        );

        // The same, doing the header work the contract asks of portcullis (no auth).
        let plain_fwd_port = free_port();
        let _plain_fwd = haproxy(
            dir.path(),
            &format!("plain-fwd-{alg_name}"),
            &haproxy_plain_fwd_config(upstream_port, plain_fwd_port),
            plain_fwd_port,
        );

        rt.block_on(async {
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            check_refusals(&client, edge, &tokens, &revoked_idx, 401, "portcullis").await;
            check_refusals(&client, proxy_port, &tokens, &revoked_idx, 403, "haproxy").await;
            if let Some((_, port)) = &baseline {
                check_refusals(&client, *port, &tokens, &revoked_idx, 401, "baseline").await;
            }
        });

        let gateway_pid = Some(gateway.0.id());
        let mut targets = vec![
            ("direct", upstream_port, &script, None),
            ("haproxy", proxy_port, &script, Some(_haproxy.0.id())),
            ("plain", plain_port, &script, Some(_plain.0.id())),
            (
                "plain-fwd",
                plain_fwd_port,
                &script,
                Some(_plain_fwd.0.id()),
            ),
            ("portcullis", edge, &script, gateway_pid),
            ("forward-auth", edge, &forward_auth_script, gateway_pid),
            ("direct-fwd", upstream_port, &direct_fwd_script, None),
        ];
        if let Some((proc, port)) = &baseline {
            targets.push(("baseline", *port, &script, Some(proc.0.id())));
        }
        let mut results: Vec<Vec<Run>> = vec![Vec::new(); targets.len()];
        // Warm-up: fills portcullis's verified-token cache and every keep-alive pool.
        for (_, port, script, _) in &targets {
            wrk(*port, script, 2, connections);
        }
        for round in 0..rounds {
            for (t, (name, port, script, proxy)) in targets.iter().enumerate() {
                let run = measured(*port, script, seconds, connections, *proxy, upstream_pid);
                println!("  round {} {alg_name} {name:<10} {:>9.0} req/s  p50 {:>6.2} ms  p99 {:>6.2} ms  non-2xx {}  CPU µs/req proxy {:.2} upstream {:.2}", round + 1, run.rps, run.p50_ms, run.p99_ms, run.non2xx, run.proxy_us, run.upstream_us);
                results[t].push(run);
            }
        }
        let medians: Vec<Run> = results.iter().map(|r| median(r)).collect();
        for (t, (name, _, _, _)) in targets.iter().enumerate() {
            table.push((
                alg_name.to_owned(),
                name.to_string(),
                medians[t],
                medians[0].rps,
                medians[1].rps,
                medians[2].rps,
                medians[3].rps,
            ));
        }
        drop(gateway);
        drop(baseline);
    }

    println!();
    println!("| scenario | target | req/s | p50 ms | p99 ms | non-2xx (of requests) | vs direct | vs haproxy | vs plain | vs plain-fwd | proxy CPU µs/req | upstream CPU µs/req |");
    println!("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    for (alg, name, run, direct, haproxy, plain, plain_fwd) in &table {
        let refused = if name.starts_with("direct") {
            "n/a".to_owned()
        } else {
            format!(
                "{} ({:.2}%)",
                run.non2xx,
                100.0 * run.non2xx as f64 / run.requests.max(1) as f64
            )
        };
        println!(
            "| {alg} | {name} | {:.0} | {:.2} | {:.2} | {refused} | {:.2}x | {:.2}x | {:.2}x | {:.2}x | {:.2} | {:.2} |",
            run.rps,
            run.p50_ms,
            run.p99_ms,
            run.rps / direct,
            run.rps / haproxy,
            run.rps / plain,
            run.rps / plain_fwd,
            run.proxy_us,
            run.upstream_us
        );
    }
}
