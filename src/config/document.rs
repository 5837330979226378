//! The document as a whole: `${VAR}` expansion of every string, the top-level keys, and
//! the order the sections are validated in (logout needs jwt, routes need upstreams,
//! forward_auth needs logout).

use super::checker::{key_name, Checker};
use super::{env, file, Config};
use serde_yaml::Value;
use std::path::Path;

/// Applies `${VAR}` expansion to every string value in the tree.
pub(super) fn expand_strings(
    value: &mut Value,
    path: String,
    env: &impl Fn(&str) -> Option<String>,
    cx: &mut Checker,
) {
    match value {
        Value::String(s) if s.contains('$') => match env::expand(s, env) {
            Ok(expanded) => *s = expanded,
            Err(message) => cx.error(&path, message),
        },
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                expand_strings(item, format!("{path}[{i}]"), env, cx);
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                let key = key_name(key);
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                expand_strings(item, child, env, cx);
            }
        }
        Value::Tagged(tagged) => expand_strings(&mut tagged.value, path, env, cx),
        // `admin:` or `timeout:` with nothing after it: read as absent, it turned a
        // section off or fell back to a default without a word, which is what the
        // rule on unknown keys guards against. A claim `require_claims` compares may
        // be null.
        Value::Null if !path.is_empty() && !path.contains(".require_claims.") => {
            cx.error(&path, "has no value: give it one, or leave the key out")
        }
        _ => {}
    }
}

impl Checker {
    /// Validates every section, in dependency order. `None` only when no [`Config`] can be
    /// built at all (not a mapping, no usable `jwt:`); otherwise the caller decides by
    /// `errors`, so that every section is checked even after an earlier one failed.
    pub(super) fn build(&mut self, root: &Value, source: &Path) -> Option<Config> {
        let Some(map) = root.as_mapping() else {
            self.error(
                "",
                "the top level must be a mapping of sections (server, jwt, routes, ...)",
            );
            return None;
        };
        for key in map.keys() {
            let name = key_name(key);
            if !file::SECTIONS.contains(&name.as_str()) {
                self.error(
                    &name,
                    format!("unknown key; expected one of {}", file::SECTIONS.join(", ")),
                );
            }
        }
        let server_file: Option<file::ServerFile> = self.section(map, "server");
        let server = self.server(server_file);
        let admin_file: Option<file::AdminFile> = self.section(map, "admin");
        let admin = admin_file.map(|a| self.admin(a, server.listen));
        let jwt_file: Option<file::JwtFile> = self.section(map, "jwt");
        let (jwt, default_provider) = self.jwt(jwt_file).unzip();
        let named = self.providers(map.get("providers"), default_provider.as_ref());
        let providers: Vec<_> = default_provider.into_iter().chain(named).collect();
        let blocklist_file: Option<file::BlocklistFile> = self.section(map, "blocklist");
        let blocklist = self.blocklist(blocklist_file);
        let logout_file: Option<file::LogoutFile> = self.section(map, "logout");
        let logout = self.logout(logout_file, jwt.as_ref(), &providers);
        let upstreams = self.upstreams(map.get("upstreams"));
        let routes = self.routes(map.get("routes"), &upstreams, &providers);
        let forward_file: Option<file::ForwardFile> = self.section(map, "forward");
        let forward = self.forward(forward_file);
        let forward_auth_file: Option<file::ForwardAuthFile> = self.section(map, "forward_auth");
        let forward_auth = forward_auth_file.map(|f| self.forward_auth(f, &logout));
        Some(Config {
            source: source.to_path_buf(),
            server,
            admin,
            jwt: jwt?,
            providers,
            blocklist,
            logout,
            upstreams,
            routes,
            forward,
            forward_auth,
            tree: root.clone(),
            warnings: Vec::new(),
        })
    }
}
