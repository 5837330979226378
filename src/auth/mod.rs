//! Authentication and authorization of one request: find the token, verify it, check
//! its type, then (after the revocation check) freshness, CSRF and required claims.

pub mod cache;
pub mod extract;
pub mod jwks;
pub mod keys;
pub mod verify;

use crate::config::{AuthMode, JwtConfig};
use crate::error::GatewayError;
use extract::{CookieKind, TokenSource};
use http::request::Parts;
use http::HeaderMap;
use serde_json::Value;
use std::sync::Arc;
use verify::{AuthError, TokenType, VerifiedToken, Verifier};

/// A request's verified token and where it came from.
pub struct Authenticated {
    pub token: Arc<VerifiedToken>,
    pub source: TokenSource,
}

/// Finds and verifies the token a route of kind `mode` needs (`mode` is never `None`).
pub fn authenticate(
    headers: &HeaderMap,
    query: Option<&str>,
    mode: AuthMode,
    jwt: &JwtConfig,
    verifier: &Verifier,
) -> Result<Authenticated, AuthError> {
    let cookie = match mode {
        AuthMode::Refresh => CookieKind::Refresh,
        AuthMode::Any => CookieKind::Either,
        AuthMode::Access | AuthMode::None => CookieKind::Access,
    };
    let (raw, source) =
        extract::extract(headers, query, jwt, cookie).ok_or(GatewayError::MissingToken)?;
    let token = verifier.verify(&raw)?;
    match (mode, token.token_type) {
        (AuthMode::Access, TokenType::Access)
        | (AuthMode::Refresh, TokenType::Refresh)
        | (AuthMode::Any, TokenType::Access | TokenType::Refresh)
        | (AuthMode::None, _) => {}
        (AuthMode::Refresh, _) => return Err(GatewayError::RefreshTokenRequired.into()),
        (AuthMode::Access | AuthMode::Any, _) => {
            return Err(GatewayError::AccessTokenRequired.into())
        }
    }
    Ok(Authenticated { token, source })
}

/// Freshness, CSRF double submit (cookie tokens only) and `require_claims`.
pub fn authorize(
    auth: &Authenticated,
    parts: &Parts,
    fresh: bool,
    require_claims: &[(String, Value)],
    jwt: &JwtConfig,
) -> Result<(), GatewayError> {
    if fresh && !auth.token.fresh {
        return Err(GatewayError::FreshTokenRequired);
    }
    check_csrf(auth, parts, jwt)?;
    if !require_claims.iter().all(|(claim, wanted)| {
        auth.token
            .claims
            .get(claim)
            .is_some_and(|have| satisfies(have, wanted))
    }) {
        return Err(GatewayError::InsufficientScope);
    }
    Ok(())
}

/// Double submit: a cookie token on an unsafe method needs the CSRF header to equal its
/// `csrf` claim (a cross-site page can send the cookie but cannot read it).
pub fn check_csrf(
    auth: &Authenticated,
    parts: &Parts,
    jwt: &JwtConfig,
) -> Result<(), GatewayError> {
    if auth.source != TokenSource::Cookie
        || !jwt.csrf.enabled
        || !jwt.csrf.methods.contains(&parts.method)
    {
        return Ok(());
    }
    let sent = parts
        .headers
        .get(&jwt.csrf.header_name)
        .and_then(|v| v.to_str().ok());
    match (sent, auth.token.csrf.as_deref()) {
        (Some(sent), Some(expected))
            if !expected.is_empty() && constant_time_eq(sent.as_bytes(), expected.as_bytes()) =>
        {
            Ok(())
        }
        _ => Err(GatewayError::Csrf),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

/// Whether claim value `have` meets requirement `wanted`: equal; or `have` is a list (or
/// an OAuth-style space-separated string) containing `wanted`; a list `wanted` needs
/// each of its items.
fn satisfies(have: &Value, wanted: &Value) -> bool {
    if have == wanted {
        return true;
    }
    match wanted {
        Value::Array(items) => items.iter().all(|w| satisfies(have, w)),
        _ => match have {
            Value::Array(list) => list.contains(wanted),
            Value::String(s) => wanted
                .as_str()
                .is_some_and(|w| s.split_ascii_whitespace().any(|part| part == w)),
            _ => false,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::satisfies;
    use serde_json::json;

    #[test]
    fn claim_requirements() {
        assert!(satisfies(&json!("admin"), &json!("admin")));
        assert!(satisfies(&json!(["read", "admin"]), &json!("admin")));
        assert!(satisfies(&json!("read admin"), &json!("admin")));
        assert!(satisfies(
            &json!(["read", "admin"]),
            &json!(["admin", "read"])
        ));
        assert!(!satisfies(&json!(["read"]), &json!(["admin", "read"])));
        assert!(!satisfies(&json!("administrator"), &json!("admin")));
        assert!(satisfies(&json!(true), &json!(true)));
        assert!(!satisfies(&json!(1), &json!("1")));
    }
}
