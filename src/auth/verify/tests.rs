// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `required_typ`: checked on request tokens, not by `decode_claims`.

use super::*;
use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

const SECRET: &str = "0123456789abcdef0123456789abcdef";

fn verifier(required_typ: &str) -> Verifier {
    let text = format!(
        "jwt:\n  secret: {SECRET}\n  required_typ: {required_typ}\nblocklist:\n  store: memory\n\
         upstreams:\n  app:\n    url: http://127.0.0.1:9\nroutes:\n  - prefix: /\n    upstream: app\n"
    );
    let config =
        crate::config::parse(&text, std::path::Path::new("/nonexistent/g.yaml"), |_| None).unwrap();
    Verifier::new(&config.jwt, Vec::new(), Vec::new(), Arc::default(), None)
}

fn token(typ: Option<&str>) -> String {
    let mut header = Header::new(Algorithm::HS256);
    header.typ = typ.map(str::to_owned);
    let claims = json!({"sub": "alice", "exp": now_unix() + 600});
    jsonwebtoken::encode(
        &header,
        &claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

#[test]
fn required_typ_applies_to_request_tokens_but_not_to_decode_claims() {
    let v = verifier("at+jwt");
    let now = now_unix();
    for ok in ["at+jwt", "AT+JWT", "application/at+jwt"] {
        assert!(v.verify_uncached(&token(Some(ok)), now).is_ok(), "{ok}");
    }
    for refused in [Some("JWT"), Some("logout+jwt"), None] {
        assert_eq!(
            v.verify_uncached(&token(refused), now).err(),
            Some(AuthError::Refused(GatewayError::Decode)),
            "{refused:?}"
        );
    }
    // A back-channel logout token is validated through decode_claims, which does
    // not look at `typ`.
    let logout = token(Some("logout+jwt"));
    let header = jsonwebtoken::decode_header(&logout).unwrap();
    let validation = Validation::new(Algorithm::HS256);
    assert!(v.decode_claims(&logout, &header, &validation).is_ok());
}
