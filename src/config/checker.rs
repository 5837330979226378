//! The validation context every section validator writes to, and the leaf checks they
//! share (durations, addresses, header names, methods, files, paths). Errors are
//! collected, never returned early, so one run of `check` shows every problem.

use super::lines::LineIndex;
use super::{file, ConfigError};
use http::{HeaderName, Method};
use serde::de::DeserializeOwned;
use serde_yaml::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

/// Collects errors while turning the raw tree into a [`super::Config`].
pub(super) struct Checker {
    lines: LineIndex,
    pub(super) errors: Vec<ConfigError>,
    pub(super) warnings: Vec<ConfigError>,
    base_dir: PathBuf,
}

impl Checker {
    /// A checker for `text`, resolving relative file paths against `base_dir` (the
    /// config file's directory).
    pub(super) fn new(text: &str, base_dir: PathBuf) -> Checker {
        Checker {
            lines: LineIndex::new(text),
            errors: Vec::new(),
            warnings: Vec::new(),
            base_dir,
        }
    }

    pub(super) fn error(&mut self, path: &str, message: impl Into<String>) {
        self.errors.push(ConfigError {
            path: path.to_owned(),
            line: self.lines.line(path),
            message: message.into(),
        });
    }

    pub(super) fn warning(&mut self, path: &str, message: impl Into<String>) {
        self.warnings.push(ConfigError {
            path: path.to_owned(),
            line: self.lines.line(path),
            message: message.into(),
        });
    }

    /// Deserializes `value` as `T`, reporting a failure under `path` (plus the inner path).
    /// Deserializes `value` (at key path `path`) into a file struct. Every bad key is
    /// reported, not only the first: the key an error names is dropped and the rest is
    /// read again, so a typo (`timout: 30s`) and a wrong type in the same section are
    /// both reported, and the entry is still returned, as if the bad keys were absent,
    /// for the checks that depend on it (a route naming that upstream). `None` only when
    /// the value itself has the wrong shape.
    pub(super) fn typed<T: DeserializeOwned>(&mut self, value: &Value, path: &str) -> Option<T> {
        /// More bad keys than any real section has: a bound, not a limit anyone meets.
        const MAX_ERRORS: usize = 64;
        let mut value = value.clone();
        for _ in 0..MAX_ERRORS {
            let error = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
                Ok(t) => return Some(t),
                Err(e) => e,
            };
            let segments: Vec<String> = error
                .path()
                .iter()
                .map(|segment| match segment {
                    serde_path_to_error::Segment::Map { key } => key.clone(),
                    other => other.to_string(),
                })
                .collect();
            let inner = error.path().to_string();
            let full = match inner.as_str() {
                "." | "" => path.to_owned(),
                inner if inner.starts_with('[') => format!("{path}{inner}"),
                inner => format!("{path}.{inner}"),
            };
            self.error(&full, in_yaml_words(&error.into_inner().to_string()));
            if !remove_at(&mut value, &segments) {
                return None;
            }
        }
        None
    }

    pub(super) fn path_of(&self, raw: &str) -> PathBuf {
        let p = Path::new(raw);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base_dir.join(p)
        }
    }

    pub(super) fn duration(
        &mut self,
        raw: Option<&str>,
        path: &str,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        match humantime::parse_duration(raw.trim()) {
            // A deadline this far ahead overflows the clock's arithmetic (`Instant + d`
            // panics past ~2^63 s); a century stands for "never" well enough.
            Ok(d) if d > MAX_DURATION => {
                self.error(path, format!("{raw:?} is too long: at most 36500d"));
                default
            }
            Ok(d) => d,
            Err(e) => {
                self.error(
                    path,
                    format!("{raw:?} is not a duration ({e}); use e.g. 500ms, 30s, 15m, 20d"),
                );
                default
            }
        }
    }

    /// A size in bytes: a YAML number, or a string of digits with an optional binary
    /// unit (`B`, `KiB`, `MiB`, `GiB`; spaces allowed before it).
    pub(super) fn size(&mut self, raw: Option<&Value>, path: &str, default: u64) -> u64 {
        let parsed = match raw {
            None => return default,
            Some(Value::Number(n)) => n
                .as_u64()
                .ok_or_else(|| format!("{n} is not a whole, non-negative number of bytes")),
            Some(Value::String(s)) => parse_size(s).ok_or_else(|| {
                format!("{s:?} is not a size; use a number of bytes or e.g. 512KiB, 64MiB, 1GiB")
            }),
            Some(_) => Err("must be a number of bytes or a size like 64MiB".to_owned()),
        };
        parsed.unwrap_or_else(|message| {
            self.error(path, message);
            default
        })
    }

    pub(super) fn socket_addr(
        &mut self,
        raw: Option<&str>,
        path: &str,
        default: &str,
    ) -> SocketAddr {
        let raw = raw.unwrap_or(default);
        if let Ok(a) = raw.parse::<SocketAddr>() {
            return a;
        }
        // `localhost:8000` is 127.0.0.1:8000 (no lookup: other names would wait on DNS).
        let localhost = raw
            .strip_prefix("localhost:")
            .and_then(|port| port.parse::<u16>().ok())
            .map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        match localhost {
            Some(a) => a,
            None => {
                self.error(
                    path,
                    format!("{raw:?} is not an address; use ip:port, e.g. 0.0.0.0:8000 or localhost:8000"),
                );
                SocketAddr::from(([127, 0, 0, 1], 0))
            }
        }
    }

    pub(super) fn header_name(&mut self, raw: &str, path: &str) -> Option<HeaderName> {
        match HeaderName::from_str(raw) {
            Ok(h) => Some(h),
            Err(_) => {
                self.error(path, format!("{raw:?} is not a valid header name"));
                None
            }
        }
    }

    pub(super) fn methods(
        &mut self,
        raw: Option<file::OneOrMany>,
        path: &str,
        default: &[&str],
    ) -> Vec<Method> {
        let raw = raw
            .map(file::OneOrMany::into_vec)
            .unwrap_or_else(|| default.iter().map(|s| s.to_string()).collect());
        let mut out = Vec::new();
        for (i, m) in raw.iter().enumerate() {
            match Method::from_bytes(m.trim().to_ascii_uppercase().as_bytes()) {
                Ok(method) => out.push(method),
                Err(_) => self.error(
                    &format!("{path}[{i}]"),
                    format!("{m:?} is not an HTTP method"),
                ),
            }
        }
        // An empty list would turn the check (or the logout) off without a word; the
        // way to say so is the section's own switch, or leaving the key out.
        if raw.is_empty() {
            self.error(path, "is empty: list at least one method");
        }
        out
    }

    pub(super) fn file_exists(&mut self, raw: &str, path: &str) -> PathBuf {
        let resolved = self.path_of(raw);
        if resolved.is_dir() {
            self.error(
                path,
                format!("{} is a directory, not a file", resolved.display()),
            );
        } else if !resolved.is_file() {
            self.error(path, format!("file {} does not exist", resolved.display()));
        }
        resolved
    }

    pub(super) fn section<T: DeserializeOwned>(
        &mut self,
        root: &serde_yaml::Mapping,
        name: &str,
    ) -> Option<T> {
        match root.get(name) {
            None | Some(Value::Null) => None,
            Some(v) => self.typed(v, name),
        }
    }

    pub(super) fn absolute_path(&mut self, path: &str, key: &str) {
        match crate::path::normalize(path) {
            Ok(n) if n == path => {}
            // Requests' raw UTF-8 is escaped before matching: say how to write it.
            Ok(n) if !path.is_ascii() => self.error(
                key,
                format!(
                    "{path:?} must be written as requests are matched: {n:?} (non-ASCII escaped)"
                ),
            ),
            _ => self.error(
                key,
                format!("{path:?} must be an absolute, normalized path such as /logout"),
            ),
        }
    }
}

/// A mapping key as text (YAML keys need not be strings).
pub(super) fn key_name(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim().to_owned())
            .unwrap_or_default(),
    }
}

/// Removes the mapping entry at `segments` (keys; `[i]` for sequence items) from
/// `value`. False when there is none to remove (the path is empty or not a mapping key).
fn remove_at(value: &mut Value, segments: &[String]) -> bool {
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut node = value;
    for segment in parents {
        let next = match segment
            .strip_prefix('[')
            .and_then(|s| s.strip_suffix(']'))
            .and_then(|i| i.parse::<usize>().ok())
        {
            Some(index) => node.get_mut(index),
            None => node.get_mut(segment.as_str()),
        };
        match next {
            Some(next) => node = next,
            None => return false,
        }
    }
    match node.as_mapping_mut() {
        Some(map) => map.remove(last.as_str()).is_some(),
        None => false,
    }
}

/// `64MiB` -> 67108864: digits, optional spaces, an optional binary unit. Decimal units
/// (`MB`) are refused rather than guessed: 64MB and 64MiB differ by 5%.
pub(super) fn parse_size(raw: &str) -> Option<u64> {
    let raw = raw.trim();
    let digits = raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len());
    let (number, unit) = raw.split_at(digits);
    let number: u64 = number.parse().ok()?;
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "KiB" => 10,
        "MiB" => 20,
        "GiB" => 30,
        _ => return None,
    };
    number.checked_mul(1 << shift)
}

/// serde's message with Rust's number types said in the config's words.
/// The longest duration any key takes: a hundred years.
pub const MAX_DURATION: Duration = Duration::from_secs(36_500 * 86_400);

fn in_yaml_words(message: &str) -> String {
    let mut message = message.to_owned();
    for (rust, yaml) in [
        ("expected u64", "expected a whole number (0 or more)"),
        ("expected u32", "expected a whole number (0 or more)"),
        ("expected u16", "expected a whole number (0 to 65535)"),
        ("expected usize", "expected a whole number (0 or more)"),
        ("expected i64", "expected a whole number"),
        ("expected f64", "expected a number"),
    ] {
        if message.ends_with(rust) {
            message.truncate(message.len() - rust.len());
            message.push_str(yaml);
        }
    }
    message
}
