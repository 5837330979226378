//! `gateway.yaml`: loading, environment expansion and validation.
//!
//! Two layers, as in sozu: [`file`] is what serde reads; [`Config`] is the validated,
//! typed value the gateway runs on (durations, algorithms, keys, URIs and routes parsed
//! here, never on the request path). Every error carries the key path and line, and
//! all of them are collected before failing.

// What serde reads, and the tools around it.
pub mod diff;
pub mod env;
pub mod file;
pub mod limits;
pub mod lines;
pub mod provider;
mod redact;

// The validated model and its errors.
mod error;
mod model;

// Validation: the shared context, the document pass, then one validator per section.
mod admin;
mod blocklist;
mod checker;
mod document;
mod flow_colons;
mod forward;
mod forward_auth;
mod jwt;
mod logout;
mod providers;
mod routes;
mod server;
mod upstreams;

// What `check` prints.
mod summary;

#[cfg(test)]
mod tests;

pub use checker::MAX_DURATION;
pub use error::{ConfigError, ConfigErrors};
pub use model::{
    AdminConfig, AuthMode, BackchannelRevokes, BlocklistConfig, Config, CsrfConfig,
    ForwardAuthConfig, ForwardConfig, JwtConfig, LogoutConfig, OnStoreError, ProviderConfig,
    RedisSentinelConfig, RouteConfig, ServerConfig, StoreKind, TlsFiles, TokenLocation,
    UpstreamConfig, DEFAULT_PROVIDER,
};
pub use redact::redact_url;

use checker::Checker;
use serde_yaml::Value;
use std::path::{Path, PathBuf};

/// Resolves the config path: the flag, else `$PORTCULLIS_CONFIG`, else `gateway.yaml`.
pub fn resolve_path(flag: Option<PathBuf>) -> PathBuf {
    // An empty `PORTCULLIS_CONFIG=` is unset, as `${NAME:-default}` reads it.
    flag.or_else(|| {
        std::env::var_os("PORTCULLIS_CONFIG")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from("gateway.yaml"))
}

/// Reads, expands and validates the config file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            // Whole-file errors name the file given (`--config`), whatever it is called.
            path: path.display().to_string(),
            line: None,
            message: format!("cannot read it: {e}"),
        }])
    })?;
    parse(&text, path, |name| std::env::var(name).ok())
}

/// Validates config `text` that was read from `source`, expanding variables with `env`.
pub fn parse(
    text: &str,
    source: &Path,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    // A byte order mark (Windows editors write one) is not part of the document; left
    // in, libyaml read it as the start of a second one.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    // Before anything else reads the text: alias bombs and deep nesting cost far more
    // than their size in serde_yaml (and libyaml), see `limits`.
    if let Err(refused) = limits::check(text) {
        return Err(ConfigErrors(vec![ConfigError {
            path: source.display().to_string(),
            line: Some(refused.line),
            message: refused.message,
        }]));
    }
    let base_dir = source.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut cx = Checker::new(text, base_dir);
    // YAML 1.2's `[127.0.0.1/32, ::1/128]` (see `flow_colons`) is read on a second try.
    let parsed = serde_yaml::from_str(text).or_else(|e| {
        flow_colons::quote_flow_colons(text)
            .and_then(|quoted| serde_yaml::from_str(&quoted).ok())
            .ok_or(e)
    });
    let mut root: Value = match parsed {
        Ok(Value::Null) => Value::Mapping(Default::default()),
        Ok(v) => v,
        Err(e) => {
            return Err(ConfigErrors(vec![ConfigError {
                path: source.display().to_string(),
                line: e.location().map(|l| l.line()),
                message: yaml_error_message(&e),
            }]))
        }
    };
    document::expand_strings(&mut root, String::new(), &env, &mut cx);
    let config = cx.build(&root, source);
    match config {
        Some(mut config) if cx.errors.is_empty() => {
            config.warnings = std::mem::take(&mut cx.warnings);
            Ok(config)
        }
        _ => {
            // Errors about the file as a whole name it, whatever it is called.
            let mut errors = cx.errors;
            for e in errors.iter_mut().filter(|e| e.path.is_empty()) {
                e.path = source.display().to_string();
            }
            Err(ConfigErrors(errors))
        }
    }
}

/// serde_yaml's parse error in the config's words. A whole number past 64 bits is
/// valid YAML that serde_yaml cannot hold; it says "invalid type: integer `N` as u128,
/// expected any YAML value", which reads as if the file were broken.
fn yaml_error_message(e: &serde_yaml::Error) -> String {
    let text = e.to_string();
    let too_large = text.find("invalid type: integer `").and_then(|at| {
        let rest = &text[at + "invalid type: integer `".len()..];
        let (number, tail) = rest.split_once('`')?;
        (tail.starts_with(" as u128") || tail.starts_with(" as i128")).then(|| {
            // "server.max_connections: " comes before it when serde_yaml knows the key.
            let key = text[..at].trim_end_matches(": ");
            let key = if key.is_empty() {
                String::new()
            } else {
                format!("{key}: ")
            };
            format!("{key}{number} is too large a number")
        })
    });
    too_large.unwrap_or_else(|| format!("not valid YAML: {text}"))
}
