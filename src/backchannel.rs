//! OpenID Connect Back-Channel Logout 1.0 at `logout.backchannel_path`.
//!
//! The identity provider POSTs `logout_token=<JWT>` (form-encoded). The token is checked
//! as §2.6 of the spec asks: signed by the provider's keys, `iss` = `jwt.issuer`, `aud`
//! among `jwt.audience`, `iat` present, `events` holding the back-channel-logout event,
//! `sid` and/or `sub`, no `nonce`, and a `jti` not seen before. Then the session (`sid`)
//! is revoked, or, when the token names only a subject, every token of that subject
//! issued so far. Replay memory lives in the blocklist store, so it holds across replicas.

use crate::admin::store_unavailable;
use crate::auth::verify::{now_unix, AuthError};
use crate::blocklist::{Kind, Revocation};
use crate::gateway::Gateway;
use crate::logout::SESSION_REVOCATION_TTL;
use crate::net::body::{read_body, BodyError, BodyLimit};
use crate::upstream::{full, Body};
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use hyper::body::Incoming;
use jsonwebtoken::Validation;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The event a logout token must carry.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Prefix of the replay-memory entries kept in the blocklist store.
const REPLAY_PREFIX: &str = "backchannel-jti:";
/// How long a logout token's `jti` is remembered when it carries no `exp`.
const REPLAY_WINDOW: u64 = 3600;
/// The request body, read before any authentication: `logout_token=<JWT>`. A logout token
/// is a signed JWT of a few hundred bytes to a few KB (an RSA-4096 signature is 683
/// characters); 16 KiB leaves room for large claim sets and stops an unauthenticated client
/// from making the gateway buffer more. The identity provider sends it in one go: 5 s is
/// generous, and never more than `server.header_read_timeout` (see [`BodyLimit::capped`]).
pub const BACKCHANNEL_BODY: BodyLimit = BodyLimit {
    max_bytes: 16 * 1024,
    within: Duration::from_secs(5),
};

fn invalid(description: &str) -> Response<Body> {
    refusal(StatusCode::BAD_REQUEST, description)
}

/// An OIDC error answer (`{"error": "invalid_request", ...}`) with `status`.
fn refusal(status: StatusCode, description: &str) -> Response<Body> {
    let mut response = Response::new(full(
        json!({"error": "invalid_request", "error_description": description}).to_string(),
    ));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Handles a POST to `logout.backchannel_path`.
pub async fn handle(gw: &Gateway, body: Incoming) -> Response<Body> {
    let limit = BACKCHANNEL_BODY.capped(gw.config.server.header_read_timeout);
    let bytes: Bytes = match read_body(body, limit).await {
        Ok(bytes) => bytes,
        Err(BodyError::TooLarge) => {
            return refusal(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request body too large (at most 16 KiB)",
            )
        }
        Err(BodyError::TooSlow) => {
            tracing::info!(?limit, "back-channel logout body too slow");
            return refusal(StatusCode::REQUEST_TIMEOUT, "request body too slow");
        }
        Err(BodyError::Broken) => return invalid("request body unreadable"),
    };
    let Some(token) = form_value(&bytes, "logout_token") else {
        return invalid("missing logout_token");
    };
    let claims = match validate(gw, &token).await {
        Ok(claims) => claims,
        Err(description) => {
            tracing::info!(reason = description, "back-channel logout refused");
            return invalid(description);
        }
    };
    let now = now_unix();
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
    };
    let Some(jti) = text("jti") else {
        return invalid("logout token has no jti");
    };
    let replay_key = format!("{REPLAY_PREFIX}{jti}");
    match gw.blocklist.lookup(Kind::Token, &replay_key).await {
        Ok(Some(_)) => return invalid("logout token was already used (jti replayed)"),
        Ok(None) => {}
        Err(_) => return store_unavailable(),
    }
    let exp = claims.get("exp").and_then(Value::as_u64);
    let mut revocations = vec![Revocation::Token {
        key: replay_key,
        exp: exp.unwrap_or(0).max(now + REPLAY_WINDOW),
    }];
    match (text("sid"), text("sub")) {
        (Some(sid), _) => revocations.push(Revocation::Session {
            sid: sid.to_owned(),
            exp: now + SESSION_REVOCATION_TTL,
        }),
        (None, Some(sub)) => revocations.push(Revocation::Subject {
            sub: sub.to_owned(),
            at: now,
        }),
        (None, None) => return invalid("logout token has neither sid nor sub"),
    }
    if gw.blocklist.revoke(revocations).await.is_err() {
        return store_unavailable();
    }
    tracing::info!(sid = text("sid"), sub = text("sub"), "back-channel logout");
    let mut response = Response::new(full(Bytes::new()));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Checks the logout token per the spec; returns its claims or why it is invalid.
async fn validate(gw: &Gateway, token: &str) -> Result<Map<String, Value>, &'static str> {
    let jwt = &gw.config.jwt;
    let header = jsonwebtoken::decode_header(token).map_err(|_| "logout token is not a JWT")?;
    if !gw.verifier.allows(header.alg) {
        return Err("logout token algorithm is not allowed");
    }
    // Config validation guarantees both for a back-channel path; checked again so a
    // token is never accepted without them.
    let (Some(issuer), false) = (&jwt.issuer, jwt.audience.is_empty()) else {
        return Err("jwt.issuer and jwt.audience must be configured");
    };
    let mut validation = Validation::new(header.alg);
    validation.leeway = jwt.leeway.as_secs();
    validation.set_issuer(&[issuer]);
    validation.set_audience(&jwt.audience);
    // `exp` is checked when present (providers before the 1.0 final omit it).
    validation.set_required_spec_claims(&["iss", "aud"]);
    let decoded = match gw.verifier.decode_claims(token, &header, &validation) {
        Err(AuthError::UnknownKid) => {
            if let Some(jwks) = gw.verifier.jwks() {
                jwks.refetch_for_unknown_kid().await;
            }
            gw.verifier.decode_claims(token, &header, &validation)
        }
        other => other,
    };
    let claims = decoded.map_err(|e| match e.refusal() {
        crate::GatewayError::BadSignature => "logout token signature does not verify",
        crate::GatewayError::Expired => "logout token has expired",
        crate::GatewayError::BadIssuer => "logout token issuer is wrong",
        crate::GatewayError::BadAudience => "logout token audience is wrong",
        _ => "logout token could not be validated",
    })?;
    if !claims.get("iat").is_some_and(Value::is_number) {
        return Err("logout token has no iat");
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err("logout token lacks the back-channel logout event");
    }
    if claims.contains_key("nonce") {
        return Err("logout token must not contain a nonce");
    }
    Ok(claims)
}

/// The value of `name` in an `application/x-www-form-urlencoded` body.
fn form_value(body: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    text.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=')?;
        if key != name {
            return None;
        }
        let value = value.replace('+', " ");
        percent_encoding::percent_decode_str(&value)
            .decode_utf8()
            .ok()
            .map(|v| v.into_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::form_value;

    #[test]
    fn reads_form_values() {
        assert_eq!(
            form_value(b"a=1&logout_token=x.y.z", "logout_token").as_deref(),
            Some("x.y.z")
        );
        assert_eq!(
            form_value(b"logout_token=a%2Eb+c", "logout_token").as_deref(),
            Some("a.b c")
        );
        assert_eq!(form_value(b"other=1", "logout_token"), None);
    }
}
