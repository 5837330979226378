//! What a reload changes: one diff of the old and new config trees (after `${VAR}`
//! expansion), as key paths, and which of those need a restart.
//!
//! Every key applies at reload (it is read from the swapped-in config, or rebuilt from
//! it for new connections) except those bound to something built once at start: the
//! listening sockets and the revocation store. [`needs_restart`] names them; the diff
//! decides what changed, so a new key can never be silently skipped by a reload.

use serde_yaml::Value;

/// The key paths whose values differ between `old` and `new` (`server.listen`,
/// `routes[2].upstream`, or a whole section that appeared or went away).
pub fn changed_keys(old: &Value, new: &Value) -> Vec<String> {
    let mut changed = Vec::new();
    walk(old, new, String::new(), &mut changed);
    changed
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_owned()
    } else {
        format!("{path}.{key}")
    }
}

fn walk(old: &Value, new: &Value, path: String, changed: &mut Vec<String>) {
    const ABSENT: Value = Value::Null;
    match (old, new) {
        // A section that appeared or went away counts key by key, so that adding
        // `admin:` reports `admin.listen` (a restart) apart from `admin.token`.
        (Value::Mapping(a), Value::Mapping(_) | Value::Null) | (Value::Null, Value::Mapping(a)) => {
            let b = match (old, new) {
                (Value::Mapping(_), Value::Mapping(b)) => Some(b),
                _ => None,
            };
            let flipped = matches!(old, Value::Null);
            for (key, value) in a {
                let other = b.and_then(|b| b.get(key)).unwrap_or(&ABSENT);
                let (x, y) = if flipped {
                    (other, value)
                } else {
                    (value, other)
                };
                walk(x, y, child(&path, &key_text(key)), changed);
            }
            for (key, value) in b.into_iter().flatten().filter(|(k, _)| !a.contains_key(*k)) {
                walk(&ABSENT, value, child(&path, &key_text(key)), changed);
            }
        }
        (Value::Sequence(a), Value::Sequence(b)) if a.len() == b.len() => {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                walk(x, y, format!("{path}[{i}]"), changed);
            }
        }
        (a, b) if a == b => {}
        _ => changed.push(path),
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_yaml::to_string(other)
            .map(|s| s.trim_end().to_owned())
            .unwrap_or_default(),
    }
}

/// Whether a change at `key` only takes effect after a restart: the listeners (and
/// whether there is an admin listener at all) and the revocation store with its
/// in-memory copy. `blocklist.on_store_error` is read per request, so it applies.
pub fn needs_restart(key: &str) -> bool {
    let under = |prefix: &str| {
        key == prefix
            || key
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('.') || rest.starts_with('['))
    };
    under("server.listen")
        || under("admin.listen")
        || (under("blocklist") && !under("blocklist.on_store_error"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn yaml(text: &str) -> Value {
        serde_yaml::from_str(text).unwrap()
    }

    #[test]
    fn lists_changed_key_paths() {
        let old = yaml("server: {listen: 1, max_connections: 2}\nroutes: [{prefix: /a}, {prefix: /b}]\nadmin: {listen: x, token: t}");
        let new = yaml("server: {listen: 1, max_connections: 3, idle_timeout: 5s}\nroutes: [{prefix: /a}, {prefix: /c}]");
        assert_eq!(
            changed_keys(&old, &new),
            vec![
                "server.max_connections",
                "server.idle_timeout",
                "routes[1].prefix",
                "admin.listen",
                "admin.token",
            ]
        );
        assert!(changed_keys(&old, &old).is_empty());
        let fewer = yaml("routes: [{prefix: /a}]");
        assert_eq!(changed_keys(&yaml("routes: []"), &fewer), vec!["routes"]);
    }

    #[test]
    fn restart_keys() {
        for key in [
            "server.listen",
            "admin.listen",
            "blocklist.store",
            "blocklist.sqlite_path",
            "blocklist.redis_sentinel.addresses[0]",
            "blocklist",
        ] {
            assert!(needs_restart(key), "{key}");
        }
        for key in [
            "server.max_connections",
            "server.listener_extra",
            "admin.token",
            "blocklist.on_store_error",
            "routes[0].prefix",
            "jwt.audience",
        ] {
            assert!(!needs_restart(key), "{key}");
        }
    }
}
