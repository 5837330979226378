//! Idle-connection memory (issue 19): RSS per idle HTTP/1.1 keep-alive client, plain and
//! TLS, for portcullis and HAProxy 2.6 (plain forwarding) in one run.
//!
//! `cargo bench --bench idle` (needs haproxy: `bash benches/load.sh` installs it).
//!
//! For each target: start it, send one request on a fresh connection, read the
//! process's VmRSS, open `IDLE_CONNECTIONS` (9 000) client connections that each send
//! one request, read the `200` and then stay open and silent, wait `IDLE_SETTLE_MS`
//! (2 000), read VmRSS again: the difference over the count is the memory an idle
//! client costs. Around that, 1 000 sequential requests on one more connection, before
//! and while the clients idle, show whether requests get slower next to them.
//! `IDLE_BASELINE_BIN=/path/to/portcullis` adds an earlier build as another target.

#[path = "support/process.rs"]
mod process;

use process::{env_or, free_port, wait_for_port, Proc};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const SECRET: &str = "idle-bench-secret-0123456789abcdef0123";

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

fn haproxy(dir: &Path, name: &str, config: &str, port: u16) -> Proc {
    let path = dir.join(format!("{name}.cfg"));
    std::fs::write(&path, config).expect("write haproxy config");
    let child = Command::new("haproxy")
        .args(["-db", "-f", path.to_str().expect("utf8 path")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    wait_for_port(port);
    Proc(child)
}

fn portcullis(binary: &str, dir: &Path, name: &str, yaml: &str, port: u16) -> Proc {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(&path, yaml).expect("write config");
    let mut child = Command::new(binary)
        .args(["run", "--config", path.to_str().expect("utf8 path")])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start portcullis");
    if let Some(stderr) = child.stderr.take() {
        let name = name.to_owned();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{name}: {line}");
            }
        });
    }
    wait_for_port(port);
    Proc(child)
}

/// A stream to a target: plain TCP or TLS.
trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

#[derive(Clone)]
struct Client {
    port: u16,
    tls: Option<tokio_rustls::TlsConnector>,
    request: Arc<Vec<u8>>,
}

impl Client {
    async fn connect(&self) -> Box<dyn Stream> {
        let tcp = TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("connect");
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Box::new(tcp),
            Some(connector) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
                Box::new(connector.connect(name, tcp).await.expect("TLS handshake"))
            }
        }
    }

    /// Sends the request and reads a `200` with a `Content-Length` body.
    async fn exchange(&self, stream: &mut Box<dyn Stream>) {
        stream.write_all(&self.request).await.expect("send");
        let mut head = Vec::with_capacity(512);
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            stream.read_exact(&mut byte).await.expect("response head");
            head.push(byte[0]);
        }
        let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
        assert!(text.starts_with("http/1.1 200"), "unexpected: {text}");
        let length: usize = text
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).await.expect("body");
    }
}

/// p50 and p99 of `n` sequential requests on one connection, in microseconds.
async fn probe(client: &Client, n: usize) -> (f64, f64) {
    let mut stream = client.connect().await;
    let mut took: Vec<f64> = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        client.exchange(&mut stream).await;
        took.push(start.elapsed().as_secs_f64() * 1e6);
    }
    took.sort_by(|a, b| a.total_cmp(b));
    (took[n / 2], took[n * 99 / 100])
}

struct Row {
    target: String,
    before_mib: f64,
    after_mib: f64,
    per_conn_kib: f64,
    probe_before: (f64, f64),
    probe_idle: (f64, f64),
}

async fn measure(name: &str, pid: u32, client: &Client, count: usize, settle: Duration) -> Row {
    // Warm: the first request builds pools and caches.
    let (_, _) = probe(client, 200).await;
    let probe_before = probe(client, 1_000).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let mut idle = Vec::with_capacity(count);
    // 200 at a time, as a crowd of clients arriving would.
    while idle.len() < count {
        let mut opening = tokio::task::JoinSet::new();
        for _ in 0..200.min(count - idle.len()) {
            let client = client.clone();
            opening.spawn(async move {
                let mut stream = client.connect().await;
                client.exchange(&mut stream).await;
                stream
            });
        }
        while let Some(opened) = opening.join_next().await {
            idle.push(opened.expect("client task"));
        }
    }
    tokio::time::sleep(settle).await;
    let after = rss_kib(pid);
    let probe_idle = probe(client, 1_000).await;
    drop(idle);
    Row {
        target: name.to_owned(),
        before_mib: before as f64 / 1024.0,
        after_mib: after as f64 / 1024.0,
        per_conn_kib: (after as f64 - before as f64) / count as f64,
        probe_before,
        probe_idle,
    }
}

fn token() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs();
    let claims = serde_json::json!({"sub": "idle", "jti": "idle-1", "type": "access", "iat": now, "exp": now + 3600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("token")
}

fn main() {
    if Command::new("sh")
        .args(["-c", "command -v haproxy"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        eprintln!(
            "idle bench: haproxy is not installed; run `bash benches/load.sh`, which installs it"
        );
        std::process::exit(1);
    }
    // 9 000, not the 10 000: this machine's hard limit of 20 000 descriptors
    // (which cannot be raised here) caps HAProxy, which reserves two per connection, at
    // about 9 900. The figure compared is per connection.
    let count: usize = env_or("IDLE_CONNECTIONS", 9_000);
    let settle = Duration::from_millis(env_or("IDLE_SETTLE_MS", 2_000));
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();

    // A certificate for localhost from a throwaway CA.
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let leaf_key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&leaf_key, &ca, &ca_key)
        .expect("leaf");
    std::fs::write(d.join("cert.pem"), leaf.pem()).expect("write");
    std::fs::write(d.join("key.pem"), leaf_key.serialize_pem()).expect("write");
    std::fs::write(
        d.join("haproxy.pem"),
        format!("{}{}", leaf.pem(), leaf_key.serialize_pem()),
    )
    .expect("write");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).expect("root");
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let tls_client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls_client));

    let upstream = free_port();
    let _upstream = haproxy(
        d,
        "upstream",
        &format!(
            "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n\
             frontend up\n  bind 127.0.0.1:{upstream}\n  http-request return status 200 content-type text/plain string ok\n"
        ),
        upstream,
    );
    let request = Arc::new(
        format!(
            "GET /idle HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\r\n",
            token()
        )
        .into_bytes(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");

    let mut binaries = vec![(
        "portcullis".to_owned(),
        env!("CARGO_BIN_EXE_portcullis").to_owned(),
    )];
    if let Ok(baseline) = std::env::var("IDLE_BASELINE_BIN") {
        binaries.push(("baseline".to_owned(), baseline));
    }
    let mut rows = Vec::new();
    for tls in [false, true] {
        let kind = if tls { "TLS" } else { "plain" };
        let connector = tls.then(|| connector.clone());
        for (name, binary) in &binaries {
            let port = free_port();
            let tls_yaml = if tls {
                "  tls: { cert_file: cert.pem, key_file: key.pem }\n"
            } else {
                ""
            };
            let yaml = format!(
                "server:\n  listen: 127.0.0.1:{port}\n  max_connections: 30000\n  header_read_timeout: 300s\n  idle_timeout: 300s\n{tls_yaml}\
                 jwt: {{ algorithms: [HS256], secret: {SECRET} }}\nblocklist: {{ store: memory }}\n\
                 upstreams: {{ app: {{ url: \"http://127.0.0.1:{upstream}\" }} }}\n\
                 routes:\n  - {{ prefix: /, upstream: app, auth: access }}\n"
            );
            let process = portcullis(binary, d, &format!("{name}-{kind}"), &yaml, port);
            let client = Client {
                port,
                tls: connector.clone(),
                request: request.clone(),
            };
            rows.push(rt.block_on(measure(
                &format!("{name} {kind}"),
                process.0.id(),
                &client,
                count,
                settle,
            )));
        }
        let port = free_port();
        let bind = if tls {
            format!(
                "127.0.0.1:{port} ssl crt {}",
                d.join("haproxy.pem").display()
            )
        } else {
            format!("127.0.0.1:{port}")
        };
        let process = haproxy(
            d,
            &format!("haproxy-{kind}"),
            &format!(
                "global\n  nbthread 1\n  maxconn 9500\ndefaults\n  mode http\n  timeout connect 5s\n  timeout client 300s\n  timeout server 300s\n  timeout http-keep-alive 300s\n  http-reuse always\n\
                 frontend edge\n  bind {bind}\n  default_backend app\nbackend app\n  server up 127.0.0.1:{upstream}\n"
            ),
            port,
        );
        let client = Client {
            port,
            tls: connector.clone(),
            request: request.clone(),
        };
        rows.push(rt.block_on(measure(
            &format!("haproxy {kind}"),
            process.0.id(),
            &client,
            count,
            settle,
        )));
    }

    println!("\n{count} idle HTTP/1.1 keep-alive clients (one request each), RSS read {settle:?} after the last opened");
    println!("| target | RSS before MiB | RSS with idle clients MiB | KiB per idle client | p50/p99 µs before | p50/p99 µs while idle |");
    println!("| --- | ---: | ---: | ---: | ---: | ---: |");
    for r in &rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.2} | {:.0} / {:.0} | {:.0} / {:.0} |",
            r.target,
            r.before_mib,
            r.after_mib,
            r.per_conn_kib,
            r.probe_before.0,
            r.probe_before.1,
            r.probe_idle.0,
            r.probe_idle.1
        );
    }
    let _ = std::io::stdout().flush();
}
