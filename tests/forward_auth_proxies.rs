//! Forward auth behind REAL proxies: Debian's nginx (`auth_request`, with
//! `auth_request_set` and `proxy_set_header` for the identity header) and Caddy
//! (`forward_auth` with `uri` and `copy_headers`), each started here in the foreground on a free 127.0.0.1 port
//! with its config in a temp dir, in front of the recording upstream, with the real
//! portcullis binary as the auth service. The configs are the README's.
//!
//! A machine without nginx or caddy skips these with a note, unless
//! `PORTCULLIS_REQUIRE_PROXIES=1` (set by .ci/run), which makes a missing proxy a failure.

mod common;

use common::{access, bearer, get, request, token, ClaimsExt, Gateway, Reply, Upstream};
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const ENDPOINT: &str = "/_portcullis/auth";
const ADMIN_TOKEN: &str = "forward-auth-admin-token-0123456789";

/// A proxy process of this test, killed (and reaped) on drop.
struct Proxy {
    name: &'static str,
    addr: SocketAddr,
    child: Child,
    dir: tempfile::TempDir,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            for log in ["error.log", "out.log"] {
                if let Ok(text) = std::fs::read_to_string(self.dir.path().join(log)) {
                    eprintln!("----- {} {log} -----\n{text}", self.name);
                }
            }
        }
    }
}

/// The proxy's binary, or `None` (with a note) when it is not installed and the
/// environment does not require it.
fn installed(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        if std::env::var("PORTCULLIS_REQUIRE_PROXIES").as_deref() == Ok("1") {
            panic!("{name} is not installed and PORTCULLIS_REQUIRE_PROXIES=1");
        }
        eprintln!("note: {name} is not installed; skipping (set PORTCULLIS_REQUIRE_PROXIES=1 to fail instead)");
    }
    found
}

/// A port nothing listens on right now (bound, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

/// Starts `command` with its output in `dir/out.log` and waits until `addr` accepts.
async fn spawn(
    name: &'static str,
    mut command: Command,
    dir: tempfile::TempDir,
    addr: SocketAddr,
) -> Proxy {
    let out = std::fs::File::create(dir.path().join("out.log")).expect("out.log");
    let err = out.try_clone().expect("out.log");
    let child = command
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
    let mut proxy = Proxy {
        name,
        addr,
        child,
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return proxy;
        }
        if let Ok(Some(status)) = proxy.child.try_wait() {
            panic!("{name} exited before listening ({status})");
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not listen on {addr} within 15 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The README's nginx configuration, with the paths and ports of this test.
fn nginx_conf(dir: &Path, listen: SocketAddr, gateway: SocketAddr, app: SocketAddr) -> String {
    let d = dir.display();
    format!(
        r#"
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}/client_body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    listen {listen};

    # --- as in the README ---
    location = /_portcullis/auth {{
      internal;
      proxy_pass http://{gateway};
      proxy_pass_request_body off;
      proxy_set_header Content-Length "";
      proxy_set_header X-Original-Method $request_method;
      proxy_set_header X-Original-URI $request_uri;
      # The subrequest carries the client's headers: never let one name the request.
      proxy_set_header X-Forwarded-Method "";
      proxy_set_header X-Forwarded-Uri "";
      proxy_set_header X-Original-URL "";
    }}
    location = /logout {{
      proxy_pass http://{gateway};
    }}
    location / {{
      auth_request /_portcullis/auth;
      auth_request_set $auth_subject $upstream_http_x_auth_subject;
      auth_request_set $auth_token_id $upstream_http_x_auth_token_id;
      proxy_set_header X-Auth-Subject $auth_subject;
      proxy_set_header X-Auth-Token-Id $auth_token_id;
      proxy_http_version 1.1;
      proxy_pass http://{app};
    }}
  }}
}}
"#
    )
}

async fn nginx(gateway: SocketAddr, app: SocketAddr) -> Option<Proxy> {
    let bin = installed("nginx")?;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let conf = dir.path().join("nginx.conf");
    std::fs::write(&conf, nginx_conf(dir.path(), addr, gateway, app)).expect("nginx.conf");
    let mut command = Command::new(bin);
    // One process (no master/worker pair), so that killing the child stops nginx.
    command
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(&conf)
        .args(["-g", "daemon off; master_process off;"]);
    Some(spawn("nginx", command, dir, addr).await)
}

/// The README's Caddyfile, with the ports of this test.
fn caddyfile(listen: SocketAddr, gateway: SocketAddr, app: SocketAddr) -> String {
    format!(
        r#"{{
	admin off
	auto_https off
}}
http://{listen} {{
	route {{
		handle /logout {{
			reverse_proxy {gateway}
		}}
		# A client's own identity headers never reach the app.
		request_header -X-Auth-*
		request_header -X_Auth_*
		forward_auth {gateway} {{
			uri /_portcullis/auth
			copy_headers X-Auth-Subject X-Auth-Token-Id
		}}
		# Caddy 2.6 copies a header the verdict lacks as its placeholder's text.
		@no_subject header_regexp X-Auth-Subject ^\{{http\.
		request_header @no_subject -X-Auth-Subject
		@no_token_id header_regexp X-Auth-Token-Id ^\{{http\.
		request_header @no_token_id -X-Auth-Token-Id
		reverse_proxy {app}
	}}
}}
"#
    )
}

async fn caddy(gateway: SocketAddr, app: SocketAddr) -> Option<Proxy> {
    let bin = installed("caddy")?;
    let dir = tempfile::tempdir().expect("tempdir");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let file = dir.path().join("Caddyfile");
    std::fs::write(&file, caddyfile(addr, gateway, app)).expect("Caddyfile");
    let mut command = Command::new(bin);
    command
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        // Caddy keeps its state under these; none of it may leave the temp dir.
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path());
    Some(spawn("caddy", command, dir, addr).await)
}

/// portcullis as the auth service (the standard test config, see `common::Config`,
/// with forward auth for loopback and an admin listener).
async fn auth_service(app: &Upstream) -> Gateway {
    let mut config = common::Config::new(app.addr);
    config.set(
        "forward_auth",
        json!({ "path": ENDPOINT, "trusted_proxies": ["127.0.0.1/32", "::1/128"] }),
    );
    config.set(
        "admin",
        json!({ "listen": "127.0.0.1:0", "token": ADMIN_TOKEN }),
    );
    Gateway::start(config).await
}

/// Revokes `t` through the admin API (201 once recorded).
async fn revoke(gw: &Gateway, t: &str) {
    let admin = gw.admin.expect("admin listener");
    let auth = bearer(ADMIN_TOKEN);
    let body = json!({ "token": t }).to_string();
    let reply = request(
        admin,
        "POST",
        "/revocations",
        &[
            ("authorization", &auth),
            ("content-type", "application/json"),
        ],
        body,
    )
    .await;
    assert_eq!(reply.0, 201, "admin revocation: {}", reply.2);
}

/// The upstream's echo of a request the proxy let through.
#[track_caller]
fn passed(reply: &Reply) -> Value {
    assert_eq!(
        reply.0, 200,
        "expected the proxy to pass the request: {}",
        reply.2
    );
    common::echoed(&reply.2)
}

#[track_caller]
fn stopped(reply: &Reply, status: u16, www_authenticate: Option<&str>) {
    assert_eq!(reply.0, status, "status from the proxy: {}", reply.2);
    let got = reply.1.get("www-authenticate").map(|v| v.to_str().unwrap());
    assert_eq!(got, www_authenticate, "WWW-Authenticate through the proxy");
}

/// The cases both proxies must get right, through `proxy`.
async fn common_cases(proxy: &Proxy, gw: &Gateway, app: &Upstream) {
    let at = proxy.addr;
    let alice_claims = access("alice");
    let alice = token(&alice_claims);
    let auth = bearer(&alice);

    // A valid token reaches the app, with the identity the auth service answered,
    // replacing the one the client sent.
    let forged = [
        ("x-auth-subject", "mallory"),
        ("x-auth-token-id", "forged"),
        ("x_auth_subject", "mallory"),
    ];
    let mut headers = vec![("authorization", auth.as_str())];
    headers.extend(forged);
    let echo = passed(&get(at, "/app/x?y=1", &headers).await);
    assert_eq!(echo["path"], "/app/x", "{echo}");
    assert_eq!(echo["query"], "y=1", "{echo}");
    assert_eq!(echo["headers"]["x-auth-subject"], "alice", "{echo}");
    assert_eq!(
        echo["headers"]["x-auth-token-id"], alice_claims["jti"],
        "{echo}"
    );
    assert_eq!(echo["headers"].get("x_auth_subject"), None, "{echo}");
    assert_eq!(app.seen(), ["GET /app/x"]);

    // A public route needs no token, and no identity header gets through: neither a
    // client's nor anything the proxy makes up for the one the verdict lacks.
    let echo = passed(&get(at, "/public/page", &forged).await);
    for name in ["x-auth-subject", "x-auth-token-id", "x_auth_subject"] {
        assert_eq!(echo["headers"].get(name), None, "{name}: {echo}");
    }
    assert_eq!(app.seen(), ["GET /app/x", "GET /public/page"]);

    // Refused: the status (and WWW-Authenticate) of the edge, and the app sees nothing.
    stopped(&get(at, "/app/x", &[]).await, 401, Some("Bearer"));
    // A client cannot name another request to the auth service.
    let hostile = [
        ("x-forwarded-uri", "/public"),
        ("x-original-uri", "/public"),
        ("x-original-url", "http://h/public"),
    ];
    for header in hostile {
        let reply = get(at, "/app/x", &[header]).await;
        // nginx clears these (401: no token for /app/x); Caddy sets X-Forwarded-Uri
        // itself and passes the others on, which then disagree with it (400).
        assert!(
            matches!(reply.0, 400 | 401),
            "{header:?} got {} through {}",
            reply.0,
            proxy.name
        );
    }
    let fresh = token(&access("alice").with(json!({ "fresh": true })));
    stopped(
        &get(at, "/admin/users", &[("authorization", &bearer(&fresh))]).await,
        403,
        None,
    );
    let bob = token(&access("bob"));
    let echo = passed(&get(at, "/app/y", &[("authorization", &bearer(&bob))]).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "bob");
    revoke(gw, &bob).await;
    stopped(
        &get(at, "/app/y", &[("authorization", &bearer(&bob))]).await,
        401,
        Some(r#"Bearer error="invalid_token""#),
    );
    assert_eq!(app.seen(), ["GET /app/x", "GET /public/page", "GET /app/y"]);

    // A logout routed to portcullis itself is enforced through the proxy at once.
    let reply = request(at, "POST", "/logout", &[("authorization", &auth)], "").await;
    common::assert_logged_out(&reply);
    stopped(
        &get(at, "/app/x", &[("authorization", &auth)]).await,
        401,
        Some(r#"Bearer error="invalid_token""#),
    );
    assert_eq!(
        app.seen(),
        ["GET /app/x", "GET /public/page", "GET /app/y"],
        "the app saw a refused request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nginx_auth_request_with_portcullis() {
    let app = Upstream::start().await;
    let gw = auth_service(&app).await;
    let Some(proxy) = nginx(gw.edge, app.addr).await else {
        return;
    };
    common_cases(&proxy, &gw, &app).await;
    // nginx keeps the auth service's 401/403 and turns any other status into a 500:
    // a path the edge would refuse with 400 is still kept from the app.
    let reply = get(
        proxy.addr,
        "/app/%2Fetc",
        &[("authorization", &bearer(&token(&access("alice"))))],
    )
    .await;
    assert_eq!(reply.0, 500, "{}", reply.2);
    assert_eq!(app.seen().len(), 3);
    let log = gw.log_text();
    assert!(
        log.contains("forward_auth=true"),
        "access-log lines are marked:\n{log}"
    );
    assert!(log.contains("original=\"GET /app/x\""), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn caddy_forward_auth_with_portcullis() {
    let app = Upstream::start().await;
    let gw = auth_service(&app).await;
    let Some(proxy) = caddy(gw.edge, app.addr).await else {
        return;
    };
    common_cases(&proxy, &gw, &app).await;
    // Caddy passes the auth service's refusal on whole: status, JSON body, header.
    let reply = get(proxy.addr, "/app", &[]).await;
    common::assert_refused(&reply, 401, "MissingTokenError", "Token Error");
    let fresh = token(&access("alice").with(json!({ "fresh": true })));
    let reply = get(proxy.addr, "/admin", &[("authorization", &bearer(&fresh))]).await;
    common::assert_refused(
        &reply,
        403,
        "InsufficientScopeError",
        "Missing required claims",
    );
    assert_eq!(app.seen().len(), 3);
}
