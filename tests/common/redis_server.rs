//! `redis-server` processes of a test's own: a plain Redis, one with a password, TLS
//! only, a replica, or a Sentinel, each on a free port of `127.0.0.1`, in a temporary
//! directory, without persistence, SIGKILLed on drop.
//!
//! Without `redis-server` installed, [`RedisServer::start`] prints a notice and returns
//! `None` (the test returns, passing), unless `PORTCULLIS_REQUIRE_REDIS` is set: then
//! it fails.
//!
//! ```ignore
//! let Some(redis) = RedisServer::start().await else { return };
//! cfg.set("blocklist.redis_url", json!(redis.url()));
//! ```

use portcullis::blocklist::redis::RedisStore;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// The log file every server writes in its directory; its ready line is what
/// [`RedisServer`] waits for.
const LOG: &str = "redis.log";

/// How long a server may take to say it is ready.
const START_WITHIN: Duration = Duration::from_secs(10);

/// How to start a [`RedisServer`] besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct RedisServerOptions {
    /// `--requirepass`.
    pub password: Option<String>,
    /// TLS only (`--port 0 --tls-port <port>`), with these PEM files; clients are not
    /// asked for certificates.
    pub tls: Option<TlsPem>,
    /// `--replicaof 127.0.0.1 <port>`.
    pub replica_of: Option<u16>,
}

/// A TLS server's certificate, its key, and the CA that issued it, as PEM.
#[derive(Debug, Clone)]
pub struct TlsPem {
    pub cert: String,
    pub key: String,
    pub ca: String,
}

/// One `redis-server` (or Sentinel) process of a test's own.
/// [`RedisServer::kill`] and [`RedisServer::restart`] (same port, same directory) stage
/// outages.
pub struct RedisServer {
    pub port: u16,
    dir: TempDir,
    args: Vec<String>,
    child: Option<Child>,
}

/// Whether `redis-server` can run. When it cannot: a failure if
/// `PORTCULLIS_REQUIRE_REDIS` is set, else a notice and `false` (skip the test).
pub fn redis_server_installed() -> bool {
    let installed = Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if !installed {
        assert!(
            std::env::var_os("PORTCULLIS_REQUIRE_REDIS").is_none(),
            "redis-server is not installed, and PORTCULLIS_REQUIRE_REDIS is set"
        );
        eprintln!(
            "NOTICE: redis-server is not installed: skipping this Redis test \
             (install it, or set PORTCULLIS_REQUIRE_REDIS=1 to make this a failure)"
        );
    }
    installed
}

/// A free TCP port on `127.0.0.1` (free when asked; nothing holds it after).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("find a free port")
        .port()
}

impl RedisServer {
    /// A plain Redis, or `None` when `redis-server` is not installed (see
    /// [`redis_server_installed`]).
    pub async fn start() -> Option<RedisServer> {
        RedisServer::start_with(RedisServerOptions::default()).await
    }

    /// A Redis started as `options` say, or `None` when `redis-server` is not installed.
    pub async fn start_with(options: RedisServerOptions) -> Option<RedisServer> {
        if !redis_server_installed() {
            return None;
        }
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut args: Vec<String> = Vec::new();
        let mut add = |more: &[&str]| args.extend(more.iter().map(|a| a.to_string()));
        let port_text = port.to_string();
        match &options.tls {
            None => add(&["--port", &port_text]),
            Some(tls) => {
                for (file, pem) in [
                    ("server.crt", &tls.cert),
                    ("server.key", &tls.key),
                    ("ca.pem", &tls.ca),
                ] {
                    std::fs::write(dir.path().join(file), pem).expect("write a TLS file");
                }
                add(&["--port", "0", "--tls-port", &port_text]);
                add(&[
                    "--tls-cert-file",
                    "server.crt",
                    "--tls-key-file",
                    "server.key",
                ]);
                add(&["--tls-ca-cert-file", "ca.pem", "--tls-auth-clients", "no"]);
            }
        }
        add(&["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]);
        add(&["--logfile", LOG]);
        if let Some(password) = &options.password {
            add(&["--requirepass", password]);
        }
        if let Some(master) = options.replica_of {
            add(&["--replicaof", "127.0.0.1", &master.to_string()]);
        }
        Some(RedisServer::launch(port, dir, args).await)
    }

    /// A Sentinel watching `master` as `mymaster` (quorum 2, down after 1 s).
    pub async fn sentinel(master: &RedisServer) -> RedisServer {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = format!(
            "port {port}\nbind 127.0.0.1\nlogfile {LOG}\ndir {dir}\n\
             sentinel monitor mymaster 127.0.0.1 {master} 2\n\
             sentinel down-after-milliseconds mymaster 1000\n\
             sentinel failover-timeout mymaster 5000\n\
             sentinel parallel-syncs mymaster 1\n",
            dir = dir.path().display(),
            master = master.port
        );
        std::fs::write(dir.path().join("sentinel.conf"), conf).expect("write sentinel.conf");
        let args = vec!["sentinel.conf".to_owned(), "--sentinel".to_owned()];
        RedisServer::launch(port, dir, args).await
    }

    async fn launch(port: u16, dir: TempDir, args: Vec<String>) -> RedisServer {
        let mut server = RedisServer {
            port,
            dir,
            args,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// Starts the process and waits for its ready line: Redis's "Ready to accept
    /// connections", a Sentinel's "+monitor master".
    async fn spawn(&mut self) {
        // A restart must not take the last run's ready line for its own.
        let _ = std::fs::remove_file(self.dir.path().join(LOG));
        let child = Command::new("redis-server")
            .args(&self.args)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let started = Instant::now();
        let ready = |log: &str| {
            log.contains("Ready to accept connections") || log.contains("+monitor master")
        };
        while !ready(&self.log()) {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "redis-server {:?} exited at start ({status}):\n{}",
                    self.args,
                    self.log()
                );
            }
            assert!(
                started.elapsed() < START_WITHIN,
                "redis-server {:?} not ready within {START_WITHIN:?}:\n{}",
                self.args,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `redis://127.0.0.1:<port>/0`: no password, no TLS.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// What the server logged (since its last start).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join(LOG)).unwrap_or_default()
    }

    /// SIGKILL: Redis vanishes at once, connections are reset.
    /// Stops (SIGSTOP) or resumes (SIGCONT) the server: a server that stops answering
    /// without closing its sockets.
    pub fn pause(&self, paused: bool) {
        if let Some(child) = &self.child {
            let signal = if paused { "-STOP" } else { "-CONT" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// A fresh, empty Redis on the same port (nothing was persisted).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// A client connection at [`RedisServer::url`], for inspecting what a store wrote.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("connect to the test redis")
    }

    /// The revocation store on this server, its keys under `prefix`.
    pub async fn store(&self, prefix: &str) -> RedisStore {
        RedisStore::open(&self.url(), prefix)
            .await
            .expect("open the redis store")
    }

    /// `redis-cli -p <port> <args>`: its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .args(args)
            .output()
            .expect("run redis-cli");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `redis-cli -p <port>` with `script` on stdin (one command per line), as an
    /// operator would type it. `None` when `redis-cli` is not installed.
    pub fn cli_script(&self, script: &str) -> Option<String> {
        use std::io::Write;
        let mut child = Command::new("redis-cli")
            .args(["-p", &self.port.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .ok()?;
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(script.as_bytes())
            .expect("write to redis-cli");
        let out = child.wait_with_output().expect("run redis-cli");
        assert!(out.status.success(), "redis-cli failed: {out:?}");
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}
