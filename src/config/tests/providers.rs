// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `providers:` and `routes[].providers`.

use super::{check_rows, load, Row};

const S: &str = "0123456789abcdef0123456789abcdef";

pub(super) const ROWS: &[Row] = &[
    (
        "providers: [partners]\n",
        "providers",
        Some(1),
        "must be a mapping of name",
    ),
    (
        "providers:\n  partners:\n    algorithms: [RS256]\n    jwks_url: https://p.test/jwks\n",
        "providers.partners.issuer",
        Some(2),
        "required: tokens are matched to a provider by their iss",
    ),
    (
        "providers:\n  partners:\n    issuer: https://p.test\n    algorithms: [RS256]\n    jwks_url: ftp://p.test/jwks\n",
        "providers.partners.jwks_url",
        Some(5),
        "is not an http(s) URL",
    ),
    (
        "providers:\n  default:\n    issuer: https://p.test\n    secret: 0123456789abcdef0123456789abcdef\n",
        "providers.default",
        Some(2),
        "`default` is the provider of the `jwt` section",
    ),
    (
        "providers:\n  bad+name:\n    issuer: https://p.test\n    secret: 0123456789abcdef0123456789abcdef\n",
        "providers.bad+name",
        Some(2),
        "is not a provider name",
    ),
    (
        "providers:\n  partners:\n    issuer: https://p.test\n",
        "providers.partners",
        Some(2),
        "one of secret, public_key_file or jwks_url is required",
    ),
    (
        "providers:\n  partners:\n    issuer: https://p.test\n    secret: 0123456789abcdef0123456789abcdef\n    token_location: [cookies]\n",
        "providers.partners.token_location",
        Some(5),
        "unknown field `token_location`",
    ),
    (
        "providers:\n  partners:\n    issuer: https://p.test\n    jwks_url: https://p.test/jwks\n",
        "providers.partners.algorithms",
        Some(2),
        "allows only HMAC",
    ),
    (
        "providers:\n  partners:\n    issuer: https://p.test\n    algorithms: [RS256, none]\n    jwks_url: https://p.test/jwks\n",
        "providers.partners.algorithms[1]",
        Some(4),
        "`none` is never accepted",
    ),
    (
        "providers:\n  partners:\n    issuer: https://p.test\n    algorithms: [RS256]\n    public_key_file: missing.pem\n",
        "providers.partners.public_key_file",
        Some(5),
        "does not exist",
    ),
    (
        "providers:\n  a:\n    issuer: https://same.test\n    secret: 0123456789abcdef0123456789abcdef\n  b:\n    issuer: https://same.test\n    secret: 0123456789abcdef0123456789abcdef\n",
        "providers.b.issuer",
        Some(6),
        "is already the issuer of providers.a",
    ),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  issuer: https://same.test\nproviders:\n  a:\n    issuer: https://same.test\n    secret: 0123456789abcdef0123456789abcdef\n",
        "providers.a.issuer",
        Some(6),
        "is already the issuer of jwt (the default provider)",
    ),
    (
        "providers:\n  a:\n    issuer: https://a.test\n    secret: 0123456789abcdef0123456789abcdef\n    leeway: 30\n",
        "providers.a.leeway",
        Some(5),
        "is not a duration",
    ),
    (
        "routes:\n  - prefix: /a\n    upstream: app\n  - prefix: /b\n    upstream: app\n  - prefix: /c\n    upstream: app\n  - prefix: /\n    upstream: app\n    providers: [nope]\n",
        "routes[3].providers",
        Some(10),
        "no provider named \"nope\" (defined: default)",
    ),
    (
        "routes:\n  - prefix: /\n    upstream: app\n    providers: []\n",
        "routes[0].providers",
        Some(4),
        "is empty",
    ),
];

#[test]
fn provider_rows() {
    check_rows(ROWS);
}

#[test]
fn routes_name_providers_by_index_default_first() {
    let yaml = format!(
        "providers:\n  partners:\n    issuer: https://p.test\n    secret: {S}\n  tenant-b:\n    issuer: https://b.test\n    secret: {S}\n\
         routes:\n  - prefix: /p\n    upstream: app\n    providers: [partners, default, partners]\n  - prefix: /\n    upstream: app\n"
    );
    let config = load(&yaml).expect("valid");
    let names: Vec<&str> = config.providers.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["default", "partners", "tenant-b"]);
    assert_eq!(config.routes[0].providers, [1, 0]);
    assert_eq!(config.routes[1].providers, [0]);
    // A provider's algorithms default to jwt's.
    assert_eq!(config.providers[1].algorithms, config.jwt.algorithms);
    assert!(config
        .summary()
        .contains("provider  partners for iss https://p.test"));
}
