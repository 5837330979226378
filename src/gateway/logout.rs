//! `logout.path`: revoke the caller's tokens, durably, before saying so.
//!
//! Same checks as an `access` route (CSRF included). Revokes the access token; with
//! `revoke_refresh`, every refresh token sent along (refresh cookie, `X-Refresh-Token`,
//! a JSON body `{"refresh_token": ...}`, looked for in its first 64 KiB within 2 s and
//! never a reason to refuse) when it is valid and has the same `sub`; with a
//! `sid` claim, the whole session. Answers 200 only after the store committed every
//! revocation, 503 `RevocationStoreError` when it could not.

use super::{Gateway, Target, Trace};
use crate::auth::extract;
use crate::auth::verify::TokenType;
use crate::auth::Authenticated;
use crate::blocklist::Revocation;
use crate::clock::now_unix;
use crate::config::AuthMode;
use crate::error::GatewayError;
use crate::net::body::read_start;
use crate::response::{json_response, Body};
use crate::revocation;
use http::request::Parts;
use http::{HeaderName, Response, StatusCode};
use http_body_util::Either;
use std::time::Duration;

/// Header that may carry the refresh token to revoke along with the access token.
pub static X_REFRESH_TOKEN: HeaderName = HeaderName::from_static("x-refresh-token");

/// Most of a logout body looked at for `refresh_token` (a JSON object holding one
/// token needs a few KiB).
const MAX_LOGOUT_BODY: usize = 64 * 1024;

/// Most refresh tokens one logout looks at (cookies and `X-Refresh-Token` fields
/// together, then the body's): each costs a signature check.
const MAX_REFRESH_TOKENS: usize = 4;

/// Longest wait for those bytes. A real client sends a few KiB of JSON right after the
/// head, within one round trip; two seconds covers a slow mobile link many times over,
/// and bounds how long an authenticated client can hold a logout (and its connection
/// slot) by trickling the body. Past it the logout goes on without the body's refresh
/// token (the cookie and `X-Refresh-Token` carriers, and a `sid`, still apply).
const LOGOUT_BODY_WAIT: Duration = Duration::from_secs(2);

/// What a logout asks of its caller: the checks of an `auth: access` route, CSRF
/// included, without `fresh` or claims. Forward auth judges a logout path by it too.
pub const LOGOUT_POLICY: (AuthMode, bool, &[(String, serde_json::Value)]) =
    (AuthMode::Access, false, &[]);

/// Handles a request to `logout.path` with one of `logout.methods`.
pub async fn handle(
    gw: &Gateway,
    parts: Parts,
    body: Body,
    target: &Target<'_>,
    trace: &mut Trace,
) -> Result<Response<Body>, GatewayError> {
    let jwt = &gw.config.jwt;
    let auth = gw
        .admit(
            &parts,
            target.uri.query(),
            LOGOUT_POLICY,
            &gw.all_providers,
            trace,
        )
        .await?;

    let (sent, body) = if gw.config.logout.revoke_refresh {
        find_refresh_tokens(&parts, body, jwt).await
    } else {
        (Vec::new(), body)
    };
    let now = now_unix();
    let token = &auth.token;
    // Every carrier's token that is a valid refresh token of the caller: a stale cookie
    // must not keep the token sent in `X-Refresh-Token` (or the body) alive.
    let mut refresh: Vec<Revocation> = Vec::with_capacity(sent.len());
    for revocation in sent
        .iter()
        .filter_map(|raw| valid_refresh(gw, &auth, raw, now))
    {
        if !refresh.contains(&revocation) {
            refresh.push(revocation);
        }
    }
    let revocations = revocation::logout(token, refresh, now);
    gw.blocklist
        .revoke(revocations)
        .await
        .map_err(|_| GatewayError::StoreUnavailable)?;
    tracing::info!(sub = token.sub.as_deref().unwrap_or(""), "logged out");

    if gw.config.logout.forward {
        if let Some((_, route)) = gw.match_route(target.path) {
            return gw
                .forward(route, parts, body, target, Some(&auth), trace)
                .await;
        }
    }
    Ok(json_response(StatusCode::OK, r#"{"message":"Logged out"}"#))
}

/// The refresh tokens sent with a logout: refresh cookie, `X-Refresh-Token`, a JSON
/// body. Returns the body to forward: the client's, whole, whatever was read of it.
///
/// The body is only a place to look: at most its first [`MAX_LOGOUT_BODY`] bytes, for
/// at most [`LOGOUT_BODY_WAIT`]. A body that is larger, slower, broken or not JSON has
/// no refresh token in it as far as the logout is concerned, and the logout goes on.
async fn find_refresh_tokens(
    parts: &Parts,
    body: Body,
    jwt: &crate::config::JwtConfig,
) -> (Vec<String>, Body) {
    // Every copy: two refresh cookies of one name (another Path or Domain) are the
    // stale-cookie case itself. The header first (cookies can be planted by a sibling
    // domain), only what looks like a JWT, each once, a few at most: each costs a
    // signature check.
    let mut found: Vec<String> = Vec::new();
    let headers = parts
        .headers
        .get_all(&X_REFRESH_TOKEN)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .map(|t| t.trim())
        .map(|t| t.strip_prefix("Bearer ").unwrap_or(t));
    let cookies = extract::cookie_values(&parts.headers, &jwt.refresh_cookie_name);
    for token in headers.chain(cookies) {
        if found.len() == MAX_REFRESH_TOKENS {
            break;
        }
        if token.split('.').count() == 3 && !found.iter().any(|f| f == token) {
            found.push(token.to_owned());
        }
    }
    // Whatever the `Content-Type` says: `curl -d '{...}'` labels JSON as a form, and a
    // logout that answers 200 while the refresh token it was given stays valid would
    // be the worse mistake.
    let body = match body {
        Body::Stream(incoming) => Either::Left(incoming),
        Body::Held(held) => Either::Right(held),
        // Never a request's body.
        upstream @ Body::Upstream(_) => return (found, upstream),
    };
    let start = read_start(body, MAX_LOGOUT_BODY, LOGOUT_BODY_WAIT).await;
    let token = start
        .complete
        .then(|| serde_json::from_slice::<serde_json::Value>(start.body.bytes()).ok())
        .flatten()
        .and_then(|v| v.get("refresh_token")?.as_str().map(str::to_owned));
    found.extend(token);
    (found, Body::Held(start.body))
}

/// The refresh token's revocation, if it is a valid refresh token of the same subject
/// at the same provider (a token of another issuer is another user's).
fn valid_refresh(gw: &Gateway, auth: &Authenticated, raw: &str, now: u64) -> Option<Revocation> {
    let refresh = gw
        .verifier
        .verify_uncached_for(raw, now, &[auth.token.provider])
        .ok()?;
    if refresh.token_type != TokenType::Refresh || refresh.sub != auth.token.sub {
        return None;
    }
    Some(Revocation::Token {
        key: refresh.revocation_key,
        exp: refresh.exp,
    })
}
