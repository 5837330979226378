//! Revocation and logout (CONTRACT §1 `portcullis revoke`, §3 revocation and logout).
//!
//! Every test starts its own upstream and its own `portcullis` process (see
//! tests/common/mod.rs). Tests that need a second process to reach the store, or a
//! restart, use `blocklist.store: sqlite` with the database next to the config file.

mod common;

use common::*;
use jsonwebtoken::Algorithm;
use serde_json::json;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How soon a revocation written by another process must be enforced (CONTRACT §3).
const ENFORCED_WITHIN: Duration = Duration::from_secs(1);
/// How often the edge is polled while waiting for that.
const POLL_EVERY: Duration = Duration::from_millis(50);
/// How long polling goes on before giving up (longer than [`ENFORCED_WITHIN`], so a
/// slow-but-working gateway fails with the time it actually took).
const POLL_GIVE_UP: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// The standard config with the sqlite store at `<config dir>/revocations.db`.
fn sqlite_config(up: &Upstream) -> Config {
    let mut cfg = Config::new(up.addr);
    cfg.set("blocklist.store", json!("sqlite"));
    cfg.set("blocklist.sqlite_path", json!("revocations.db"));
    cfg
}

/// An upstream and a gateway with the standard config, tweaked by `tweak`.
async fn start_with(tweak: impl FnOnce(&mut Config)) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let mut cfg = Config::new(up.addr);
    tweak(&mut cfg);
    let gw = Gateway::start(cfg).await;
    (up, gw)
}

/// An upstream and a gateway on the sqlite store, tweaked by `tweak`.
async fn start_sqlite(tweak: impl FnOnce(&mut Config)) -> (Upstream, Gateway) {
    let up = Upstream::start().await;
    let mut cfg = sqlite_config(&up);
    tweak(&mut cfg);
    let gw = Gateway::start(cfg).await;
    assert!(
        db_path(&gw).exists(),
        "the sqlite store should be at {}",
        db_path(&gw).display()
    );
    (up, gw)
}

fn db_path(gw: &Gateway) -> PathBuf {
    gw.config.dir.path().join("revocations.db")
}

/// `POST /logout` with `Authorization: Bearer <token>` plus `extra` headers.
async fn logout_with(gw: &Gateway, token: &str, extra: &[(&str, &str)], body: &str) -> Reply {
    let auth = bearer(token);
    let mut headers = vec![("Authorization", auth.as_str())];
    headers.extend_from_slice(extra);
    request(
        gw.edge,
        "POST",
        "/logout",
        &headers,
        body.as_bytes().to_vec(),
    )
    .await
}

async fn logout(gw: &Gateway, token: &str) -> Reply {
    logout_with(gw, token, &[], "").await
}

async fn assert_refused_as_revoked(gw: &Gateway, path: &str, token: &str) {
    assert_revoked(&get_with_token(gw, path, token).await);
}

/// Polls `GET path` with `token` every 50 ms until it is no longer forwarded;
/// asserts that happened within [`ENFORCED_WITHIN`] of `since` and returns the refusal.
async fn refused_within_a_second(gw: &Gateway, path: &str, token: &str, since: Instant) -> Reply {
    loop {
        let reply = get_with_token(gw, path, token).await;
        let elapsed = since.elapsed();
        if reply.0 != 200 {
            assert!(
                elapsed <= ENFORCED_WITHIN,
                "the revocation was enforced only after {elapsed:?} (must be within {ENFORCED_WITHIN:?})"
            );
            return reply;
        }
        assert!(
            elapsed < POLL_GIVE_UP,
            "the token was still accepted {elapsed:?} after the revocation was written"
        );
        tokio::time::sleep(POLL_EVERY).await;
    }
}

// ---------------------------------------------------------------------------
// 1. The seed scenario
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logout_revokes_and_survives_a_kill_and_restart() {
    let (up, gw) = start_sqlite(|_| {}).await;
    let t = token(&access("alice"));

    let echo = assert_forwarded(&get_with_token(&gw, "/x", &t).await);
    assert_eq!(echo["headers"]["x-auth-subject"], "alice", "echo: {echo}");
    assert_eq!(echo["path"], "/x");

    assert_logged_out(&logout(&gw, &t).await);
    assert!(
        !up.seen().iter().any(|r| r.contains("/logout")),
        "a logout without logout.forward must not reach the upstream: {:?}",
        up.seen()
    );
    assert_refused_as_revoked(&gw, "/x", &t).await;

    let gw = kill_and_restart(gw).await;
    assert_refused_as_revoked(&gw, "/x", &t).await;
    // Only that token: another of the same subject still passes.
    assert_accepted(&gw, "/x", &token(&access("alice")), "alice").await;
}

// ---------------------------------------------------------------------------
// 2. Logout refusals
// ---------------------------------------------------------------------------

#[tokio::test]
async fn second_logout_with_the_same_token_is_refused() {
    let (_up, gw) = start_with(|_| {}).await;
    let t = token(&access("alice"));
    assert_logged_out(&logout(&gw, &t).await);
    assert_revoked(&logout(&gw, &t).await);
    assert_refused_as_revoked(&gw, "/x", &t).await;
}

#[tokio::test]
async fn logout_needs_a_valid_access_token() {
    let (up, gw) = start_with(|_| {}).await;

    let reply = request(gw.edge, "POST", "/logout", &[], "").await;
    assert_refused(&reply, 401, "MissingTokenError", "Token Error");

    let wrong_key = Signer::hmac_with(Algorithm::HS256, b"not-the-gateway-secret-0123456789");
    let forged = wrong_key.token(&access("alice"));
    assert_refused(
        &logout(&gw, &forged).await,
        401,
        "TokenInvalidSignatureError",
        "Signature verification failed",
    );

    for garbage in ["garbage", "not.a.jwt", "a.b.c.d"] {
        assert_refused(
            &logout(&gw, garbage).await,
            401,
            "JWTDecodeError",
            "Invalid Token",
        );
    }

    let now = now();
    let expired = token(&access("alice").with(json!({ "iat": now - 600, "exp": now - 300 })));
    assert_refused(
        &logout(&gw, &expired).await,
        401,
        "TokenExpiredError",
        "Token has expired",
    );

    // "the same checks as an access route": a refresh token cannot log out.
    let r = token(&refresh("alice"));
    assert_refused(
        &logout(&gw, &r).await,
        401,
        "AccessTokenRequiredError",
        "Access token required",
    );
    // ... and was not revoked by trying.
    assert_forwarded(&get_with_token(&gw, "/refresh", &r).await);

    assert!(
        !up.seen().iter().any(|r| r.contains("/logout")),
        "refused logouts must not reach the upstream: {:?}",
        up.seen()
    );
    gw.assert_still_serving(&Signer::hmac(Algorithm::HS256))
        .await;
}

// ---------------------------------------------------------------------------
// 3. The refresh token sent along
// ---------------------------------------------------------------------------

const CARRIERS: usize = 3;

/// One way of carrying the refresh token: `(name, headers, body)`.
type Carrier = (&'static str, Vec<(String, String)>, String);

/// The [`CARRIERS`] ways a logout may carry the refresh token.
fn carriers(refresh: &str) -> Vec<Carrier> {
    vec![
        (
            "refresh cookie",
            vec![(
                "Cookie".to_string(),
                format!("refresh_token_cookie={refresh}"),
            )],
            String::new(),
        ),
        (
            "X-Refresh-Token header",
            vec![("X-Refresh-Token".to_string(), refresh.to_string())],
            String::new(),
        ),
        (
            "JSON body",
            vec![("Content-Type".to_string(), "application/json".to_string())],
            json!({ "refresh_token": refresh }).to_string(),
        ),
    ]
}

async fn logout_carrying(
    gw: &Gateway,
    access: &str,
    headers: &[(String, String)],
    body: &str,
) -> Reply {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    logout_with(gw, access, &headers, body).await
}

#[tokio::test]
async fn logout_revokes_the_refresh_token_sent_along_by_each_carrier() {
    let (_up, gw) = start_with(|_| {}).await;
    for i in 0..CARRIERS {
        let a = token(&access("alice"));
        let r = token(&refresh("alice"));
        assert_accepted(&gw, "/refresh", &r, "alice").await;
        let (how, headers, body) = carriers(&r).swap_remove(i);

        let reply = logout_carrying(&gw, &a, &headers, &body).await;
        assert_logged_out(&reply);
        assert_refused_as_revoked(&gw, "/x", &a).await;
        let reply = get_with_token(&gw, "/refresh", &r).await;
        assert_eq!(reply.0, 401, "refresh token sent by {how}: {}", reply.2);
        assert_revoked(&reply);
    }
}

#[tokio::test]
async fn refresh_token_of_another_subject_is_not_revoked() {
    let (_up, gw) = start_with(|_| {}).await;
    for i in 0..CARRIERS {
        let a = token(&access("alice"));
        let bobs = token(&refresh("bob"));
        let (how, headers, body) = carriers(&bobs).swap_remove(i);
        assert_logged_out(&logout_carrying(&gw, &a, &headers, &body).await);
        assert_refused_as_revoked(&gw, "/x", &a).await;
        let reply = get_with_token(&gw, "/refresh", &bobs).await;
        assert_eq!(
            reply.0, 200,
            "bob's refresh token sent by {how} with alice's logout was revoked: {}",
            reply.2
        );
        assert_eq!(echoed(&reply.2)["headers"]["x-auth-subject"], "bob");
    }

    // An access token in the refresh carrier is not a refresh token: not revoked.
    let a = token(&access("alice"));
    let other_access = token(&access("alice"));
    assert_logged_out(&logout_with(&gw, &a, &[("X-Refresh-Token", &other_access)], "").await);
    assert_accepted(&gw, "/x", &other_access, "alice").await;
}

#[tokio::test]
async fn revoke_refresh_false_leaves_the_refresh_token_alone() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("logout.revoke_refresh", json!(false));
    })
    .await;
    for i in 0..CARRIERS {
        let a = token(&access("alice"));
        let r = token(&refresh("alice"));
        let (how, headers, body) = carriers(&r).swap_remove(i);
        assert_logged_out(&logout_carrying(&gw, &a, &headers, &body).await);
        assert_refused_as_revoked(&gw, "/x", &a).await;
        let reply = get_with_token(&gw, "/refresh", &r).await;
        assert_eq!(
            reply.0, 200,
            "revoke_refresh: false, yet the refresh token sent by {how} was revoked: {}",
            reply.2
        );
    }
}

// ---------------------------------------------------------------------------
// 4. Sessions (`sid`)
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logout_with_a_sid_revokes_the_whole_session() {
    let (_up, gw) = start_sqlite(|_| {}).await;
    let s = format!("sid-{}", unique_jti());
    let t = format!("sid-{}", unique_jti());
    // Issued before the logout: the session revocation is a cut-off at its time.
    let issued = now() - 5;
    let a1 = token(&access("alice").with(json!({ "sid": s, "iat": issued })));
    let r1 = token(&refresh("alice").with(json!({ "sid": s, "iat": issued })));
    let a2 = token(&access("alice").with(json!({ "sid": s, "iat": issued })));
    let b = token(&access("alice").with(json!({ "sid": t, "iat": issued })));

    for tok in [&a1, &a2, &b] {
        assert_accepted(&gw, "/x", tok, "alice").await;
    }
    assert_accepted(&gw, "/refresh", &r1, "alice").await;

    // Issued in the logout's own second (a client's tokens typically are): a whole-
    // second `iat` cannot tell it from a token issued before the logout; refused too.
    let same_second = token(&refresh("alice").with(json!({ "sid": s, "iat": now() })));
    // R1 is not sent along: the session revocation alone must catch it.
    let logout_second = now();
    assert_logged_out(&logout(&gw, &a1).await);

    assert_refused_as_revoked(&gw, "/x", &a1).await;
    assert_refused_as_revoked(&gw, "/x", &a2).await;
    assert_refused_as_revoked(&gw, "/refresh", &r1).await;
    assert_refused_as_revoked(&gw, "/refresh", &same_second).await;
    // A token the provider issues in the session later (from the next second on) is
    // accepted: the provider's session outlives the gateway's logout.
    while now() <= logout_second + 1 {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let later = token(&access("alice").with(json!({ "sid": s, "iat": now() })));
    assert_accepted(&gw, "/x", &later, "alice").await;
    // Another session of the same subject is untouched.
    assert_accepted(&gw, "/x", &b, "alice").await;

    // The session revocation is durable.
    let gw = kill_and_restart(gw).await;
    assert_refused_as_revoked(&gw, "/x", &a2).await;
    assert_refused_as_revoked(&gw, "/refresh", &r1).await;
    assert_accepted(&gw, "/x", &b, "alice").await;
}

// ---------------------------------------------------------------------------
// 5. & 6. `portcullis revoke` while the gateway runs
// ---------------------------------------------------------------------------

#[tokio::test]
async fn revoke_sub_refuses_older_tokens_of_that_subject_only() {
    // Leeway lets the "new" token carry an iat one second ahead of the cut-off.
    let (_up, gw) = start_sqlite(|cfg| {
        cfg.set("jwt.leeway", json!("5s"));
    })
    .await;
    let before = now();
    let old = token(&access("alice").with(json!({ "iat": before - 5 })));
    let old_refresh = token(&refresh("alice").with(json!({ "iat": before - 5 })));
    let no_iat = token(&access("alice").without("iat"));
    let bob = token(&access("bob").with(json!({ "iat": before - 5 })));
    assert_accepted(&gw, "/x", &old, "alice").await;
    assert_accepted(&gw, "/x", &no_iat, "alice").await;
    assert_accepted(&gw, "/x", &bob, "bob").await;

    cli_revoke(&gw, &["--sub", "alice"]).await;
    let written = Instant::now();
    // The cut-off the command recorded is at most this second.
    let cutoff_bound = now();

    let reply = refused_within_a_second(&gw, "/x", &old, written).await;
    assert_revoked(&reply);
    assert_refused_as_revoked(&gw, "/refresh", &old_refresh).await;
    // Without an iat a token cannot prove it is newer.
    assert_refused_as_revoked(&gw, "/x", &no_iat).await;
    // Other subjects are untouched.
    assert_accepted(&gw, "/x", &bob, "bob").await;
    // A token issued after the cut-off passes.
    let new = token(&access("alice").with(json!({ "iat": cutoff_bound + 1 })));
    assert_accepted(&gw, "/x", &new, "alice").await;
}

#[tokio::test]
async fn revoke_token_from_the_cli_is_enforced_within_a_second() {
    let (_up, gw) = start_sqlite(|_| {}).await;
    let with_jti = token(&access("alice"));
    // Without a jti the revocation key is the token's sha256.
    // (The two differ in one claim, so their digests differ.)
    let without_jti = token(&access("alice").without("jti").with(json!({ "n": 1 })));
    let untouched = token(&access("alice").without("jti").with(json!({ "n": 2 })));
    for t in [&with_jti, &without_jti, &untouched] {
        assert_accepted(&gw, "/x", t, "alice").await;
    }

    cli_revoke(&gw, &["--token", &with_jti]).await;
    let written = Instant::now();
    assert_revoked(&refused_within_a_second(&gw, "/x", &with_jti, written).await);

    cli_revoke(&gw, &["--token", &without_jti]).await;
    let written = Instant::now();
    assert_revoked(&refused_within_a_second(&gw, "/x", &without_jti, written).await);

    assert_accepted(&gw, "/x", &untouched, "alice").await;

    // And they stay revoked across a restart.
    let gw = kill_and_restart(gw).await;
    assert_refused_as_revoked(&gw, "/x", &with_jti).await;
    assert_refused_as_revoked(&gw, "/x", &without_jti).await;
    assert_accepted(&gw, "/x", &untouched, "alice").await;
}

#[tokio::test]
async fn revoke_jti_from_the_cli_is_enforced_within_a_second() {
    let (_up, gw) = start_sqlite(|_| {}).await;
    let jti = unique_jti();
    let exp = now() + 600;
    let t = token(&access("alice").with(json!({ "jti": jti, "exp": exp })));
    let other = token(&access("alice"));
    assert_accepted(&gw, "/x", &t, "alice").await;

    cli_revoke(&gw, &["--jti", &jti, "--exp", &exp.to_string()]).await;
    let written = Instant::now();
    assert_revoked(&refused_within_a_second(&gw, "/x", &t, written).await);
    assert_accepted(&gw, "/x", &other, "alice").await;
}

// ---------------------------------------------------------------------------
// 7. Cookie logout and CSRF
// ---------------------------------------------------------------------------

#[tokio::test]
async fn cookie_logout_needs_the_csrf_header() {
    let (_up, gw) = start_with(|cfg| {
        cfg.set("jwt.token_location", json!(["headers", "cookies"]));
    })
    .await;
    let csrf = "csrf-value-for-logout";
    let t = token(&access("alice").with(json!({ "csrf": csrf })));
    let cookie = format!("access_token_cookie={t}");

    let reply = request(gw.edge, "POST", "/logout", &[("Cookie", &cookie)], "").await;
    assert_refused(
        &reply,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );
    let reply = request(
        gw.edge,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("X-CSRF-TOKEN", "not-the-claim")],
        "",
    )
    .await;
    assert_refused(
        &reply,
        401,
        "CSRFError",
        "CSRF double submit does not match",
    );
    // The refused logouts revoked nothing.
    assert_forwarded(&get(gw.edge, "/x", &[("Cookie", &cookie)]).await);

    let reply = request(
        gw.edge,
        "POST",
        "/logout",
        &[("Cookie", &cookie), ("X-CSRF-TOKEN", csrf)],
        "",
    )
    .await;
    assert_logged_out(&reply);

    assert_revoked(&get(gw.edge, "/x", &[("Cookie", &cookie)]).await);
    assert_refused_as_revoked(&gw, "/x", &t).await;
}

// ---------------------------------------------------------------------------
// 8. logout.forward, custom path and methods
// ---------------------------------------------------------------------------

#[tokio::test]
async fn logout_forward_passes_the_logout_on_after_revoking() {
    let (up, gw) = start_with(|cfg| {
        cfg.set("logout.forward", json!(true));
    })
    .await;
    let t = token(&access("alice"));
    let reply = logout(&gw, &t).await;
    // The answer is the upstream's echo, not the gateway's own "Logged out".
    let echo = assert_forwarded(&reply);
    assert_eq!(echo["method"], "POST", "echo: {echo}");
    assert_eq!(echo["path"], "/logout", "echo: {echo}");
    assert_eq!(echo["headers"]["x-auth-subject"], "alice", "echo: {echo}");
    assert!(
        up.seen().contains(&"POST /logout".to_string()),
        "upstream saw {:?}",
        up.seen()
    );
    assert_refused_as_revoked(&gw, "/x", &t).await;
    // A forwarded logout still needs an unrevoked token, and is not forwarded then.
    let seen_before = up.seen().len();
    assert_revoked(&logout(&gw, &t).await);
    assert_eq!(up.seen().len(), seen_before, "upstream saw {:?}", up.seen());
}

#[tokio::test]
async fn custom_logout_path_and_methods() {
    let (up, gw) = start_with(|cfg| {
        cfg.set("logout.path", json!("/auth/signout"));
        cfg.set("logout.methods", json!(["POST", "DELETE"]));
    })
    .await;
    let t = token(&access("alice"));

    // GET is not a logout method: it passes through to the route, revoking nothing.
    let echo = assert_forwarded(&get_with_token(&gw, "/auth/signout", &t).await);
    assert_eq!(echo["method"], "GET");
    assert_eq!(echo["path"], "/auth/signout");
    assert!(
        up.seen().contains(&"GET /auth/signout".to_string()),
        "upstream saw {:?}",
        up.seen()
    );
    assert_accepted(&gw, "/x", &t, "alice").await;

    // /logout is an ordinary path now.
    let echo = assert_forwarded(&logout(&gw, &t).await);
    assert_eq!(echo["path"], "/logout");
    assert_accepted(&gw, "/x", &t, "alice").await;

    // DELETE logs out, answered by the gateway itself.
    let reply = request(
        gw.edge,
        "DELETE",
        "/auth/signout",
        &[("Authorization", &bearer(&t))],
        "",
    )
    .await;
    assert_logged_out(&reply);
    assert!(
        !up.seen().contains(&"DELETE /auth/signout".to_string()),
        "upstream saw {:?}",
        up.seen()
    );
    assert_refused_as_revoked(&gw, "/x", &t).await;

    // POST too.
    let t2 = token(&access("alice"));
    let reply = request(
        gw.edge,
        "POST",
        "/auth/signout",
        &[("Authorization", &bearer(&t2))],
        "",
    )
    .await;
    assert_logged_out(&reply);
    assert_refused_as_revoked(&gw, "/x", &t2).await;
}
