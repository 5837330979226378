//! Revocation objects as the admin API and `portcullis revoke --file` take them (CONTRACT
//! §1, §4): one JSON object, or NDJSON (one object per line) for a bulk import, and the
//! same shape written back by the export (`GET /revocations`), so an export re-imports.
//!
//! Shapes: `{"token": T}`, `{"jti": J, "exp": E}`, `{"sid": S, "exp": E}`, `{"sub": S}`.
//! Each may carry `"provider"`: the name of the provider it revokes at (`default`, the
//! `jwt` section, when absent; a name the config does not define is refused, rather than
//! revoking at the wrong issuer). Keys are stored in that provider's namespace
//! ([`namespaced`]); the export splits them back into the claim text and `"provider"`. Sessions and subjects may carry
//! `"revoked_at"`, the cut-off in Unix seconds (default: now): the export writes it, so a
//! re-import keeps the original cut-off instead of logging out everyone who signed in
//! since. Other keys are ignored, as they always were for single objects.
//!
//! An NDJSON body is all or nothing: every line is parsed before anything is written,
//! and the first bad line is reported by number (from 1; blank lines count but are
//! skipped).

use crate::auth::claim_text;
use crate::auth::providers::{namespaced, split_key};
use crate::auth::verify::token_digest_key;
use crate::blocklist::{Revocation, LATEST_SECOND, WHOLE_SESSION};
use crate::clock::now_unix;
use crate::config::DEFAULT_PROVIDER;
use serde_json::{json, Map, Value};
use std::borrow::Cow;

/// How far in the future a `revoked_at` may lie (clock skew between the machine that
/// exported and the one importing). Further would lock a subject out until then.
pub const FUTURE_SKEW: u64 = 300;

/// The first bad line of an NDJSON body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct LineError {
    /// 1-based.
    pub line: usize,
    pub message: String,
}

/// The revocation a whole token stands for: its `jti` (or digest) until its `exp`. The
/// token is decoded without checking its signature: revoking can only ever refuse more.
pub fn token_revocation(token: &str) -> Result<Revocation, String> {
    let token = token.trim();
    if token.split('.').count() != 3 {
        return Err("token is not a JWT (expected three base64url parts)".into());
    }
    let claims: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
        .map_err(|_| "token is not a JWT (its payload is not base64url-encoded JSON claims)")?;
    let exp = claims
        .get("exp")
        .and_then(Value::as_u64)
        .ok_or("token has no numeric exp")?;
    // The key the gateway gives this token (`Verifier::verify_uncached`).
    let key = claims
        .get("jti")
        .and_then(claim_text)
        .filter(|jti| !jti.is_empty())
        .map_or_else(|| token_digest_key(token), Cow::into_owned);
    Ok(Revocation::Token {
        key,
        exp: storable_seconds(exp),
    })
}

/// Stores record Unix seconds up to 9999-12-31 ([`LATEST_SECOND`]; Redis can keep no
/// more): a later one is taken as that here already, so that every answer, on every
/// store, shows what is recorded.
pub fn storable_seconds(unix: u64) -> u64 {
    unix.min(LATEST_SECOND)
}

/// The provider a revocation object names (`default` when it names none), if it is one
/// of `providers` (every configured name, `default` included).
pub fn provider_of<'a>(
    object: &'a Map<String, Value>,
    providers: &[&str],
) -> Result<&'a str, String> {
    match object.get("provider") {
        None | Some(Value::Null) => Ok(DEFAULT_PROVIDER),
        Some(Value::String(p)) if providers.contains(&p.as_str()) => Ok(p),
        Some(Value::String(p)) => Err(format!(
            "provider {p:?} does not exist (configured: {})",
            providers.join(", ")
        )),
        Some(_) => Err("provider must be a string".into()),
    }
}

/// `r` with its key in `provider`'s namespace.
pub fn at_provider(r: Revocation, provider: &str) -> Revocation {
    let key = |k: String| match namespaced(provider, &k) {
        std::borrow::Cow::Borrowed(_) => k,
        std::borrow::Cow::Owned(n) => n,
    };
    match r {
        Revocation::Token { key: k, exp } => Revocation::Token { key: key(k), exp },
        Revocation::Session { sid, at, exp } => Revocation::Session {
            sid: key(sid),
            at,
            exp,
        },
        Revocation::Subject { sub, at } => Revocation::Subject { sub: key(sub), at },
    }
}

/// One revocation object (see the module docs), judged at `now`, for a config with
/// `providers` (every provider name, `default` included).
pub fn parse_object(value: &Value, now: u64, providers: &[&str]) -> Result<Revocation, String> {
    let Some(object) = value.as_object() else {
        return Err("expected a JSON object".into());
    };
    let provider = provider_of(object, providers)?;
    parse_shape(object, now).map(|r| at_provider(r, provider))
}

/// The revocation a revocation object's shape stands for, at the default provider.
fn parse_shape(object: &Map<String, Value>, now: u64) -> Result<Revocation, String> {
    // `jti`, `sid` and `sub` may be strings or numbers, read as a token's claims are
    // ([`claim_text`]): `{"sub": 12345}` and `{"sub": "12345"}` are the same revocation.
    let text = |key: &str| {
        object
            .get(key)
            .and_then(claim_text)
            .filter(|s| !s.is_empty())
    };
    let number = |key: &str| -> Result<Option<u64>, String> {
        match object.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .map(Some)
                .ok_or_else(|| format!("{key} must be a whole number of Unix seconds")),
        }
    };
    let exp = number("exp")?.map(storable_seconds);
    let revoked_at = number("revoked_at")?.map(storable_seconds);
    let no_revoked_at = |kind: &str| match revoked_at {
        Some(_) => Err(format!("revoked_at applies to sid and sub, not {kind}")),
        None => Ok(()),
    };
    match (text("token"), text("jti"), text("sid"), text("sub")) {
        (Some(token), None, None, None) => {
            no_revoked_at("token")?;
            token_revocation(&token)
        }
        (None, Some(jti), None, None) => {
            no_revoked_at("jti")?;
            Ok(Revocation::Token {
                key: jti.into_owned(),
                exp: exp.ok_or("jti needs a numeric exp")?,
            })
        }
        (None, None, Some(sid), None) => {
            let exp = exp.ok_or("sid needs a numeric exp")?;
            let at = revoked_at.unwrap_or(now);
            // A cut-off at the session revocation's own expiry refuses the whole
            // session: how the export writes one recorded before cut-offs existed.
            if at > exp.max(now + FUTURE_SKEW) {
                return Err("revoked_at is in the future".into());
            }
            Ok(Revocation::Session {
                sid: sid.into_owned(),
                at,
                exp,
            })
        }
        (None, None, None, Some(sub)) => {
            let at = revoked_at.unwrap_or(now);
            if at > now + FUTURE_SKEW {
                return Err("revoked_at is in the future".into());
            }
            Ok(Revocation::Subject {
                sub: sub.into_owned(),
                at,
            })
        }
        _ => Err("expected exactly one of token, jti (+exp), sid (+exp) or sub".into()),
    }
}

/// Every revocation of an NDJSON body, or the first bad line. Nothing is judged
/// half-way: callers record all of them or none.
pub fn parse_ndjson(body: &[u8], providers: &[&str]) -> Result<Vec<Revocation>, LineError> {
    let now = now_unix();
    let mut out = Vec::new();
    for (i, line) in without_bom(body).split(|&b| b == b'\n').enumerate() {
        let line_no = i + 1;
        let fail = |message: String| LineError {
            line: line_no,
            message,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| fail(not_json(&e)))?;
        out.push(parse_object(&value, now, providers).map_err(fail)?);
    }
    Ok(out)
}

/// `body` without a leading UTF-8 byte order mark, which Windows editors write (JSON
/// parsers may ignore one, RFC 8259 §8.1).
pub fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// serde_json's message for a line, where its "at line 1 column 9" would contradict
/// the body line the error names: the column alone.
fn not_json(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let reason = text
        .rsplit_once(" at line ")
        .map_or(text.as_str(), |(reason, _)| reason);
    format!("not JSON: {reason} (column {})", e.column())
}

/// A revocation in the shape [`parse_object`] takes back: the claim text, and
/// `"provider"` for a provider other than `default`.
pub fn to_json(r: &Revocation) -> Value {
    let (_, stored, _) = r.parts();
    let (provider, _) = split_key(stored);
    let mut value = shape_json(r);
    if provider != DEFAULT_PROVIDER {
        if let Some(object) = value.as_object_mut() {
            object.insert("provider".into(), provider.into());
        }
    }
    value
}

/// [`to_json`] without the provider, with the claim text of the key.
fn shape_json(r: &Revocation) -> Value {
    let (_, stored, _) = r.parts();
    let (_, key) = split_key(stored);
    match r {
        Revocation::Token { exp, .. } => json!({"jti": key, "exp": exp}),
        Revocation::Session { at, exp, .. } => {
            // A whole-session record (before cut-offs) as the equivalent cut-off at its
            // own expiry: every token of the session is issued before then.
            let at = if *at == WHOLE_SESSION { *exp } else { *at };
            json!({"sid": key, "exp": exp, "revoked_at": at.min(*exp)})
        }
        Revocation::Subject { at, .. } => json!({"sub": key, "revoked_at": at}),
    }
}

/// Appends `revocations` to `out` as NDJSON lines.
pub fn write_ndjson(revocations: &[Revocation], out: &mut Vec<u8>) {
    for r in revocations {
        // Writing a Value into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, &to_json(r));
        out.push(b'\n');
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &[&str] = &["default"];

    #[test]
    fn a_provider_namespaces_the_key_and_exports_back() {
        let names = &["default", "partners"];
        let now = now_unix();
        let body = format!(
            "{{\"jti\": \"a\", \"exp\": {e}, \"provider\": \"partners\"}}\n{{\"jti\": \"a\", \"exp\": {e}}}\n{{\"sub\": \"u\", \"provider\": \"partners\"}}\n",
            e = now + 600
        );
        let parsed = parse_ndjson(body.as_bytes(), names).unwrap();
        assert_eq!(
            parsed[0],
            Revocation::Token {
                key: "partners\u{1f}a".into(),
                exp: now + 600
            }
        );
        assert_eq!(
            parsed[1],
            Revocation::Token {
                key: "a".into(),
                exp: now + 600
            }
        );
        assert_eq!(to_json(&parsed[0])["provider"], "partners");
        assert_eq!(to_json(&parsed[0])["jti"], "a");
        assert!(to_json(&parsed[1]).get("provider").is_none());
        let mut exported = Vec::new();
        write_ndjson(&parsed, &mut exported);
        assert_eq!(parse_ndjson(&exported, names).unwrap(), parsed);
        // Known to this config only: another config refuses the line.
        assert_eq!(parse_ndjson(&exported, D).unwrap_err().line, 1);
        assert!(parse_object(&json!({"sub": "u", "provider": 7}), now, names).is_err());
    }

    #[test]
    fn parses_every_shape_and_round_trips() {
        let now = now_unix();
        let body = format!(
            "{{\"jti\": \"a\", \"exp\": {e}}}\n\n{{\"sid\": \"s\", \"exp\": {e}, \"revoked_at\": {at}, \"provider\": \"default\"}}\r\n{{\"sub\": \"u\", \"revoked_at\": {at}}}\n{{\"sub\": \"v\"}}\n",
            e = now + 600,
            at = now - 60
        );
        let parsed = parse_ndjson(body.as_bytes(), D).unwrap();
        assert_eq!(parsed.len(), 4);
        assert_eq!(
            parsed[1],
            Revocation::Session {
                sid: "s".into(),
                at: now - 60,
                exp: now + 600
            }
        );
        let mut exported = Vec::new();
        write_ndjson(&parsed[..3], &mut exported);
        assert_eq!(parse_ndjson(&exported, D).unwrap(), parsed[..3]);
    }

    #[test]
    fn reports_the_first_bad_line() {
        let bad = |body: &str| parse_ndjson(body.as_bytes(), D).unwrap_err();
        let ok = "{\"jti\": \"a\", \"exp\": 1}\n";
        assert_eq!(bad(&format!("{ok}\n{{\"jti\": \"b\"}}\n")).line, 3);
        assert_eq!(bad(&format!("{ok}not json")).line, 2);
        let provider = bad(&format!(
            "{ok}{{\"sub\": \"u\", \"provider\": \"partners\"}}"
        ));
        assert_eq!(provider.line, 2);
        assert!(provider.message.contains("does not exist"), "{provider}");
        assert_eq!(bad("[1]").line, 1);
        assert_eq!(bad("{\"jti\": \"a\", \"exp\": -1}").line, 1);
        assert_eq!(bad("{\"jti\": \"a\", \"sub\": \"b\", \"exp\": 1}").line, 1);
        assert_eq!(
            bad("{\"jti\": \"a\", \"exp\": 1, \"revoked_at\": 1}").line,
            1
        );
        let future = now_unix() + 10 * FUTURE_SKEW;
        assert_eq!(
            bad(&format!("{{\"sub\": \"u\", \"revoked_at\": {future}}}")).line,
            1
        );
        assert_eq!(parse_ndjson(b"", D).unwrap(), vec![]);
    }

    #[test]
    fn a_whole_session_exports_as_a_cut_off_at_its_expiry() {
        let whole = Revocation::Session {
            sid: "s".into(),
            at: WHOLE_SESSION,
            exp: now_unix() + 600,
        };
        assert_eq!(to_json(&whole)["revoked_at"], to_json(&whole)["exp"]);
        let mut line = Vec::new();
        write_ndjson(std::slice::from_ref(&whole), &mut line);
        assert!(parse_ndjson(&line, D).is_ok());
    }
}
