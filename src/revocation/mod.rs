//! The revocation service: every way a revocation is asked for (a logout, a back-channel
//! logout token, the admin API, `portcullis revoke`, an NDJSON import) becomes the
//! [`Revocation`]s to write here, with one set of rules. The handlers only decide
//! *whether* to revoke and write the result through the [`Blocklist`](crate::blocklist).
//!
//! - [`io`]: the JSON/NDJSON shapes of the admin API, the CLI's `--file` and the export.
//! - [`logout`]: what a logout revokes, from the verified access token.
//! - [`session_cutoff`]: a session revocation as of now, with its lifetime.
//! - [`RevokeTarget`]: what the `revoke` command names on its command line.

pub mod io;

use crate::auth::verify::VerifiedToken;
use crate::blocklist::Revocation;
use crate::clock::now_unix;

pub use io::{parse_ndjson, parse_object, token_revocation, without_bom, write_ndjson, LineError};

/// How long a session (`sid`) revocation lasts when no refresh token tells us: the
/// longest refresh-token lifetime we expect from an identity provider.
pub const SESSION_REVOCATION_TTL: u64 = 30 * 24 * 3600;

/// The cut-off a logout (the gateway's, or the identity provider's back-channel one)
/// puts on session `sid` at `now`: every token of the session that exists is refused,
/// "the refresh token included even when it was not sent" (CONTRACT §3), those issued
/// in this very second too. A whole-second `iat` cannot tell a token issued earlier in
/// this second from one issued after the logout, and a session's tokens are typically
/// minted in the second they are used: T is the next second, so `iat < T` takes them
/// all. A token the identity provider issues later in the session (from the next second
/// on) is accepted. Unlike a subject's cut-off, nobody logs in again into an ended
/// session (a new login gets a new `sid`), so nothing is lost by refusing that second.
/// Kept until `exp` or for [`SESSION_REVOCATION_TTL`], whichever is later, so every
/// refresh token of the session that may still live is covered.
pub fn session_cutoff(sid: String, now: u64, exp: u64) -> Revocation {
    Revocation::Session {
        sid,
        at: now.saturating_add(1),
        exp: exp.max(now.saturating_add(SESSION_REVOCATION_TTL)),
    }
}

/// What a logout with `access` revokes at `now`: the access token itself, the refresh
/// tokens sent along (already judged valid and of the same subject by the caller), and
/// the access token's session as of now; all at the token's provider (its keys are in
/// that provider's namespace already).
pub fn logout(access: &VerifiedToken, refresh: Vec<Revocation>, now: u64) -> Vec<Revocation> {
    let mut revocations = Vec::with_capacity(2 + refresh.len());
    revocations.push(Revocation::Token {
        key: access.revocation_key.clone(),
        exp: access.exp,
    });
    revocations.extend(refresh);
    if let Some(sid) = access.sid_key() {
        revocations.push(session_cutoff(sid.to_owned(), now, access.exp));
    }
    // A token's `exp` may lie past what stores record (9999-12-31): recorded, and then
    // shown, as that bound on every store, as the admin API records it.
    for r in &mut revocations {
        match r {
            Revocation::Token { exp, .. } | Revocation::Session { exp, .. } => {
                *exp = io::storable_seconds(*exp)
            }
            Revocation::Subject { .. } => {}
        }
    }
    revocations
}

/// What `portcullis revoke` names on its command line.
pub enum RevokeTarget {
    /// A whole token (its `jti`, or its digest, until its `exp`).
    Token(String),
    /// A `jti` until `exp`.
    Jti { jti: String, exp: u64 },
    /// Every token of a subject issued until now.
    Subject(String),
}

/// The revocation `target` stands for. A whole token is decoded without checking its
/// signature: revoking can only ever refuse more.
///
/// An empty `jti` or subject is refused, as the admin API and `--file` refuse it: no
/// token carries one, and the export could not be imported again.
pub fn revocation_for(target: RevokeTarget) -> Result<Revocation, String> {
    Ok(match target {
        RevokeTarget::Jti { jti, .. } if jti.is_empty() => {
            return Err("jti must not be empty".into())
        }
        RevokeTarget::Subject(sub) if sub.is_empty() => return Err("sub must not be empty".into()),
        RevokeTarget::Jti { jti, exp } => Revocation::Token {
            key: jti,
            exp: io::storable_seconds(exp),
        },
        RevokeTarget::Subject(sub) => Revocation::Subject {
            sub,
            at: now_unix(),
        },
        RevokeTarget::Token(token) => token_revocation(&token)?,
    })
}
