//! `routes:`: path prefixes, the upstream each goes to and what it asks of the caller.

use super::checker::Checker;
use super::{file, AuthMode, ProviderConfig, RouteConfig, UpstreamConfig, DEFAULT_PROVIDER};
use serde_yaml::Value;

impl Checker {
    pub(super) fn routes(
        &mut self,
        raw: Option<&Value>,
        upstreams: &[UpstreamConfig],
        providers: &[ProviderConfig],
    ) -> Vec<RouteConfig> {
        let mut out = Vec::new();
        let Some(raw) = raw else {
            self.error("routes", "at least one route is required");
            return out;
        };
        if raw.as_sequence().is_some_and(|items| items.is_empty()) {
            self.error("routes", "at least one route is required");
        }
        let Some(items) = raw.as_sequence() else {
            self.error("routes", "must be a list of { prefix, upstream, auth }");
            return out;
        };
        for (i, item) in items.iter().enumerate() {
            let path = format!("routes[{i}]");
            let Some(f) = self.typed::<file::RouteFile>(item, &path) else {
                continue;
            };
            let prefix = f.prefix.unwrap_or_default();
            if prefix.is_empty() {
                self.error(&format!("{path}.prefix"), "required, e.g. /api");
            } else {
                self.absolute_path(&prefix, &format!("{path}.prefix"));
            }
            let upstream = match f.upstream.as_deref() {
                None => {
                    self.error(&format!("{path}.upstream"), "required");
                    None
                }
                Some(name) => match upstreams.iter().position(|u| u.name == name) {
                    Some(index) => Some(index),
                    None => {
                        let known: Vec<&str> = upstreams.iter().map(|u| u.name.as_str()).collect();
                        self.error(
                            &format!("{path}.upstream"),
                            format!("no upstream named {name:?} (defined: {})", known.join(", ")),
                        );
                        None
                    }
                },
            };
            let auth = match f.auth.as_deref().unwrap_or("access") {
                "none" => AuthMode::None,
                "access" => AuthMode::Access,
                "refresh" => AuthMode::Refresh,
                "any" => AuthMode::Any,
                other => {
                    self.error(
                        &format!("{path}.auth"),
                        format!("{other:?}: use none, access, refresh or any"),
                    );
                    AuthMode::Access
                }
            };
            let fresh = f.fresh.unwrap_or(false);
            let mut require_claims = Vec::new();
            for (claim, value) in f.require_claims.unwrap_or_default() {
                match serde_json::to_value(&value) {
                    Ok(v) => require_claims.push((claim, v)),
                    Err(e) => self.error(&format!("{path}.require_claims.{claim}"), e.to_string()),
                }
            }
            if auth == AuthMode::None && (fresh || !require_claims.is_empty()) {
                self.error(
                    &path,
                    "fresh and require_claims need a token: set auth to access, refresh or any",
                );
            }
            let providers = self.route_providers(f.providers, &path, providers);
            if let Some(upstream) = upstream {
                out.push(RouteConfig {
                    prefix: trim_trailing_slash(prefix),
                    upstream,
                    auth,
                    fresh,
                    require_claims,
                    providers,
                });
            }
        }
        out
    }
}

impl Checker {
    /// `routes[i].providers`: names of `default` or of `providers:` entries, as indexes
    /// into `providers` (default: `[default]`). An unknown name is an error naming the
    /// known ones; a name listed twice counts once.
    fn route_providers(
        &mut self,
        raw: Option<file::OneOrMany>,
        path: &str,
        providers: &[ProviderConfig],
    ) -> Vec<usize> {
        let key = format!("{path}.providers");
        let Some(raw) = raw else {
            return vec![0];
        };
        let names = raw.into_vec();
        if names.is_empty() {
            self.error(
                &key,
                "is empty: list at least one provider (default is the jwt section)",
            );
            return vec![0];
        }
        let mut out = Vec::new();
        for name in &names {
            match providers.iter().position(|p| p.name == *name) {
                Some(i) if !out.contains(&i) => out.push(i),
                Some(_) => {}
                // `default` is missing only when `jwt` itself is broken (reported there).
                None if name == DEFAULT_PROVIDER => {}
                None => {
                    let mut known: Vec<&str> = vec![DEFAULT_PROVIDER];
                    known.extend(providers.iter().skip(1).map(|p| p.name.as_str()));
                    self.error(
                        &key,
                        format!("no provider named {name:?} (defined: {})", known.join(", ")),
                    );
                }
            }
        }
        if out.is_empty() {
            out.push(0);
        }
        out
    }
}

/// `/api/` and `/api` are the same prefix; `/` stays `/`.
fn trim_trailing_slash(mut prefix: String) -> String {
    while prefix.len() > 1 && prefix.ends_with('/') {
        prefix.pop();
    }
    prefix
}
