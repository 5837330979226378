//! One fetch of a provider's key set, and what its documents say: the HTTP client, the
//! GET of a JSON document (size-limited, with its `Cache-Control: max-age`), the key
//! set's URL (`jwt.jwks_url`, or `jwks_uri` from the discovery document), and the
//! usable keys of a JWKS document. Keeping the fetched set fresh is [`super::Jwks`]'s.
//!
//! Only asymmetric keys are taken from a JWKS (an `oct` key published by a provider is
//! ignored), and each key verifies only the algorithms it can: its own `alg` when it
//! names one, else those of its type and curve that `jwt.algorithms` allows.

use super::JwksSource;
use bytes::Bytes;
use http::{header, Request, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

/// Largest JWKS or discovery document accepted.
const MAX_DOCUMENT: usize = 1 << 20;

/// One usable key of the set.
pub struct JwkKey {
    pub kid: Option<String>,
    /// The algorithms this key may verify (a subset of `jwt.algorithms`).
    pub algorithms: Vec<Algorithm>,
    pub key: DecodingKey,
}

/// The client a key set is fetched with (HTTPS, or plain HTTP).
pub(super) type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// A client trusting `ca_file` (`jwt.jwks_ca_file`) or the system's roots.
/// Fails only when `ca_file` cannot be used.
pub(super) fn client(ca_file: Option<&Path>) -> Result<HttpClient, crate::tls::TlsError> {
    let tls = crate::tls::client_config(ca_file)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(Duration::from_secs(2)));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new()).build(connector))
}

/// Why a fetch produced no key set.
pub(super) enum FetchError {
    /// Unreachable, an error status, not JSON, no `keys`: the last good key set is kept.
    Failed(String),
    /// The provider answered, but not usably for this config: not ready until fixed.
    /// `reason` is `/readyz`'s; `hint` is added to the error log.
    Unusable { reason: String, hint: String },
}

impl From<String> for FetchError {
    fn from(e: String) -> Self {
        FetchError::Failed(e)
    }
}

impl From<&str> for FetchError {
    fn from(e: &str) -> Self {
        FetchError::Failed(e.to_owned())
    }
}

/// The URL of the key set: `jwt.jwks_url`, or the `jwks_uri` of the issuer's discovery
/// document (fetched now, and used only when its `issuer` is exactly `jwt.issuer`).
pub(super) async fn key_set_url(
    client: &HttpClient,
    source: &JwksSource,
) -> Result<String, FetchError> {
    Ok(match source {
        JwksSource::Url(url) => url.clone(),
        JwksSource::Discovery { issuer } => {
            let discovery_url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let (document, _) = get_json(client, &discovery_url).await?;
            check_discovery_issuer(&document, issuer, &discovery_url)?;
            document
                .get("jwks_uri")
                .and_then(Value::as_str)
                .ok_or_else(|| format!("{discovery_url} has no jwks_uri"))?
                .to_owned()
        }
    })
}

/// GETs the JSON document at `url`, and the `max-age` of its `Cache-Control`.
pub(super) async fn get_json(
    client: &HttpClient,
    url: &str,
) -> Result<(Value, Option<Duration>), String> {
    let uri: Uri = url.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    let request = Request::get(uri)
        .header(header::ACCEPT, "application/json")
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let response = client
        .request(request)
        .await
        .map_err(|e| format!("GET {url}: {}", crate::error::error_chain(&e)))?;
    if !response.status().is_success() {
        return Err(format!("GET {url}: status {}", response.status()));
    }
    let max_age = response
        .headers()
        .get(header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_max_age);
    let body = Limited::new(response.into_body(), MAX_DOCUMENT)
        .collect()
        .await
        .map_err(|e| format!("GET {url}: {e}"))?
        .to_bytes();
    let json = serde_json::from_slice(&body).map_err(|e| format!("GET {url}: not JSON: {e}"))?;
    Ok((json, max_age))
}

/// OpenID Connect Discovery §4.3: the document's `issuer` must be identical to the one
/// it was looked up with, else the document must not be used.
fn check_discovery_issuer(document: &Value, issuer: &str, url: &str) -> Result<(), FetchError> {
    let found = document.get("issuer").and_then(Value::as_str);
    if found == Some(issuer) {
        return Ok(());
    }
    let found = found.map_or_else(|| "none".to_owned(), |f| format!("{f:?}"));
    Err(FetchError::Unusable {
        reason: format!(
            "jwks: the discovery document's issuer {found} differs from jwt.issuer {issuer:?}"
        ),
        hint: format!(
            "{url} is not used: OpenID Connect Discovery §4.3 requires them to be identical \
             (a trailing slash counts); set jwt.issuer to exactly the provider's issuer, \
             the `iss` its tokens carry"
        ),
    })
}

/// Most keys [`describe_keys`] lists.
const DESCRIBED_KEYS: usize = 10;

/// The keys of a JWKS document as an operator reads them: `EC P-256 kid=a, RSA kid=b alg=PS256`.
pub(super) fn describe_keys(document: &Value) -> String {
    let items = document
        .get("keys")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    if items.is_empty() {
        return "none".to_owned();
    }
    let mut described: Vec<String> = items
        .iter()
        .take(DESCRIBED_KEYS)
        .map(|item| {
            let field = |name: &str| item.get(name).and_then(Value::as_str);
            let mut d = field("kty").unwrap_or("no kty").to_owned();
            for (name, shown) in [
                ("crv", ""),
                ("kid", "kid="),
                ("alg", "alg="),
                ("use", "use="),
            ] {
                // `use: sig` is what a usable key says anyway.
                if let Some(value) = field(name).filter(|v| !(name == "use" && *v == "sig")) {
                    d.push(' ');
                    d.push_str(shown);
                    d.push_str(value);
                }
            }
            d
        })
        .collect();
    if items.len() > DESCRIBED_KEYS {
        described.push(format!("and {} more", items.len() - DESCRIBED_KEYS));
    }
    described.join(", ")
}

/// `max-age=N` from a `Cache-Control` value.
fn parse_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|directive| {
        let (name, seconds) = directive.trim().split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("max-age") {
            return None;
        }
        seconds
            .trim()
            .trim_matches('"')
            .parse()
            .ok()
            .map(Duration::from_secs)
    })
}

/// The usable keys of a JWKS document. Keys that are malformed, symmetric, or fit none
/// of `allowed` are skipped (a provider may publish keys for other purposes).
pub fn parse_key_set(document: &Value, allowed: &[Algorithm]) -> Result<Vec<JwkKey>, String> {
    let items = document
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("the JWKS has no \"keys\" array")?;
    let mut keys = Vec::new();
    for item in items {
        let Ok(jwk) = serde_json::from_value::<Jwk>(item.clone()) else {
            continue;
        };
        if let Some(key) = usable_key(&jwk, allowed) {
            keys.push(key);
        }
    }
    Ok(keys)
}

fn usable_key(jwk: &Jwk, allowed: &[Algorithm]) -> Option<JwkKey> {
    use jsonwebtoken::jwk::{KeyOperations, PublicKeyUse};
    if matches!(&jwk.common.public_key_use, Some(u) if *u != PublicKeyUse::Signature) {
        return None;
    }
    // `key_ops` (RFC 7517 §4.3), when given, must allow verifying.
    if matches!(&jwk.common.key_operations, Some(ops) if !ops.contains(&KeyOperations::Verify)) {
        return None;
    }
    let by_type: &[Algorithm] = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => &[
            Algorithm::RS256,
            Algorithm::RS384,
            Algorithm::RS512,
            Algorithm::PS256,
            Algorithm::PS384,
            Algorithm::PS512,
        ],
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => &[Algorithm::ES256],
            EllipticCurve::P384 => &[Algorithm::ES384],
            _ => &[],
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            &[Algorithm::EdDSA]
        }
        // Symmetric keys are never taken from a JWKS, nor unknown key types.
        _ => &[],
    };
    let named = match jwk.common.key_algorithm {
        Some(ka) => Some(Algorithm::from_str(&ka.to_string()).ok()?),
        None => None,
    };
    let algorithms: Vec<Algorithm> = by_type
        .iter()
        .copied()
        .filter(|a| allowed.contains(a) && named.is_none_or(|n| n == *a))
        .collect();
    if algorithms.is_empty() {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(JwkKey {
        kid: jwk.common.key_id.clone(),
        algorithms,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            parse_max_age("public, max-age=120"),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_max_age("no-cache"), None);
    }

    #[test]
    fn skips_symmetric_unknown_and_disallowed_keys() {
        let doc = json!({"keys": [
            {"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p256", "crv": "P-256",
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
            {"kty": "weird", "kid": "w"},
            // For encrypting only, by `key_ops`.
            {"kty": "EC", "kid": "enc-only", "crv": "P-256", "key_ops": ["encrypt"],
             "x": "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU",
             "y": "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"},
        ]});
        let keys = parse_key_set(&doc, &[Algorithm::ES256, Algorithm::HS256]).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(keys[0].kid.as_deref(), Some("p256"));
        assert_eq!(keys[0].algorithms, vec![Algorithm::ES256]);
        assert!(parse_key_set(&doc, &[Algorithm::RS256]).unwrap().is_empty());
        assert!(parse_key_set(&json!({}), &[Algorithm::RS256]).is_err());
    }

    #[test]
    fn unusable_key_sets_are_described_by_type_curve_and_kid() {
        let doc = json!({"keys": [
            {"kty": "EC", "crv": "P-256", "kid": "a", "use": "sig", "x": "", "y": ""},
            {"kty": "RSA", "kid": "b", "alg": "PS256", "use": "enc"},
            {"kty": "oct", "k": "c2VjcmV0"},
        ]});
        assert_eq!(
            describe_keys(&doc),
            "EC P-256 kid=a, RSA kid=b alg=PS256 use=enc, oct"
        );
        assert_eq!(describe_keys(&json!({"keys": []})), "none");
        let many = json!({"keys": vec![json!({"kty": "EC"}); 12]});
        assert!(describe_keys(&many).ends_with(", and 2 more"));
    }

    #[test]
    fn discovery_issuer_must_be_identical() {
        let doc = json!({"issuer": "https://idp.example/"});
        assert!(check_discovery_issuer(&doc, "https://idp.example/", "u").is_ok());
        match check_discovery_issuer(&doc, "https://idp.example", "u") {
            Err(FetchError::Unusable { reason, .. }) => assert_eq!(
                reason,
                "jwks: the discovery document's issuer \"https://idp.example/\" differs from jwt.issuer \"https://idp.example\""
            ),
            _ => panic!("a trailing slash is a different issuer"),
        }
        assert!(check_discovery_issuer(&json!({}), "https://idp.example", "u").is_err());
    }
}
