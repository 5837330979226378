//! The command line as a newcomer meets it (issue 15): `check` that reports every
//! mistake once and nothing false, output in the config file's words, `--config` before
//! or after the subcommand, and the refusals of `token` and `revoke`.

mod common;

use aws_lc_rs::encoding::AsDer;
use common::*;
use rustls::pki_types::pem::PemObject;
use std::path::Path;

const SECRET_ENV: &str = "dev-secret-change-me-at-least-32-bytes";

/// Writes `yaml` as `name` in a fresh directory and runs `portcullis <args>` there.
fn run_with(name: &str, yaml: &str, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(name), yaml).expect("write config");
    portcullis(args, dir.path())
}

/// A valid config with a memory store and one upstream, plus `extra` appended to the
/// `server:` section.
fn minimal(server_extra: &str) -> String {
    format!(
        "server:\n  listen: 127.0.0.1:0\n{server_extra}jwt:\n  algorithms: [HS256]\n  secret: {SECRET_ENV}\nblocklist:\n  store: memory\nupstreams:\n  app:\n    url: http://127.0.0.1:9\nroutes:\n  - prefix: /\n    upstream: app\n"
    )
}

fn error_lines(stderr: &str) -> Vec<&str> {
    stderr.lines().filter(|l| !l.trim().is_empty()).collect()
}

#[test]
fn a_typo_inside_an_upstream_is_reported_once_without_cascading_into_routes() {
    let yaml = minimal("").replace(
        "    url: http://127.0.0.1:9\n",
        "    url: http://127.0.0.1:9\n    timout: 30s\n",
    );
    let (code, _, stderr) = run_with("g.yaml", &yaml, &["check", "--config", "g.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        error_lines(&stderr),
        ["error: upstreams.app.timout (line 11): unknown field `timout`, expected one of `url`, `connect_timeout`, `timeout`, `ca_file`"],
    );
}

#[test]
fn a_bad_key_and_a_wrong_type_in_one_section_are_both_reported() {
    let yaml = minimal("  listn: 127.0.0.1:1\n  max_connections: many\n");
    let (code, _, stderr) = run_with("g.yaml", &yaml, &["check", "--config", "g.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    let lines = error_lines(&stderr);
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines[0].contains("server.listn (line 3): unknown field `listn`"),
        "{stderr}"
    );
    assert!(
        lines[1].starts_with("server.max_connections (line 4): invalid type"),
        "{stderr}"
    );
}

#[test]
fn a_bare_number_duration_gets_the_duration_hint() {
    let yaml = minimal("  header_read_timeout: 5\n");
    let (code, _, stderr) = run_with("g.yaml", &yaml, &["check", "--config", "g.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        error_lines(&stderr),
        ["error: server.header_read_timeout (line 3): \"5\" is not a duration (time unit needed, for example 5sec or 5ms); use e.g. 500ms, 30s, 15m, 20d"],
    );
}

#[test]
fn a_zero_header_read_timeout_is_refused_with_what_it_means() {
    let yaml = minimal("  header_read_timeout: 0s\n");
    let (code, _, stderr) = run_with("g.yaml", &yaml, &["check", "--config", "g.yaml"]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("server.header_read_timeout (line 3): must be more than 0s"),
        "{stderr}"
    );
}

#[test]
fn whole_file_errors_name_the_file_given() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, _, stderr) = portcullis(&["check", "--config", "nope.yaml"], dir.path());
    assert_eq!(code, 1);
    assert_eq!(
        error_lines(&stderr),
        ["error: nope.yaml: cannot read it: No such file or directory (os error 2)"]
    );
    let (code, _, stderr) = run_with(
        "broken.yaml",
        "server: [\n",
        &["check", "--config", "broken.yaml"],
    );
    assert_eq!(code, 1);
    assert!(
        stderr.starts_with("error: broken.yaml (line 2): not valid YAML"),
        "{stderr}"
    );
    assert!(!stderr.contains("gateway.yaml"), "{stderr}");
}

#[test]
fn a_missing_sqlite_directory_is_a_warning() {
    let yaml = minimal("").replace(
        "  store: memory\n",
        "  store: sqlite\n  sqlite_path: /nonexistent-portcullis-dir/r.db\n",
    );
    let (code, _, stderr) = run_with("g.yaml", &yaml, &["check", "--config", "g.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        error_lines(&stderr),
        ["warning: blocklist.sqlite_path (line 8): directory /nonexistent-portcullis-dir does not exist: the gateway will not start"]
    );
}

#[test]
fn a_listener_that_cannot_bind_names_its_key_and_one_port_twice_fails_check() {
    // A port taken by another process: exit 1, the address and the key.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").port();
    for (section, key) in [
        (format!("  listen: 127.0.0.1:{port}\n"), "server.listen"),
        (
            format!("admin:\n  listen: 127.0.0.1:{port}\n  token: admin-token-0123456789\n"),
            "admin.listen",
        ),
    ] {
        let yaml = if key == "server.listen" {
            minimal("").replace("  listen: 127.0.0.1:0\n", &section)
        } else {
            minimal("") + &section
        };
        let (code, _, stderr) = run_with("gateway.yaml", &yaml, &["run"]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!("cannot listen on 127.0.0.1:{port} ({key}): ")),
            "{stderr}"
        );
    }
    drop(taken);
    // The edge and the admin listener on one port: `check` says so, before `run` fails.
    for admin in ["127.0.0.1:18555", "0.0.0.0:18555"] {
        let yaml = minimal("").replace("127.0.0.1:0", "127.0.0.1:18555")
            + &format!("admin:\n  listen: {admin}\n  token: admin-token-0123456789\n");
        let (code, _, stderr) = run_with("gateway.yaml", &yaml, &["check"]);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(&format!(
                "admin.listen (line 15): {admin} is where server.listen (127.0.0.1:18555) listens; the two need different ports"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn a_sqlite_file_that_cannot_be_opened_says_why() {
    // SQLite itself says only "unable to open database file": the error adds what the
    // file system says (a missing directory, a file where a directory should be).
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("a-file"), "").expect("write");
    for (path, why) in [
        (
            "/nonexistent-portcullis-dir/r.db",
            "(/nonexistent-portcullis-dir: No such file or directory (os error 2))",
        ),
        ("a-file/r.db", "a-file: Not a directory (os error 20))"),
    ] {
        let yaml = minimal("").replace(
            "  store: memory\n",
            &format!("  store: sqlite\n  sqlite_path: {path}\n"),
        );
        std::fs::write(dir.path().join("g.yaml"), yaml).expect("write");
        for args in [
            &["run", "--config", "g.yaml"][..],
            &[
                "revoke",
                "--config",
                "g.yaml",
                "--jti",
                "j-1",
                "--exp",
                "1796119200",
            ],
        ] {
            let (code, _, stderr) = portcullis(args, dir.path());
            assert_eq!(code, 1, "{args:?}: {stderr}");
            let error = stderr
                .lines()
                .find(|l| l.starts_with("error: "))
                .unwrap_or_default();
            assert!(
                error.starts_with("error: revocation store: cannot open ") && error.ends_with(why),
                "{args:?}: {stderr}"
            );
        }
    }
}

#[test]
fn the_summary_speaks_the_config_files_words() {
    let yaml = minimal("")
        .replace("  secret:", "  token_location: [headers, cookies]\n  secret:")
        .replace(
            "    upstream: app\n",
            "    upstream: app\n    auth: access\n    fresh: true\n    require_claims: { role: admin }\n",
        );
    let (code, stdout, stderr) = run_with("g.yaml", &yaml, &["check", "--config", "g.yaml"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("  jwt       HS256 via headers, cookies\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("  blocklist memory (cache 1000000 entries, on_store_error deny)\n"),
        "{stdout}"
    );
    assert!(stdout.contains("  logout    /logout (POST)\n"), "{stdout}");
    assert!(
        stdout.contains(
            "  route     / -> app (auth access, fresh, require_claims role: \"admin\")\n"
        ),
        "{stdout}"
    );
}

#[test]
fn config_before_the_subcommand_and_the_implied_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("mine.yaml"), minimal("")).expect("write");
    let (code, stdout, stderr) = portcullis(&["--config", "mine.yaml", "check"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.starts_with("config mine.yaml is valid"), "{stdout}");

    // `portcullis --config F` runs the gateway on F: a bad F fails at start, naming the
    // key, and the fatal error is printed once.
    std::fs::write(
        dir.path().join("bad.yaml"),
        minimal("  header_read_timeout: 0s\n"),
    )
    .expect("write");
    let (code, _, stderr) = portcullis(&["--config", "bad.yaml"], dir.path());
    assert_eq!(code, 1, "{stderr}");
    let mentions = stderr.matches("server.header_read_timeout").count();
    assert_eq!(mentions, 1, "printed once:\n{stderr}");
}

fn token_in(dir: &Path, args: &[&str]) -> (i32, String, String) {
    std::fs::write(dir.join("g.yaml"), minimal("")).expect("write");
    let mut all = vec!["token", "--config", "g.yaml"];
    all.extend_from_slice(args);
    portcullis(&all, dir)
}

#[test]
fn token_refuses_a_zero_or_overlong_ttl_and_a_second_subject() {
    let dir = tempfile::tempdir().expect("tempdir");
    for ttl in ["0s", "500ms"] {
        let (code, _, stderr) = token_in(dir.path(), &["--sub", "alice", "--ttl", ttl]);
        assert_eq!(
            (code, stderr.trim()),
            (
                1,
                "error: --ttl must be at least 1s (a token's exp is in whole seconds)"
            )
        );
    }
    // A ttl that would wrap `now + ttl` into the past (an expired token, exit 0, before).
    for ttl in ["36501d", "584542046090y"] {
        let (code, _, stderr) = token_in(dir.path(), &["--sub", "alice", "--ttl", ttl]);
        assert_eq!(
            (code, stderr.trim()),
            (1, "error: --ttl must be at most 36500d")
        );
    }
    let (code, _, stderr) = token_in(dir.path(), &["--sub", "alice", "--ttl", "-5m"]);
    assert_eq!(code, 2, "a negative ttl is a usage error: {stderr}");
    let (code, _, stderr) = token_in(dir.path(), &["--sub", "alice", "--claim", "sub=bob"]);
    assert_eq!(
        (code, stderr.trim()),
        (1, "error: --claim \"sub=bob\": the subject is set by --sub")
    );
    let (code, stdout, stderr) = token_in(dir.path(), &["--sub", "alice", "--claim", "role=admin"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim().split('.').count(), 3, "{stdout}");
}

#[test]
fn revoke_says_what_it_revoked_in_words() {
    let dir = tempfile::tempdir().expect("tempdir");
    let yaml = minimal("").replace(
        "  store: memory\n",
        "  store: sqlite\n  sqlite_path: r.db\n",
    );
    std::fs::write(dir.path().join("g.yaml"), yaml).expect("write");
    let base = ["revoke", "--config", "g.yaml"];
    let with = |extra: &[&str]| {
        let mut args = base.to_vec();
        args.extend_from_slice(extra);
        portcullis(&args, dir.path())
    };
    let (code, stdout, stderr) = with(&["--jti", "dave-1", "--exp", "1796119200"]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout.trim(),
        "revoked jti dave-1 until 2026-12-01T10:00:00Z"
    );
    let (code, stdout, stderr) = with(&["--sub", "alice"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.starts_with("revoked every token of subject alice issued before 20"),
        "{stdout}"
    );
    let (code, _, stderr) = with(&["--token", "garbage"]);
    assert_eq!(
        (code, stderr.trim()),
        (
            1,
            "error: --token is not a JWT (expected three base64url parts)"
        )
    );
    // Empty names are refused, as the admin API and --file refuse them.
    for (flag, args) in [
        ("jti", &["--jti", "", "--exp", "1796119200"][..]),
        ("sub", &["--sub", ""][..]),
    ] {
        let (code, stdout, stderr) = with(args);
        assert_eq!(
            (code, stdout.as_str(), stderr.trim()),
            (1, "", format!("error: --{flag} must not be empty").as_str())
        );
    }
}

#[test]
fn check_signs_once_with_the_private_key_to_catch_a_wrong_curve_or_pair() {
    // Reading a PEM does not tell an EC key's curve, nor whether the private and public
    // files belong together: `check` passed both, and every token `portcullis token`
    // then printed failed (InvalidEcdsaKey, or 401 at the gateway).
    let keys = keys();
    let dir = tempfile::tempdir().expect("tempdir");
    for (name, pem) in [
        ("p256.key", &keys.p256.private),
        ("p256.pub", &keys.p256.public),
        ("p384.key", &keys.p384.private),
        ("p384.pub", &keys.p384.public),
    ] {
        std::fs::write(dir.path().join(name), pem).expect("write key");
    }
    let config = |algorithms: &str, private: &str, public: &str| {
        minimal("").replace(
            &format!("  algorithms: [HS256]\n  secret: {SECRET_ENV}\n"),
            &format!(
                "  algorithms: [{algorithms}]\n  private_key_file: {private}\n  public_key_file: {public}\n"
            ),
        )
    };
    let check = |yaml: String| {
        std::fs::write(dir.path().join("g.yaml"), yaml).expect("write config");
        portcullis(&["check", "--config", "g.yaml"], dir.path())
    };

    let (code, _, stderr) = check(config("ES384", "p256.key", "p256.pub"));
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(
        error_lines(&stderr),
        ["error: jwt.private_key_file (line 5): holds no private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC) that signs any algorithm in jwt.algorithms (an EC key signs only the ES* of its curve: ES256 P-256, ES384 P-384)"]
    );

    let (code, _, stderr) = check(config("ES256", "p256.key", "p384.pub"));
    assert_eq!(code, 1, "{stderr}");
    assert!(
        error_lines(&stderr).contains(&"error: jwt.private_key_file (line 5): is not the private half of jwt.public_key_file: tokens `portcullis token` signs would be refused"),
        "{stderr}"
    );

    // The right pair passes, with either curve listed first.
    for algorithms in ["ES256", "ES384, ES256"] {
        let (code, stdout, stderr) = check(config(algorithms, "p256.key", "p256.pub"));
        assert_eq!(code, 0, "{algorithms}: {stderr}");
        assert!(stdout.contains("is valid"), "{stdout}");
        let (code, token, stderr) =
            portcullis(&["token", "--config", "g.yaml", "--sub", "a"], dir.path());
        assert_eq!(code, 0, "{algorithms}: {stderr}");
        assert_eq!(token.trim().split('.').count(), 3, "{token}");
    }

    // The same P-256 key in SEC1 form (`BEGIN EC PRIVATE KEY`, what `openssl ecparam
    // -genkey` writes): read as well, not refused as "no private key".
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(keys.p256.private.as_bytes())
        .expect("PKCS#8 PEM");
    let pair = aws_lc_rs::signature::EcdsaKeyPair::from_pkcs8(
        &aws_lc_rs::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        pkcs8.secret_pkcs8_der(),
    )
    .expect("P-256 key");
    let sec1 = pair.private_key().as_der().expect("SEC1 DER");
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(sec1.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    let pem = format!(
        "-----BEGIN EC PRIVATE KEY-----\n{}\n-----END EC PRIVATE KEY-----\n",
        lines.join("\n")
    );
    std::fs::write(dir.path().join("sec1.key"), pem).expect("write key");
    let (code, _, stderr) = check(config("ES256", "sec1.key", "p256.pub"));
    assert_eq!(code, 0, "{stderr}");
    let (code, token, stderr) =
        portcullis(&["token", "--config", "g.yaml", "--sub", "a"], dir.path());
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(token.trim().split('.').count(), 3, "{token}");
}

#[test]
fn an_empty_portcullis_config_is_unset() {
    // `PORTCULLIS_CONFIG=` (a compose file's empty default) means gateway.yaml, not a
    // file named "".
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("gateway.yaml"), minimal("")).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .current_dir(dir.path())
        .env("PORTCULLIS_CONFIG", "")
        .output()
        .expect("run portcullis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("gateway.yaml"), "{stdout}");
}
