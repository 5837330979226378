//! `portcullis check` (CONTRACT §1): exit codes and error reports that name
//! the key path and the line of every mistake.

mod common;

use common::*;

/// The 1-based number of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the config"))
        + 1
}

/// Asserts that one line of `stderr` names `key` and `line N` together.
#[track_caller]
fn assert_reported(stderr: &str, key: &str, line: usize) {
    let needle = format!("line {line}");
    let found = stderr.lines().any(|l| {
        l.contains(key)
            && l.match_indices(&needle).any(|(i, m)| {
                // `line 1` must not match `line 12`
                !l[i + m.len()..].starts_with(|c: char| c.is_ascii_digit())
            })
    });
    assert!(
        found,
        "no error line naming `{key}` at `{needle}` in:\n{stderr}"
    );
}

#[test]
fn check_accepts_the_standard_config() {
    let cfg = Config::new(refusing_addr());
    let path = cfg.save();
    let (code, stdout, stderr) = portcullis(
        &["check", "--config", path.to_str().unwrap()],
        cfg.dir.path(),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn check_accepts_an_asymmetric_key_config() {
    let mut cfg = Config::new(refusing_addr());
    cfg.trust(&Signer::for_alg(jsonwebtoken::Algorithm::ES256));
    let path = cfg.save();
    let (code, stdout, stderr) = portcullis(
        &["check", "--config", path.to_str().unwrap()],
        cfg.dir.path(),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn check_reports_every_mistake_with_its_line() {
    let yaml = r#"server:
  listen: 127.0.0.1:0
  listn: 127.0.0.1:8000
jwt:
  algorithms: [HS256]
  secret: "test-secret-please-change-0123456789"
blocklist:
  store: memory
upstreams:
  app:
    url: http://127.0.0.1:9
    connect_timeout: 1s
    timeout: soon
routes:
  - prefix: /public
    upstream: app
    auth: none
  - prefix: /
    upstream: nope
    auth: access
"#;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, stdout, stderr) =
        portcullis(&["check", "--config", path.to_str().unwrap()], dir.path());
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_reported(&stderr, "server.listn", line_of(yaml, "listn:")); // line 3
    assert_reported(
        &stderr,
        "upstreams.app.timeout",
        line_of(yaml, "timeout: soon"),
    ); // line 13
    assert_reported(
        &stderr,
        "routes[1].upstream",
        line_of(yaml, "upstream: nope"),
    );
    // line 19
}

#[test]
fn check_reports_a_bad_key_file() {
    let mut cfg = Config::new(refusing_addr());
    cfg.trust(&Signer::for_alg(jsonwebtoken::Algorithm::RS256));
    cfg.write_file("jwt.pub", "this is not a PEM\n");
    let path = cfg.save();
    let yaml = cfg.to_yaml();
    let (code, stdout, stderr) = portcullis(
        &["check", "--config", path.to_str().unwrap()],
        cfg.dir.path(),
    );
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert_reported(
        &stderr,
        "jwt.public_key_file",
        line_of(&yaml, "public_key_file:"),
    );
}

#[test]
fn check_reports_a_yaml_syntax_error_with_its_line() {
    let yaml = "server:\n  listen: 127.0.0.1:0\njwt:\n  algorithms: [HS256]\n  secret: abc: def\n";
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (code, stdout, stderr) =
        portcullis(&["check", "--config", path.to_str().unwrap()], dir.path());
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let needle = format!("line {}", line_of(yaml, "abc: def")); // line 5
    assert!(stderr.contains(&needle), "no `{needle}` in:\n{stderr}");
}

#[test]
fn check_on_a_missing_file_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-gateway.yaml");
    let (code, stdout, stderr) =
        portcullis(&["check", "--config", path.to_str().unwrap()], dir.path());
    assert_eq!(code, 1, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("no-such-gateway.yaml"),
        "the message should name the file:\n{stderr}"
    );
}

#[test]
fn check_with_bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = portcullis(&["check", "--bogus"], dir.path());
    assert_eq!(code, 2, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

#[test]
fn the_contracts_whole_example_passes_check() {
    // CONTRACT.md §2's example, as written, with the files and variables it names: every
    // key of the interface at once. It lists alternatives side by side (a secret for
    // HS256 beside a JWKS and a private key; a Redis CA beside a redis:// URL): those
    // are warnings, not errors.
    let dir = tempfile::tempdir().expect("tempdir");
    let example = include_str!("fixtures/contract_example.yaml");
    std::fs::write(dir.path().join("gateway.yaml"), example).expect("write");
    for sub in ["certs", "keys"] {
        std::fs::create_dir_all(dir.path().join(sub)).expect("mkdir");
    }
    let key = rcgen::KeyPair::generate().expect("key");
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .self_signed(&key)
        .expect("cert");
    for (name, text) in [
        ("certs/server.crt", cert.pem()),
        ("certs/server.key", key.serialize_pem()),
        ("certs/idp-ca.pem", cert.pem()),
        ("certs/redis-ca.pem", cert.pem()),
        ("certs/upstream-ca.pem", cert.pem()),
        ("keys/jwt.pub", key.public_key_pem()),
        ("keys/jwt.key", key.serialize_pem()),
    ] {
        std::fs::write(dir.path().join(name), text).expect("write");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["check", "--config", "gateway.yaml"])
        .current_dir(dir.path())
        .env("JWT_SECRET_KEY", "contract-example-secret-0123456789abcdef")
        .env("PORTCULLIS_ADMIN_TOKEN", "contract-example-admin-token")
        .env_remove("PORTCULLIS_CONFIG")
        .output()
        .expect("run portcullis check");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
}
