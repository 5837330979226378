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

// ---------------------------------------------------------------------------
// The container image and compose.yaml, checked without Docker
// ---------------------------------------------------------------------------

fn read(path: &str) -> String {
    std::fs::read_to_string(repo().join(path)).unwrap_or_else(|e| panic!("read {path}: {e}"))
}

fn yaml(path: &str) -> serde_yaml::Value {
    let mut value: serde_yaml::Value = serde_yaml::from_str(&read(path))
        .unwrap_or_else(|e| panic!("{path} is not valid YAML: {e}"));
    value
        .apply_merge()
        .unwrap_or_else(|e| panic!("{path}: bad merge key: {e}"));
    value
}

fn at<'a>(value: &'a serde_yaml::Value, path: &str) -> &'a serde_yaml::Value {
    path.split('.').fold(value, |v, key| &v[key])
}

fn string_at(value: &serde_yaml::Value, path: &str) -> String {
    at(value, path)
        .as_str()
        .unwrap_or_else(|| panic!("{path} is not a string: {:?}", at(value, path)))
        .to_owned()
}

/// The arguments of the Dockerfile instruction `name` (e.g. every `VOLUME`).
fn dockerfile_instructions(dockerfile: &str, name: &str) -> Vec<String> {
    dockerfile
        .lines()
        .filter_map(|l| l.trim().strip_prefix(name))
        .filter(|rest| rest.starts_with(' '))
        .map(|rest| rest.trim().to_owned())
        .collect()
}

/// Runs `portcullis check` on `config` with exactly `env` (no other variables a config
/// could reference).
fn check_with_env(config: &Path, env: &[(String, String)]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .arg("check")
        .arg("--config")
        .arg(config)
        .current_dir(repo())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .output()
        .expect("run portcullis check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The variables a `docker run` example passes with `-e NAME=...`.
fn docker_run_env(text: &str) -> BTreeSet<String> {
    let start = text.find("docker run").expect("no `docker run` example");
    let command = &text[start..];
    // The command ends at the first line that does not continue with `\`.
    let end = command
        .lines()
        .scan(true, |more, line| {
            let take = *more;
            *more = line.trim_end().ends_with('\\');
            take.then_some(line.len() + 1)
        })
        .sum::<usize>()
        .min(command.len());
    command[..end]
        .split_whitespace()
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "-e")
        .map(|w| w[1].split('=').next().unwrap().to_owned())
        .collect()
}

#[test]
fn the_images_dependency_layer_has_a_stand_in_for_every_bench() {
    // Cargo reads every target of the manifest: a [[bench]] without its file fails the
    // dependency layer's build, and with it the image's.
    let manifest = read("Cargo.toml");
    let mut benches = Vec::new();
    let mut in_bench = false;
    for line in manifest.lines() {
        if line.starts_with('[') {
            in_bench = line == "[[bench]]";
        } else if let Some(name) = line.strip_prefix("name = ").filter(|_| in_bench) {
            benches.push(name.trim_matches('"').to_owned());
        }
    }
    assert!(benches.len() >= 5, "{benches:?}");
    let dockerfile = read("Dockerfile");
    let stand_ins = dockerfile
        .lines()
        .find_map(|l| l.split("for b in ").nth(1))
        .and_then(|rest| rest.split(';').next())
        .expect("the Dockerfile's stand-in loop");
    let stand_ins: Vec<&str> = stand_ins.split_whitespace().collect();
    for bench in &benches {
        assert!(
            stand_ins.contains(&bench.as_str()),
            "bench {bench} has no stand-in in the Dockerfile: {stand_ins:?}"
        );
    }
}

#[test]
fn the_image_runs_examples_container_yaml_as_shipped() {
    let dockerfile = read("Dockerfile");
    let config = yaml("examples/container.yaml");

    // The Dockerfile installs it where PORTCULLIS_CONFIG points.
    let env = dockerfile_instructions(&dockerfile, "ENV");
    let config_path = env
        .iter()
        .find_map(|e| e.strip_prefix("PORTCULLIS_CONFIG="))
        .expect("the Dockerfile sets no PORTCULLIS_CONFIG");
    assert!(
        dockerfile_instructions(&dockerfile, "COPY")
            .iter()
            .any(|c| c == &format!("examples/container.yaml {config_path}")),
        "the Dockerfile does not COPY examples/container.yaml to {config_path}"
    );

    // Reachable from outside the container, on the ports the image exposes.
    let expose: Vec<String> = dockerfile_instructions(&dockerfile, "EXPOSE")
        .iter()
        .flat_map(|e| e.split_whitespace().map(str::to_owned).collect::<Vec<_>>())
        .collect();
    for key in ["server.listen", "admin.listen"] {
        let listen = string_at(&config, key);
        let (host, port) = listen.rsplit_once(':').unwrap();
        assert_eq!(
            host, "0.0.0.0",
            "{key} must listen on every interface of the container"
        );
        assert!(
            expose.iter().any(|p| p == port),
            "{key} port {port} is not in EXPOSE {expose:?}"
        );
    }

    // The HEALTHCHECK asks the admin listener, whose token comes from the environment.
    assert!(
        dockerfile_instructions(&dockerfile, "HEALTHCHECK")
            .iter()
            .any(|h| h.contains("\"probe\"")),
        "no `portcullis probe` HEALTHCHECK"
    );
    assert_eq!(
        string_at(&config, "admin.token"),
        "${PORTCULLIS_ADMIN_TOKEN}"
    );

    // Revocations survive a restart: the SQLite file is on a declared volume.
    assert_eq!(string_at(&config, "blocklist.store"), "sqlite");
    let sqlite_path = string_at(&config, "blocklist.sqlite_path");
    let volumes = dockerfile_instructions(&dockerfile, "VOLUME");
    assert!(
        volumes
            .iter()
            .any(|v| Path::new(&sqlite_path).starts_with(v.trim_matches(['[', ']', '"']))),
        "blocklist.sqlite_path {sqlite_path} is on no VOLUME ({volumes:?})"
    );
    assert!(
        dockerfile.contains("strip target/release/portcullis"),
        "the image's binary is not stripped"
    );

    // The README's and the Dockerfile's `docker run` pass every variable it needs, and
    // with exactly those set it passes `check`.
    let needed = required_vars(&read("examples/container.yaml"));
    for (what, text) in [("README.md", read("README.md")), ("Dockerfile", dockerfile)] {
        let passed = docker_run_env(&text);
        let missing: Vec<&String> = needed.difference(&passed).collect();
        assert!(
            missing.is_empty(),
            "{what}'s `docker run` does not pass {missing:?}"
        );
        let text_run = &text[text.find("docker run").unwrap()..];
        assert!(
            text_run.contains(":/var/lib/portcullis"),
            "{what}'s `docker run` mounts no volume on /var/lib/portcullis"
        );
    }
    let env: Vec<(String, String)> = needed.iter().map(|v| (v.clone(), value_for(v))).collect();
    let (code, stdout, stderr) = check_with_env(&repo().join("examples/container.yaml"), &env);
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
}

/// Compose's own `${NAME:-default}` interpolation, with nothing set in the environment.
fn compose_interpolate(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("unclosed ${") + start;
        let inner = &rest[start + 2..end];
        let (_, default) = inner
            .split_once(":-")
            .unwrap_or_else(|| panic!("compose.yaml: ${{{inner}}} has no default"));
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out + rest
}

#[test]
fn compose_yaml_scales_out_with_redis_and_configs_that_exist() {
    let compose = yaml("compose.yaml");
    let services = compose["services"]
        .as_mapping()
        .expect("compose.yaml has no services");
    let names: Vec<String> = services
        .keys()
        .map(|k| k.as_str().unwrap().to_owned())
        .collect();
    for required in ["redis", "demo"] {
        assert!(
            names.iter().any(|n| n == required),
            "no `{required}` service in {names:?}"
        );
    }

    let mut gateways = 0;
    for (name, service) in services {
        let name = name.as_str().unwrap();
        let environment: Vec<(String, String)> = service["environment"]
            .as_mapping()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().unwrap().to_owned(),
                            compose_interpolate(v.as_str().unwrap_or_default()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let mut mounted = Vec::new();
        for volume in service["volumes"].as_sequence().into_iter().flatten() {
            let volume = volume.as_str().expect("short volume syntax");
            let (source, target) = volume.split_once(':').unwrap();
            let target = target.split(':').next().unwrap();
            if source.starts_with("./") {
                let path = repo().join(source);
                assert!(
                    path.exists(),
                    "service {name} mounts {source}, which does not exist"
                );
                mounted.push((path, target.to_owned()));
            }
        }
        if service["image"].as_str() != Some("portcullis") {
            continue;
        }
        // A portcullis service: the config it reads is mounted, and passes `check` with
        // the service's own environment.
        let config_path = environment
            .iter()
            .find(|(k, _)| k == "PORTCULLIS_CONFIG")
            .map_or("/etc/portcullis/gateway.yaml", |(_, v)| v.as_str());
        let (config, _) = mounted
            .iter()
            .find(|(_, target)| target == config_path)
            .unwrap_or_else(|| {
                panic!("service {name} reads {config_path}, which it does not mount")
            });
        let (code, stdout, stderr) = check_with_env(config, &environment);
        assert_eq!(
            code,
            0,
            "service {name}: {}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            config.display()
        );
        let parsed: serde_yaml::Value =
            serde_yaml::from_str(&std::fs::read_to_string(config).unwrap()).unwrap();
        if name == "demo" {
            assert_eq!(service["command"][0].as_str(), Some("demo"));
            continue;
        }
        // A replica: shares the `redis` service, and forwards to the `demo` service.
        gateways += 1;
        assert_eq!(
            string_at(&parsed, "blocklist.store"),
            "redis",
            "service {name}"
        );
        let redis_url = string_at(&parsed, "blocklist.redis_url");
        assert!(
            redis_url.starts_with("redis://redis:"),
            "service {name}: {redis_url}"
        );
        let upstreams = parsed["upstreams"].as_mapping().unwrap();
        assert!(
            upstreams.values().any(|u| u["url"]
                .as_str()
                .is_some_and(|url| url.starts_with("http://demo:"))),
            "service {name} does not forward to the demo service"
        );
    }
    assert!(
        gateways >= 2,
        "compose.yaml runs {gateways} portcullis replicas, not 2"
    );
}
