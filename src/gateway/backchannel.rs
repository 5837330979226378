//! OpenID Connect Back-Channel Logout 1.0 at `logout.backchannel_path`.
//!
//! The identity provider POSTs `logout_token=<JWT>` (form-encoded). The token is checked
//! as §2.6 of the spec asks: signed by the provider's keys, `iss` = `jwt.issuer`, `aud`
//! among `logout.backchannel_audience` (default `jwt.audience`), `iat` and `exp`
//! present (§2.4 of the 1.0 final), `events` holding the back-channel-logout event,
//! `sid` and/or `sub`, no `nonce`, and a `jti` not seen before. Then, per
//! `logout.backchannel_revokes`, the session (`sid`, else the subject) or the subject is
//! revoked as of now: a cut-off, so tokens issued later are accepted.
//!
//! Replay memory lives in the blocklist store, so it holds across replicas, and the
//! first sight of a `jti` and the revocations it causes are recorded in one atomic
//! step: of two replicas receiving the same logout token at once, exactly one acts.

use super::Gateway;
use crate::auth::providers::{namespaced, owner_of, with_issuer, DecodeError};
use crate::blocklist::Revocation;
use crate::clock::now_unix;
use crate::config::BackchannelRevokes;
use crate::net::body_limit::{read_body, BodyError, BodyLimit};
use crate::response::{full, store_unavailable, Body};
use crate::revocation::session_cutoff;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use jsonwebtoken::Validation;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// The event a logout token must carry.
pub const BACKCHANNEL_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";
/// Prefix of the replay-memory entries kept in the blocklist store.
const REPLAY_PREFIX: &str = "backchannel-jti:";
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
pub async fn handle(gw: &Gateway, body: Body) -> Response<Body> {
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
    let (claims, provider) = match validate(gw, &token).await {
        Ok(validated) => validated,
        Err(description) => {
            tracing::info!(reason = %description, "back-channel logout refused");
            return invalid(&description);
        }
    };
    let now = now_unix();
    // Read as every claim that becomes a revocation key is (numbers as decimal text).
    let text = |name: &str| {
        claims
            .get(name)
            .and_then(crate::auth::claim_text)
            .filter(|s| !s.is_empty())
            .map(std::borrow::Cow::into_owned)
    };
    let Some(jti) = text("jti") else {
        return invalid("logout token has no jti");
    };
    let (sid, sub) = (text("sid"), text("sub"));
    // Revoked at the provider that issued the logout token (see `auth::providers`).
    let name = &*gw.verifier.providers()[provider].name;
    let key = |text: &str| namespaced(name, text).into_owned();
    let revocation = match (gw.config.logout.backchannel_revokes, &sid, &sub) {
        (BackchannelRevokes::Session, Some(sid), _) => session_cutoff(key(sid), now, now),
        (_, _, Some(sub)) => Revocation::Subject {
            sub: key(sub),
            at: now,
        },
        (BackchannelRevokes::Subject, Some(_), None) => {
            return invalid("logout token has no sub (logout.backchannel_revokes: subject)")
        }
        (_, None, None) => return invalid("logout token has neither sid nor sub"),
    };
    // Remembered as long as the token could be accepted (its exp, plus leeway).
    let replay_until = replay_until(&claims, now, gw.verifier.providers()[provider].leeway);
    // `jti`s are unique per issuer only: each provider has its own replay memory.
    let replay_key = format!("{REPLAY_PREFIX}{}", key(&jti));
    match gw
        .blocklist
        .revoke_once(&replay_key, replay_until, vec![revocation])
        .await
    {
        Ok(true) => {}
        Ok(false) => return invalid("logout token was already used (jti replayed)"),
        Err(_) => return store_unavailable(),
    }
    tracing::info!(
        sid = sid.as_deref(),
        sub = sub.as_deref(),
        provider = name,
        "back-channel logout"
    );
    let mut response = Response::new(full(Bytes::new()));
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Checks the logout token per the spec; returns its claims and the index of the
/// provider that issued it (the one whose `issuer` is its `iss`, whose keys verify it),
/// or why it is invalid.
async fn validate(gw: &Gateway, token: &str) -> Result<(Map<String, Value>, usize), String> {
    let audience = &gw.config.logout.backchannel_audience;
    let header = jsonwebtoken::decode_header(token).map_err(|_| "logout token is not a JWT")?;
    let providers = gw.verifier.providers();
    let index = with_issuer(token, |iss| owner_of(providers, iss))
        .map_err(|_| "logout token is not a JWT")?
        .ok_or("logout token issuer is wrong")?;
    let provider = &providers[index];
    if !provider.allows(header.alg) {
        return Err("logout token algorithm is not allowed".into());
    }
    // Config validation guarantees an audience for a back-channel path; checked again
    // so a token is never accepted without one (an issuer is how it was matched).
    let (Some(issuer), false) = (&provider.issuer, audience.is_empty()) else {
        return Err("jwt.issuer and logout.backchannel_audience must be configured".into());
    };
    let mut validation = Validation::new(header.alg);
    validation.leeway = provider.leeway;
    validation.set_issuer(&[issuer]);
    validation.set_audience(audience);
    validation.set_required_spec_claims(&["iss", "aud", "exp"]);
    let decoded = match provider.decode_claims(token, &header, &validation) {
        Err(DecodeError::UnknownKid) => {
            if let Some(jwks) = provider.jwks() {
                jwks.refetch_for_unknown_kid().await;
            }
            provider.decode_claims(token, &header, &validation)
        }
        other => other,
    };
    let claims = decoded.map_err(|e| match e {
        DecodeError::Refused(e) => e,
        DecodeError::UnknownKid => crate::GatewayError::BadSignature,
    });
    let claims = claims.map_err(|e| match e {
        // An unknown `kid` (after one refetch) means no key of the issuer signed it.
        crate::GatewayError::BadSignature => "logout token signature does not verify".into(),
        crate::GatewayError::Expired => "logout token has expired".into(),
        crate::GatewayError::BadIssuer => "logout token issuer is wrong".into(),
        crate::GatewayError::BadAudience => audience_mismatch(token, audience),
        _ => "logout token could not be validated (exp, iss and aud are required)".into(),
    })?;
    if !claims.get("exp").is_some_and(Value::is_number) {
        return Err("logout token has no exp".into());
    }
    if !claims.get("iat").is_some_and(Value::is_number) {
        return Err("logout token has no iat".into());
    }
    let has_event = claims
        .get("events")
        .and_then(Value::as_object)
        .and_then(|events| events.get(BACKCHANNEL_EVENT))
        .is_some_and(Value::is_object);
    if !has_event {
        return Err("logout token lacks the back-channel logout event".into());
    }
    if claims.contains_key("nonce") {
        return Err("logout token must not contain a nonce".into());
    }
    Ok((claims, index))
}

/// The refusal for a wrong `aud`, naming what the token carried and what is accepted
/// (the provider's client ids are not secrets; the mismatch is the usual set-up error).
fn audience_mismatch(token: &str, accepted: &[String]) -> String {
    let sent = jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
        .ok()
        .and_then(|claims| claims.get("aud").cloned())
        .map_or_else(|| "none".to_owned(), |aud| aud.to_string());
    format!(
        "logout token audience {sent} is not in logout.backchannel_audience {}",
        Value::from(accepted.to_vec())
    )
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

/// Until when a logout token's `jti` is remembered: as long as the token could be
/// accepted, its `exp` plus `leeway`. A NumericDate may have a fraction (RFC 7519):
/// reading `exp` as an integer only made a float `exp` "now", replayable a second later.
fn replay_until(claims: &serde_json::Map<String, Value>, now: u64, leeway: u64) -> u64 {
    let exp = claims
        .get("exp")
        .and_then(crate::auth::verify::numeric_date)
        .unwrap_or(now);
    exp.saturating_add(leeway)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

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

    #[test]
    fn a_logout_tokens_jti_is_remembered_until_its_exp_fraction_or_not() {
        let claims = |exp: Value| json!({ "exp": exp }).as_object().cloned().unwrap();
        assert_eq!(replay_until(&claims(json!(2000)), 1000, 30), 2030);
        assert_eq!(replay_until(&claims(json!(2000.5)), 1000, 0), 2000);
        assert_eq!(replay_until(&claims(json!("2000")), 1000, 0), 1000);
    }
}
