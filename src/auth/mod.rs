//! Authentication and authorization of one request: find the token, verify it, check
//! its type, then (after the revocation check) freshness, CSRF and required claims.

pub mod cache;
pub mod extract;
pub mod jwks;
pub mod providers;
pub mod verify;

use crate::config::{AuthMode, JwtConfig};
use crate::error::GatewayError;
use extract::{CookieKind, TokenSource};
use http::request::Parts;
use http::HeaderMap;
use serde_json::Value;
use std::borrow::Cow;
use std::sync::Arc;
use verify::{AuthError, TokenType, VerifiedToken, Verifier};

/// A claim read as text: a string as it is, a JSON number in its canonical decimal form
/// (`12345`, `12345.0` and `1.2345e4` are all `"12345"`; `1.5` is `"1.5"`), anything
/// else `None`. The one rule for every place a claim becomes a key or is compared as
/// text: revocation keys (`jti`, `sid`, `sub`), identity headers, `require_claims`, and
/// the admin API's and CLI's revocation input. So a token with `"sub": 12345` is
/// revoked by `revoke --sub 12345` and by `{"sub": "12345"}` or `{"sub": 12345}`.
pub fn claim_text(value: &Value) -> Option<Cow<'_, str>> {
    match value {
        Value::String(s) => Some(Cow::Borrowed(s)),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                Some(Cow::Owned(u.to_string()))
            } else if let Some(i) = n.as_i64() {
                Some(Cow::Owned(i.to_string()))
            } else {
                // Rust prints the shortest decimal that reads back as the same f64,
                // without exponent or a trailing `.0`.
                let f = n.as_f64().filter(|f| f.is_finite())?;
                Some(Cow::Owned(if f == 0.0 {
                    "0".to_owned()
                } else {
                    f.to_string()
                }))
            }
        }
        _ => None,
    }
}

/// A request's verified token and where it came from.
pub struct Authenticated {
    pub token: Arc<VerifiedToken>,
    pub source: TokenSource,
}

/// Finds and verifies the token a route of kind `mode` needs (`mode` is never `None`),
/// from one of the route's `providers` (indexes into the config's).
pub fn authenticate(
    headers: &HeaderMap,
    query: Option<&str>,
    mode: AuthMode,
    jwt: &JwtConfig,
    verifier: &Verifier,
    providers: &[usize],
) -> Result<Authenticated, AuthError> {
    let cookie = match mode {
        AuthMode::Refresh => CookieKind::Refresh,
        AuthMode::Any => CookieKind::Either,
        AuthMode::Access | AuthMode::None => CookieKind::Access,
    };
    let (raw, source) =
        extract::extract(headers, query, jwt, cookie).ok_or(GatewayError::MissingToken)?;
    let token = verifier.verify_for(&raw, providers)?;
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
            .claim(claim)
            .is_some_and(|have| satisfies(have, wanted))
    }) {
        return Err(GatewayError::InsufficientScope);
    }
    Ok(())
}

/// Double submit: a cookie token on an unsafe method needs the CSRF header to equal its
/// `csrf` claim (a cross-site page can send the cookie but cannot read it). Methods are
/// matched in any case: HTTP's are case-sensitive, but an app that upper-cases them
/// (Django does) would take an unchecked `post` for a POST.
pub fn check_csrf(
    auth: &Authenticated,
    parts: &Parts,
    jwt: &JwtConfig,
) -> Result<(), GatewayError> {
    if auth.source != TokenSource::Cookie
        || !jwt.csrf.enabled
        || !jwt
            .csrf
            .methods
            .iter()
            .any(|m| m.as_str().eq_ignore_ascii_case(parts.method.as_str()))
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
/// each of its items. Strings and numbers compare as [`claim_text`] reads them (`42`
/// meets `"42"`); other values (booleans, objects) only when equal.
fn satisfies(have: &Value, wanted: &Value) -> bool {
    if have == wanted {
        return true;
    }
    if let Value::Array(items) = wanted {
        return items.iter().all(|w| satisfies(have, w));
    }
    let Some(w) = claim_text(wanted) else {
        return false;
    };
    match have {
        Value::Array(list) => list.iter().any(|h| claim_text(h).is_some_and(|h| h == w)),
        Value::String(s) => s.split_ascii_whitespace().any(|part| part == w),
        Value::Number(_) => claim_text(have).is_some_and(|h| h == w),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{claim_text, satisfies};
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
        assert!(!satisfies(&json!(true), &json!("true")));
        // Numbers read as their decimal text, as everywhere else.
        assert!(satisfies(&json!(1), &json!("1")));
        assert!(satisfies(&json!("1"), &json!(1)));
        assert!(satisfies(&json!(1.0), &json!("1")));
        assert!(satisfies(&json!([7, 42]), &json!("42")));
        assert!(!satisfies(&json!(420), &json!("42")));
    }

    #[test]
    fn claims_as_text() {
        let text = |v: serde_json::Value| claim_text(&v).map(|c| c.into_owned());
        assert_eq!(text(json!("abc")).as_deref(), Some("abc"));
        assert_eq!(text(json!(12345)).as_deref(), Some("12345"));
        assert_eq!(text(json!(-7)).as_deref(), Some("-7"));
        assert_eq!(text(json!(12345.0)).as_deref(), Some("12345"));
        assert_eq!(text(json!(1.2345e4)).as_deref(), Some("12345"));
        assert_eq!(text(json!(1.5)).as_deref(), Some("1.5"));
        assert_eq!(text(json!(-0.0)).as_deref(), Some("0"));
        assert_eq!(
            text(json!(18446744073709551615u64)).as_deref(),
            Some("18446744073709551615")
        );
        assert_eq!(text(json!(null)), None);
        assert_eq!(text(json!(true)), None);
        assert_eq!(text(json!(["a"])), None);
    }
}
