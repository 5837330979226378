//! Whether a request may pass: the route its normalized path matches (client identity
//! headers stripped), then, for a route with `auth`, the token (found, verified, of the
//! route's type), its revocation, and the route's `fresh`, CSRF and `require_claims`.
//! The edge ([`Gateway::judge`], then [`Gateway::forward`]), forward auth and the logout
//! path ([`Gateway::admit`]) all decide here: one code path, so a proxy in front never
//! gets a laxer verdict than the edge gives.

use super::{Gateway, Trace};
use crate::auth::verify::AuthError;
use crate::auth::{self, Authenticated};
use crate::blocklist::Verdict;
use crate::config::{AuthMode, OnStoreError, RouteConfig};
use crate::error::GatewayError;
use crate::net::forwarding;
use http::request::Parts;

impl Gateway {
    /// Decides whether a request may reach the route its normalized `path` matches:
    /// route match, client identity headers stripped, then for a route with `auth`
    /// [`Gateway::admit`]. The edge forwards what this allows; forward auth answers 200.
    /// One code path for both, so a proxy in front can never get a laxer verdict.
    pub async fn judge(
        &self,
        parts: &mut Parts,
        path: &str,
        query: Option<&str>,
        trace: &mut Trace,
    ) -> Result<(&RouteConfig, Option<Authenticated>), GatewayError> {
        let (index, route) = self.match_route(path).ok_or(GatewayError::NoRoute)?;
        trace.stats = Some(index);
        forwarding::strip_matching(&mut parts.headers, &self.config.forward.strip_headers);
        let authenticated = match route.auth {
            AuthMode::None => None,
            mode => {
                let policy = (mode, route.fresh, route.require_claims.as_slice());
                Some(
                    self.admit(parts, query, policy, &route.providers, trace)
                        .await?,
                )
            }
        };
        Ok((route, authenticated))
    }

    /// authenticate → revocation → authorize (`fresh`, CSRF for `parts.method`,
    /// `require_claims`): what a token-bearing route and the logout path ask of a caller.
    /// `policy` is the route's `(auth, fresh, require_claims)`, `providers` the
    /// providers whose tokens it accepts (indexes into the config's).
    pub async fn admit(
        &self,
        parts: &Parts,
        query: Option<&str>,
        policy: (AuthMode, bool, &[(String, serde_json::Value)]),
        providers: &[usize],
        trace: &mut Trace,
    ) -> Result<Authenticated, GatewayError> {
        let (mode, fresh, require_claims) = policy;
        let auth = self
            .authenticate(&parts.headers, query, mode, providers)
            .await?;
        if self.config.server.access_log {
            trace.token = Some(auth.token.clone());
        }
        self.check_revocation(&auth).await?;
        auth::authorize(&auth, parts, fresh, require_claims, &self.config.jwt)?;
        Ok(auth)
    }

    /// Finds and verifies the token for `mode` from one of `providers`; a `kid` the
    /// matched provider's JWKS does not know yet gets one (rate-limited) refetch of that
    /// provider's key set, and a second try.
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        query: Option<&str>,
        mode: AuthMode,
        providers: &[usize],
    ) -> Result<Authenticated, GatewayError> {
        let jwt = &self.config.jwt;
        match auth::authenticate(headers, query, mode, jwt, &self.verifier, providers) {
            Ok(auth) => Ok(auth),
            Err(AuthError::UnknownKid(provider)) => {
                if let Some(jwks) = self.verifier.providers()[provider].jwks() {
                    jwks.refetch_for_unknown_kid().await;
                }
                auth::authenticate(headers, query, mode, jwt, &self.verifier, providers)
                    .map_err(AuthError::refusal)
            }
            Err(AuthError::Refused(e)) => Err(e),
        }
    }

    /// First route whose prefix matches `path` on a segment boundary (`/admin` matches
    /// `/admin` and `/admin/x`, never `/administrator`).
    pub fn match_route(&self, path: &str) -> Option<(usize, &RouteConfig)> {
        self.config
            .routes
            .iter()
            .enumerate()
            .find(|(_, r)| prefix_matches(&r.prefix, path))
    }

    /// Refuses revoked tokens, from memory; applies `on_store_error` when the store
    /// cannot be trusted.
    pub async fn check_revocation(&self, auth: &Authenticated) -> Result<(), GatewayError> {
        let verdict = match self.blocklist.check(&auth.token).await {
            Verdict::Allowed if self.blocklist.is_stale() => Verdict::Unknown,
            v => v,
        };
        match verdict {
            Verdict::Allowed => Ok(()),
            Verdict::Revoked => Err(GatewayError::RevokedToken),
            Verdict::Unknown => match self.config.blocklist.on_store_error {
                OnStoreError::Deny => Err(GatewayError::StoreUnavailable),
                OnStoreError::Allow => {
                    let served = self
                        .metrics
                        .fail_open
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    // Logged at the first and every 1000th such request, not each one.
                    if served % 1000 == 0 {
                        tracing::warn!(served = served + 1, "revocation store unavailable: serving from the local copy (on_store_error: allow)");
                    }
                    Ok(())
                }
            },
        }
    }
}

/// Whether route `prefix` (no trailing slash, or `/`) covers `path`.
fn prefix_matches(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || (path.starts_with(prefix)
            && (path.len() == prefix.len() || path.as_bytes()[prefix.len()] == b'/'))
}

#[cfg(test)]
mod tests {
    use super::prefix_matches;

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        assert!(prefix_matches("/", "/anything"));
        assert!(prefix_matches("/admin", "/admin"));
        assert!(prefix_matches("/admin", "/admin/"));
        assert!(prefix_matches("/admin", "/admin/x"));
        assert!(!prefix_matches("/admin", "/administrator"));
        assert!(!prefix_matches("/admin", "/adm"));
    }
}
