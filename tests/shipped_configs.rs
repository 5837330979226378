//! Every config file the repository ships (`gateway.yaml` at the root, and any
//! `*.yaml`/`*.yml` under `examples/`) passes `portcullis check`: a user who copies
//! one must get a valid starting point.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The shipped configs: the root `gateway.yaml` (required) and every YAML file under
/// `examples/` (recursively, when that directory exists).
fn shipped_configs() -> Vec<PathBuf> {
    let root = repo().join("gateway.yaml");
    assert!(root.is_file(), "the repository ships no gateway.yaml");
    let mut configs = vec![root];
    let mut dirs = vec![repo().join("examples")];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                dirs.push(path);
            } else if matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml")
            ) {
                configs.push(path);
            }
        }
    }
    configs
}

/// The `${NAME}` references (without a `:-default`) in a config's text.
fn required_vars(text: &str) -> BTreeSet<String> {
    let mut vars = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        rest = &rest[start + 2..];
        let Some(end) = rest.find('}') else { break };
        let inner = &rest[..end];
        if !inner.contains(":-") {
            vars.insert(inner.trim().to_string());
        }
        rest = &rest[end + 1..];
    }
    vars
}

/// A plausible value for an environment variable a config needs.
fn value_for(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.contains("REDIS") && upper.contains("URL") {
        "redis://127.0.0.1:6379/0".into()
    } else if upper.contains("URL") {
        "http://127.0.0.1:8001".into()
    } else {
        // Long enough for secrets and admin tokens (≥ 16 chars).
        "shipped-config-test-value-0123456789".into()
    }
}

fn check(config: &Path) -> (i32, String, String) {
    let text = std::fs::read_to_string(config).expect("read config");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    cmd.arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(config.parent().unwrap())
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("RUST_LOG")
        .env("NO_COLOR", "1")
        .env("JWT_SECRET_KEY", value_for("JWT_SECRET_KEY"))
        .stdin(Stdio::null());
    for var in required_vars(&text) {
        cmd.env(&var, value_for(&var));
    }
    let out = cmd.output().expect("run portcullis check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn every_shipped_config_passes_check() {
    let configs = shipped_configs();
    let mut failures = Vec::new();
    for config in &configs {
        let (code, stdout, stderr) = check(config);
        if code != 0 || stdout.trim().is_empty() {
            failures.push(format!(
                "{}: exit {code}\nstdout:\n{stdout}\nstderr:\n{stderr}",
                config.display()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} shipped configs fail `portcullis check`:\n{}",
        failures.len(),
        configs.len(),
        failures.join("\n")
    );
}

#[test]
fn the_shipped_gateway_yaml_needs_jwt_secret_key() {
    // Without the variable it references, `check` must fail (exit 1) naming it,
    // rather than run with an empty secret.
    let config = repo().join("gateway.yaml");
    let text = std::fs::read_to_string(&config).unwrap();
    if !required_vars(&text).contains("JWT_SECRET_KEY") {
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(&config)
        .current_dir(repo())
        .env_remove("PORTCULLIS_CONFIG")
        .env_remove("JWT_SECRET_KEY")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("JWT_SECRET_KEY"), "{stderr}");
}
