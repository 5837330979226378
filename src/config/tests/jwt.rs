// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `jwt:`, including the provider checks of `config::provider`.

use super::{check_rows, Row};

pub(super) const ROWS: &[Row] = &[
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  issuer: \"\"\n",
        "jwt.issuer",
        Some(3),
        "is empty; leave it out to accept any iss",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  audience: []\n",
        "jwt.audience",
        Some(3),
        "is empty; leave it out to accept any aud",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  audience: [api, \"\"]\n",
        "jwt.audience[1]",
        Some(3),
        "is empty",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  previous_secret: \"\"\n",
        "jwt.previous_secret",
        Some(3),
        "is empty (is its environment variable set to an empty value?)",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  access_cookie_name: \"a b;c\"\n",
        "jwt.access_cookie_name",
        Some(3),
        "\"a b;c\" is not a name a cookie or query parameter can have",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  query_string_name: \"\"\n",
        "jwt.query_string_name",
        Some(3),
        "is not a name a cookie or query parameter can have",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  csrf:\n    methods: []\n",
        "jwt.csrf.methods",
        Some(4),
        "is empty: list at least one method",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  header_type:\n",
        "jwt.header_type",
        Some(3),
        "has no value: give it one, or leave the key out",
    ),
    (
        "jwt:\n",
        "jwt",
        Some(1),
        "required: the algorithms and a key",
    ),
    (
        "jwt:\n  algorithms: [HS256, none]\n  secret: 0123456789abcdef0123456789abcdef\n",
        "jwt.algorithms[1]",
        Some(2),
        "`none` is never accepted",
    ),
    (
        "jwt:\n  algorithms:\n    - HS256\n    - HS999\n  secret: 0123456789abcdef0123456789abcdef\n",
        "jwt.algorithms[1]",
        Some(4),
        "\"HS999\" is not an algorithm",
    ),
    (
        "jwt:\n  algorithms: []\n  secret: 0123456789abcdef0123456789abcdef\n",
        "jwt.algorithms",
        Some(2),
        "at least one algorithm is required",
    ),
    (
        "jwt:\n  algorithms: [RS256]\n  public_key_file: missing.pem\n",
        "jwt.public_key_file",
        Some(3),
        "missing.pem does not exist",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  previous_public_key_file: old.pem\n",
        "jwt.previous_public_key_file",
        Some(3),
        "old.pem does not exist",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  private_key_file: private.pem\n",
        "jwt.private_key_file",
        Some(3),
        "private.pem does not exist",
    ),
    (
        "jwt:\n  algorithms: [RS256]\n  jwks_url: https://idp.test/jwks\n  jwks_ca_file: ca.pem\n",
        "jwt.jwks_ca_file",
        Some(4),
        "ca.pem does not exist",
    ),
    (
        "jwt:\n  algorithms: [RS256]\n  jwks_url: ftp://idp.test/jwks\n",
        "jwt.jwks_url",
        Some(3),
        "\"ftp://idp.test/jwks\" is not an http(s) URL",
    ),
    (
        "jwt:\n  algorithms: [RS256]\n  discovery: true\n",
        "jwt.discovery",
        Some(3),
        "needs jwt.issuer",
    ),
    (
        "jwt:\n  algorithms: [HS256]\n",
        "jwt",
        Some(1),
        "one of secret, public_key_file or jwks_url is required",
    ),
    (
        "jwt:\n  secret: ${EMPTY}\n",
        "jwt.secret",
        Some(2),
        "is empty (is its environment variable set to an empty value?)",
    ),
    // keys::KeySet::load, for files that exist but hold no public key
    (
        "jwt:\n  algorithms: [RS256]\n  public_key_file: Cargo.toml\n",
        "jwt.public_key_file",
        Some(3),
        "holds no RSA, EC or Ed25519 public key",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  previous_public_key_file: Cargo.toml\n",
        "jwt.previous_public_key_file",
        Some(3),
        "holds no RSA, EC or Ed25519 public key",
    ),
    // provider::check_jwks_algorithms: a missing key points at its section
    (
        "jwt:\n  jwks_url: https://idp.test/jwks\n",
        "jwt.algorithms",
        Some(1),
        "allows only HMAC (HS256), but the keys come from jwt.jwks_url",
    ),
    (
        "jwt:\n  algorithms: [HS512]\n  issuer: https://idp.test\n  discovery: true\n",
        "jwt.algorithms",
        Some(2),
        "but the keys come from jwt.discovery",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  required_typ: \"\"\n",
        "jwt.required_typ",
        Some(3),
        "is empty; remove the key to accept any `typ`",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  required_typ: at jwt\n",
        "jwt.required_typ",
        Some(3),
        "\"at jwt\" is not a media type",
    ),
    (
        "jwt:\n  algorithms: [RS256]\n  secret: 0123456789abcdef0123456789abcdef\n",
        "jwt.algorithms[0]",
        Some(2),
        "RS256 is allowed but no configured key can verify it",
    ),
    // keys::SigningKey::load: without a secret to sign with, the unusable key is an error.
    (
        "jwt:\n  algorithms: [RS256]\n  jwks_url: https://idp.test/jwks\n  private_key_file: Cargo.toml\n",
        "jwt.private_key_file",
        Some(4),
        "holds no private key (PEM: PKCS#8, PKCS#1 RSA or SEC1 EC) that signs any algorithm",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_location: [headers, body]\n",
        "jwt.token_location[1]",
        Some(3),
        "\"body\" is not a location; use headers, cookies or query",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_location: []\n",
        "jwt.token_location",
        Some(3),
        "at least one location is required",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  header_name: \"Auth header\"\n",
        "jwt.header_name",
        Some(3),
        "\"Auth header\" is not a valid header name",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  header_type: \"Bear er\"\n",
        "jwt.header_type",
        Some(3),
        "\"Bear er\" holds a space; a scheme is one word (Bearer), or empty for a bare token",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  csrf:\n    header_name: \"x csrf\"\n",
        "jwt.csrf.header_name",
        Some(4),
        "\"x csrf\" is not a valid header name",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  csrf:\n    methods:\n      - POST\n      - \"NOT A METHOD\"\n",
        "jwt.csrf.methods[1]",
        Some(6),
        "\"NOT A METHOD\" is not an HTTP method",
    ),
    (
        "jwt:\n  algorithms: [RS256]\n  jwks_url: https://idp.test/jwks\n  jwks_refresh: hourly\n",
        "jwt.jwks_refresh",
        Some(4),
        "\"hourly\" is not a duration",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  leeway: a bit\n",
        "jwt.leeway",
        Some(3),
        "\"a bit\" is not a duration",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  leeway: 21000d\n",
        "jwt.leeway",
        Some(3),
        "\"21000d\" is more clock skew than a leeway may allow (1d)",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 64MB\n",
        "jwt.token_cache_max_bytes",
        Some(3),
        "\"64MB\" is not a size",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: lots\n",
        "jwt.token_cache_max_bytes",
        Some(3),
        "\"lots\" is not a size",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: -1\n",
        "jwt.token_cache_max_bytes",
        Some(3),
        "-1 is not a whole, non-negative number of bytes",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 1.5\n",
        "jwt.token_cache_max_bytes",
        Some(3),
        "1.5 is not a whole, non-negative number of bytes",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: [1]\n",
        "jwt.token_cache_max_bytes",
        Some(3),
        "must be a number of bytes or a size like 64MiB",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  token_cache_max_bytes: 99999999999GiB\n",
        "jwt.token_cache_max_bytes",
        Some(3),
        "is not a size",
    ),
];

#[test]
fn jwt_errors() {
    check_rows(ROWS);
}
