//! Static verification and signing keys: HMAC secrets and PEM files, current and previous.
//!
//! A key is only ever used with its own algorithm family: [`KeySet::candidates`] filters
//! by family, so an HS256 token can never be checked against an RSA public key's bytes.

use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, EncodingKey, Header, Validation};
use std::path::Path;

/// Verification keys in the order they are tried: current first, then previous (rotation).
#[derive(Clone, Default)]
pub struct KeySet {
    keys: Vec<DecodingKey>,
}

impl KeySet {
    /// Loads the configured keys. Problems are pushed to `errors` as (key path, message).
    pub fn load(
        secret: Option<&str>,
        previous_secret: Option<&str>,
        public_key_file: Option<&Path>,
        previous_public_key_file: Option<&Path>,
        errors: &mut Vec<(&'static str, String)>,
    ) -> KeySet {
        let mut keys = Vec::new();
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            keys.push(DecodingKey::from_secret(secret.as_bytes()));
        }
        if let Some(path) = public_key_file {
            match read_public_pem(path) {
                Ok(key) => keys.push(key),
                Err(e) => errors.push(("jwt.public_key_file", e)),
            }
        }
        if let Some(secret) = previous_secret.filter(|s| !s.is_empty()) {
            keys.push(DecodingKey::from_secret(secret.as_bytes()));
        }
        if let Some(path) = previous_public_key_file {
            match read_public_pem(path) {
                Ok(key) => keys.push(key),
                Err(e) => errors.push(("jwt.previous_public_key_file", e)),
            }
        }
        KeySet { keys }
    }

    /// Whether some key can verify tokens signed with `alg`.
    pub fn has_family(&self, alg: &Algorithm) -> bool {
        self.candidates(*alg).next().is_some()
    }

    /// The keys of `alg`'s family, current first.
    pub fn candidates(&self, alg: Algorithm) -> impl Iterator<Item = &DecodingKey> {
        let family = alg.family();
        self.keys.iter().filter(move |k| k.family() == family)
    }
}

/// Reads a PEM public key (SPKI or PKCS#1 RSA), whatever its family.
fn read_public_pem(path: &Path) -> Result<DecodingKey, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    DecodingKey::from_rsa_pem(&pem)
        .or_else(|_| DecodingKey::from_ec_pem(&pem))
        .or_else(|_| DecodingKey::from_ed_pem(&pem))
        .map_err(|_| {
            format!(
                "{} holds no RSA, EC or Ed25519 public key in PEM form",
                path.display()
            )
        })
}

/// The key `portcullis token` signs with, and the algorithm it uses.
#[derive(Clone)]
pub struct SigningKey {
    pub algorithm: Algorithm,
    pub key: EncodingKey,
}

impl SigningKey {
    /// Picks the first of `algorithms` for which a signing key is configured: the HMAC
    /// secret for HS*, the private key file for the others.
    pub fn load(
        algorithms: &[Algorithm],
        secret: Option<&str>,
        private_key_file: Option<&Path>,
    ) -> Result<Option<SigningKey>, String> {
        let private_pem = match private_key_file {
            Some(path) => Some(
                std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let key_for = |algorithm: Algorithm| {
            let key = match (algorithm.family(), &private_pem) {
                (AlgorithmFamily::Hmac, _) => secret
                    .filter(|s| !s.is_empty())
                    .map(|s| EncodingKey::from_secret(s.as_bytes())),
                (AlgorithmFamily::Rsa, Some(pem)) => EncodingKey::from_rsa_pem(pem).ok(),
                (AlgorithmFamily::Ec, Some(pem)) => EncodingKey::from_ec_pem(pem)
                    .ok()
                    .or_else(|| sec1_as_pkcs8(pem).map(|der| EncodingKey::from_ec_der(&der))),
                (AlgorithmFamily::Ed, Some(pem)) => EncodingKey::from_ed_pem(pem).ok(),
                _ => None,
            }?;
            // Reading a key does not tell its curve: a P-256 key reads as an ES384 key
            // too, and fails only when it signs. So it signs once here.
            sign_probe(algorithm, &key).is_some().then_some(key)
        };
        // A private key file that fits none of the algorithms is a mistake worth
        // reporting, even when an HMAC secret would do for signing.
        if private_pem.is_some()
            && !algorithms
                .iter()
                .any(|a| a.family() != AlgorithmFamily::Hmac && key_for(*a).is_some())
        {
            return Err(
                "holds no private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC) that signs any algorithm in jwt.algorithms (an EC key signs only the ES* of its curve: ES256 P-256, ES384 P-384)".to_owned(),
            );
        }
        Ok(algorithms
            .iter()
            .find_map(|&algorithm| key_for(algorithm).map(|key| SigningKey { algorithm, key })))
    }

    /// Whether `keys` verifies what this key signs: `None` when `keys` has no key of its
    /// family to ask (HMAC, whose secret is both; or public keys from a JWKS only).
    pub fn verified_by(&self, keys: &KeySet) -> Option<bool> {
        if self.algorithm.family() == AlgorithmFamily::Hmac || !keys.has_family(&self.algorithm) {
            return None;
        }
        let token = sign_probe(self.algorithm, &self.key)?;
        let mut validation = Validation::new(self.algorithm);
        validation.validate_exp = false;
        validation.validate_aud = false;
        validation.required_spec_claims.clear();
        Some(
            keys.candidates(self.algorithm).any(|key| {
                jsonwebtoken::decode::<serde_json::Value>(&token, key, &validation).is_ok()
            }),
        )
    }
}

/// A token of no claims signed with `key` as `algorithm`, or `None` if it cannot sign.
fn sign_probe(algorithm: Algorithm, key: &EncodingKey) -> Option<String> {
    jsonwebtoken::encode(&Header::new(algorithm), &serde_json::json!({}), key).ok()
}
/// A SEC1 `EC PRIVATE KEY` PEM (what `openssl ecparam -genkey` writes) as the PKCS#8
/// DER jsonwebtoken signs with; `None` for anything else.
fn sec1_as_pkcs8(pem: &[u8]) -> Option<Vec<u8>> {
    use aws_lc_rs::signature::{
        EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED_SIGNING,
    };
    use rustls::pki_types::{pem::PemObject, PrivateSec1KeyDer};
    let sec1 = PrivateSec1KeyDer::from_pem_slice(pem).ok()?;
    [
        &ECDSA_P256_SHA256_FIXED_SIGNING,
        &ECDSA_P384_SHA384_FIXED_SIGNING,
    ]
    .into_iter()
    .find_map(|alg| EcdsaKeyPair::from_private_key_der(alg, sec1.secret_sec1_der()).ok())
    .and_then(|pair| pair.to_pkcs8v1().ok())
    .map(|pkcs8| pkcs8.as_ref().to_vec())
}
