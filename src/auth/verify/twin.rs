//! The other valid encoding of an ECDSA-signed token.
//!
//! An ECDSA signature `(r, s)` verifies as `(r, n - s)` too (`n`: the curve's group
//! order), and anyone can compute it without the key. A token without `jti` is revoked
//! by the SHA-256 of its encoding (CONTRACT §3): its twin, the same header and claims
//! with `n - s`, has another digest, and would pass once the token is revoked. The
//! gateway therefore checks the twin's digest too (`VerifiedToken::twin_key`); what it
//! records stays the contract's key, the digest of the token as sent.
//!
//! EdDSA (RFC 8032 refuses `S >= L`), RSA PKCS#1 v1.5 (deterministic) and HMAC have
//! no such second encoding; RSA-PSS signatures are randomized but need the key.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::Algorithm;

/// The order of the P-256 group (FIPS 186-4, D.1.2.3).
const P256_ORDER: [u8; 32] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0x00, 0x00, 0x00, 0x00, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xBC, 0xE6, 0xFA, 0xAD, 0xA7, 0x17, 0x9E, 0x84, 0xF3, 0xB9, 0xCA, 0xC2, 0xFC, 0x63, 0x25, 0x51,
];

/// The order of the P-384 group (FIPS 186-4, D.1.2.4).
const P384_ORDER: [u8; 48] = [
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF,
    0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xC7, 0x63, 0x4D, 0x81, 0xF4, 0x37, 0x2D, 0xDF,
    0x58, 0x1A, 0x0D, 0xB2, 0x48, 0xB0, 0xA7, 0x7A, 0xEC, 0xEC, 0x19, 0x6A, 0xCC, 0xC5, 0x29, 0x73,
];

/// `token` with its ECDSA signature's `s` replaced by `n - s`, for an ES256 or ES384
/// token whose signature is `r || s` of the curve's size; `None` otherwise.
pub fn ecdsa_twin(token: &str) -> Option<String> {
    let header = jsonwebtoken::decode_header(token).ok()?;
    let order: &[u8] = match header.alg {
        Algorithm::ES256 => &P256_ORDER,
        Algorithm::ES384 => &P384_ORDER,
        _ => return None,
    };
    let (signing_input, signature) = token.rsplit_once('.')?;
    let mut signature = URL_SAFE_NO_PAD.decode(signature).ok()?;
    if signature.len() != 2 * order.len() {
        return None;
    }
    let s = &mut signature[order.len()..];
    // 0 < s < n for any signature that verified; anything else has no twin.
    if s.iter().all(|&b| b == 0) || !less_than(s, order) {
        return None;
    }
    subtract_from(order, s);
    Some(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(&signature)
    ))
}

/// Whether big-endian `a` < `b` (same length).
fn less_than(a: &[u8], b: &[u8]) -> bool {
    a.iter()
        .zip(b)
        .find(|(x, y)| x != y)
        .is_some_and(|(x, y)| x < y)
}

/// `s = n - s`, big-endian, for `0 < s < n` (no borrow out of the top byte).
fn subtract_from(n: &[u8], s: &mut [u8]) {
    let mut borrow = 0u16;
    for (digit, &top) in s.iter_mut().zip(n).rev() {
        let difference = u16::from(top)
            .wrapping_sub(u16::from(*digit))
            .wrapping_sub(borrow);
        borrow = u16::from(u16::from(top) < u16::from(*digit) + borrow);
        *digit = difference as u8;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
        ECDSA_P256_SHA256_FIXED_SIGNING, ECDSA_P384_SHA384_FIXED, ECDSA_P384_SHA384_FIXED_SIGNING,
    };

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn the_twin_verifies_and_differs_and_its_twin_is_the_token() {
        let rng = SystemRandom::new();
        for (alg, signing, verifying) in [
            (
                "ES256",
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &ECDSA_P256_SHA256_FIXED,
            ),
            (
                "ES384",
                &ECDSA_P384_SHA384_FIXED_SIGNING,
                &ECDSA_P384_SHA384_FIXED,
            ),
        ] {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(signing, &rng).unwrap();
            let pair = EcdsaKeyPair::from_pkcs8(signing, pkcs8.as_ref()).unwrap();
            let input = format!(
                "{}.{}",
                b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
                b64(br#"{"sub":"carol","exp":4102444800}"#)
            );
            let public = UnparsedPublicKey::new(verifying, pair.public_key().as_ref().to_vec());
            for _ in 0..8 {
                let signature = pair.sign(&rng, input.as_bytes()).unwrap();
                let token = format!("{input}.{}", b64(signature.as_ref()));
                let twin = ecdsa_twin(&token).expect("an ECDSA token has a twin");
                assert_ne!(twin, token);
                let (twin_input, twin_signature) = twin.rsplit_once('.').unwrap();
                assert_eq!(twin_input, input);
                let twin_signature = URL_SAFE_NO_PAD.decode(twin_signature).unwrap();
                public
                    .verify(input.as_bytes(), &twin_signature)
                    .expect("the twin verifies");
                assert_eq!(ecdsa_twin(&twin).as_deref(), Some(token.as_str()));
            }
        }
    }

    #[test]
    fn other_algorithms_and_odd_signatures_have_none() {
        let header = |alg: &str| b64(format!(r#"{{"alg":"{alg}"}}"#).as_bytes());
        let payload = b64(b"{}");
        for (alg, signature) in [
            ("HS512", vec![1u8; 64]),
            ("EdDSA", vec![1u8; 64]),
            ("ES256", vec![1u8; 63]),
            ("ES256", [vec![1u8; 32], vec![0u8; 32]].concat()),
            ("ES256", [vec![1u8; 32], vec![0xFF; 32]].concat()),
            ("ES384", vec![1u8; 64]),
        ] {
            let token = format!("{}.{payload}.{}", header(alg), b64(&signature));
            assert_eq!(ecdsa_twin(&token), None, "{alg} {}", signature.len());
        }
        assert_eq!(ecdsa_twin("not a token"), None);
    }

    #[test]
    fn subtraction_borrows_across_bytes() {
        let mut s = [0x00, 0x01];
        subtract_from(&[0x01, 0x00], &mut s);
        assert_eq!(s, [0x00, 0xFF]);
        let mut s = [0x00, 0xFF];
        subtract_from(&[0x01, 0x00], &mut s);
        assert_eq!(s, [0x00, 0x01]);
    }
}
