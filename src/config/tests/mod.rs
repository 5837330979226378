// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! Table tests of the config validators, run through the real [`parse`]: each row is one
//! error site, `(yaml, key path, line, message fragment)`, or one default of a valid file.
//!
//! A row's YAML comes first in the document, so its line numbers are the row's own; the
//! sections it leaves out are filled in from [`BASE`] after it (a `# without a, b`
//! comment keeps sections out, for the "section missing" errors). Relative paths resolve
//! against the crate root, so `Cargo.toml` is a file that exists but holds no PEM.

mod blocklist;
mod defaults;
mod document;
mod forward_auth;
mod jwt;
mod providers;
mod routes;
mod server;

use super::{parse, Config, ConfigErrors};
use std::collections::BTreeSet;
use std::path::Path;

/// `(yaml, key path, line, message fragment)`: `parse` must report an error at exactly
/// this key path and line whose message holds the fragment.
type Row = (&'static str, &'static str, Option<usize>, &'static str);

/// A minimal valid config, one section at a time.
const BASE: &[(&str, &str)] = &[
    ("jwt", "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n"),
    ("blocklist", "blocklist:\n  store: memory\n"),
    (
        "upstreams",
        "upstreams:\n  app:\n    url: http://127.0.0.1:9\n",
    ),
    ("routes", "routes:\n  - prefix: /\n    upstream: app\n"),
];

/// `yaml` followed by the [`BASE`] sections it neither has nor excludes.
fn document(yaml: &str) -> String {
    let mut text = yaml.to_owned();
    for (section, base) in BASE {
        let present = yaml.lines().any(|line| {
            line.strip_prefix(section)
                .is_some_and(|rest| rest.starts_with(':'))
        });
        let excluded = yaml
            .lines()
            .filter_map(|line| line.strip_prefix("# without "))
            .flat_map(|list| list.split([',', ' ']))
            .any(|name| name == *section);
        if !present && !excluded {
            text.push_str(base);
        }
    }
    text
}

/// The variables rows may expand: `EMPTY` is set to "", everything else is unset.
fn env(name: &str) -> Option<String> {
    (name == "EMPTY").then(String::new)
}

fn load(yaml: &str) -> Result<Config, ConfigErrors> {
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
    parse(&document(yaml), &source, env)
}

/// Runs every row, collecting all mismatches so one run shows every broken row.
fn check_rows(rows: &[Row]) {
    let mut failures = Vec::new();
    for &(yaml, path, line, fragment) in rows {
        let errors = match load(yaml) {
            Ok(_) => {
                failures.push(format!("{path}: accepted\n{}", document(yaml)));
                continue;
            }
            Err(errors) => errors.0,
        };
        // "" stands for the file itself: whole-file errors name the file they read.
        let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("gateway.yaml");
        let path = match path {
            "" => source.display().to_string(),
            path => path.to_owned(),
        };
        let at_path: Vec<_> = errors.iter().filter(|e| e.path == path).collect();
        match at_path.iter().find(|e| e.message.contains(fragment)) {
            Some(e) if e.line == line => {}
            Some(e) => failures.push(format!(
                "{path}: line {:?}, expected {line:?}\n{}",
                e.line,
                document(yaml)
            )),
            None => failures.push(format!(
                "{path}: no error holding {fragment:?}; got {errors:#?}\n{}",
                document(yaml)
            )),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Every table, for the checks that span them.
fn all_rows() -> Vec<Row> {
    [
        document::ROWS,
        server::ROWS,
        jwt::ROWS,
        providers::ROWS,
        blocklist::ROWS,
        routes::ROWS,
        forward_auth::ROWS,
    ]
    .concat()
}

#[test]
fn rows_are_distinct_and_many() {
    let rows = all_rows();
    let mut seen = BTreeSet::new();
    for (yaml, path, _, fragment) in &rows {
        assert!(
            seen.insert((*yaml, *path, *fragment)),
            "duplicate row {path} {fragment:?}"
        );
    }
    assert!(rows.len() + defaults::COUNT >= 60, "{} rows", rows.len());
}

#[test]
fn the_base_document_is_valid() {
    let config = load("").expect("BASE is a valid config");
    assert!(config.warnings.is_empty(), "{:?}", config.warnings);
}

#[test]
fn an_error_displays_its_key_path_and_line() {
    let errors = load("server:\n  max_connections: 0\n")
        .err()
        .expect("refused");
    assert_eq!(
        errors.to_string(),
        "server.max_connections (line 2): must be between 1 and 10000000"
    );
    let errors = load("- a\n# without jwt, blocklist, upstreams, routes\n")
        .err()
        .expect("refused");
    // A whole-file error names the file read (here CARGO_MANIFEST_DIR/gateway.yaml).
    assert!(
        errors.to_string().starts_with(&format!(
            "{}/gateway.yaml: the top level",
            env!("CARGO_MANIFEST_DIR")
        )),
        "{errors}"
    );
}

#[test]
fn a_broken_upstream_has_every_error_reported_and_is_still_defined() {
    // A bad `url` used to hide the upstream's other errors and make routes naming it
    // report it missing.
    let errors = load(
        "upstreams:\n  app:\n    url: ftp://127.0.0.1:9\n    connect_timeout: 2\n    timeout: forever\n    ca_file: nope.pem\n  b:\n    url: 5\n    timeout: y\n\
         routes:\n  - prefix: /\n    upstream: app\n  - prefix: /b\n    upstream: b\n",
    )
    .err()
    .expect("refused");
    let paths: Vec<&str> = errors.0.iter().map(|e| e.path.as_str()).collect();
    for path in [
        "upstreams.app.url",
        "upstreams.app.connect_timeout",
        "upstreams.app.timeout",
        "upstreams.app.ca_file",
        "upstreams.b.url",
    ] {
        assert!(paths.contains(&path), "{path} not in {errors}");
    }
    assert!(
        !paths.iter().any(|p| p.starts_with("routes")),
        "routes name defined upstreams: {errors}"
    );
}

#[test]
fn a_missing_tls_file_is_reported_once() {
    // Only "required": not also "file  does not exist" for the empty name.
    let errors = load("server:\n  tls:\n    key_file: Cargo.toml\n")
        .err()
        .expect("refused");
    let at_cert: Vec<_> = errors
        .0
        .iter()
        .filter(|e| e.path == "server.tls.cert_file")
        .map(|e| e.message.as_str())
        .collect();
    assert_eq!(at_cert, ["required when server.tls is set"], "{errors}");
}

#[test]
fn the_contracts_forward_auth_example_loads_as_written() {
    // `[127.0.0.1/32, ::1/128]` is YAML 1.2; libyaml alone refuses it.
    let config = load(
        "forward_auth:                     # optional\n  path: /_portcullis/auth\n  trusted_proxies: [127.0.0.1/32, ::1/128]   # only these peers may call it (CIDRs)\n",
    )
    .expect("loads");
    let fa = config.forward_auth.expect("forward_auth");
    let cidrs: Vec<String> = fa
        .trusted_proxies
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    assert_eq!(cidrs.len(), 2, "{cidrs:?}");
    assert!(cidrs[1].contains("::1"), "{cidrs:?}");
    // A file that is broken elsewhere still reports its own error and line.
    let errors =
        load("forward_auth:\n  path: /_portcullis/auth\n  trusted_proxies: [::1/128]\nserver: [\n")
            .err()
            .expect("refused");
    assert!(errors.to_string().contains("not valid YAML"), "{errors}");
}

#[test]
fn a_number_past_64_bits_is_too_large_not_invalid_yaml() {
    for (text, line) in [
        ("server:\n  max_connections: 99999999999999999999\n", 2),
        (
            "blocklist:\n  store: memory\n  cache_max_entries: -99999999999999999999\n",
            3,
        ),
    ] {
        let errors = load(text).err().expect("refused").to_string();
        let key = if line == 2 {
            "server.max_connections"
        } else {
            "blocklist.cache_max_entries"
        };
        assert!(
            errors.contains(&format!("(line {line}): {key}: "))
                && errors.ends_with("9 is too large a number"),
            "{errors}"
        );
    }
}
