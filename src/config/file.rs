//! The shape of `gateway.yaml`, as serde reads it.
//!
//! Leaves are kept as plain strings, numbers and lists here; [`super::parse`] (through
//! the per-section validators beside this file) turns them into typed values (durations,
//! algorithms, URIs, keys) so that one bad value does not hide the others: every
//! semantic error is reported at once. `Default` is the section left out of the file.
//! `deny_unknown_fields` everywhere: a typo must not silently disable a check.

use serde::Deserialize;
use std::collections::BTreeMap;

/// `server:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ServerFile {
    pub listen: Option<String>,
    pub tls: Option<TlsFile>,
    pub max_connections: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub header_read_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub idle_timeout: Option<String>,
    pub max_header_bytes: Option<u64>,
    #[serde(default, deserialize_with = "duration_text")]
    pub shutdown_grace: Option<String>,
    pub access_log: Option<bool>,
}

/// `server.tls:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct TlsFile {
    pub cert_file: Option<String>,
    pub key_file: Option<String>,
}

/// `admin:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct AdminFile {
    pub listen: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub token: Option<String>,
}

/// A YAML value that may be one string or a list of strings (`audience: my-api`).
#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or a list of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `jwt:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct JwtFile {
    pub algorithms: Option<OneOrMany>,
    #[serde(default, deserialize_with = "secret_text")]
    pub secret: Option<String>,
    pub public_key_file: Option<String>,
    pub private_key_file: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub previous_secret: Option<String>,
    pub previous_public_key_file: Option<String>,
    pub jwks_url: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub jwks_refresh: Option<String>,
    pub jwks_ca_file: Option<String>,
    pub discovery: Option<bool>,
    pub issuer: Option<String>,
    pub audience: Option<OneOrMany>,
    #[serde(default, deserialize_with = "duration_text")]
    pub leeway: Option<String>,
    pub required_typ: Option<String>,
    pub token_location: Option<OneOrMany>,
    pub header_name: Option<String>,
    pub header_type: Option<String>,
    pub access_cookie_name: Option<String>,
    pub refresh_cookie_name: Option<String>,
    pub query_string_name: Option<String>,
    pub csrf: Option<CsrfFile>,
    /// A number of bytes or a size string (`64MiB`): read by `Checker::size`.
    pub token_cache_max_bytes: Option<serde_yaml::Value>,
}

/// `providers.<name>:`: another token issuer, with the key and claim settings of `jwt`
/// (token locations, cookies and CSRF stay `jwt`'s for every provider).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ProviderFile {
    pub issuer: Option<String>,
    pub algorithms: Option<OneOrMany>,
    #[serde(default, deserialize_with = "secret_text")]
    pub secret: Option<String>,
    pub public_key_file: Option<String>,
    pub private_key_file: Option<String>,
    #[serde(default, deserialize_with = "secret_text")]
    pub previous_secret: Option<String>,
    pub previous_public_key_file: Option<String>,
    pub jwks_url: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub jwks_refresh: Option<String>,
    pub jwks_ca_file: Option<String>,
    pub discovery: Option<bool>,
    pub audience: Option<OneOrMany>,
    #[serde(default, deserialize_with = "duration_text")]
    pub leeway: Option<String>,
    pub required_typ: Option<String>,
}

/// `jwt.csrf:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct CsrfFile {
    pub enabled: Option<bool>,
    pub header_name: Option<String>,
    pub methods: Option<OneOrMany>,
}

/// `blocklist:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct BlocklistFile {
    pub store: Option<String>,
    pub sqlite_path: Option<String>,
    pub redis_url: Option<String>,
    pub redis_ca_file: Option<String>,
    pub redis_sentinel: Option<RedisSentinelFile>,
    pub key_prefix: Option<String>,
    pub cache_max_entries: Option<u64>,
    pub on_store_error: Option<String>,
}

/// `blocklist.redis_sentinel:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct RedisSentinelFile {
    pub master_name: Option<String>,
    pub addresses: Option<Vec<String>>,
}

/// `logout:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct LogoutFile {
    pub path: Option<String>,
    pub methods: Option<OneOrMany>,
    pub revoke_refresh: Option<bool>,
    pub forward: Option<bool>,
    pub backchannel_path: Option<String>,
    pub backchannel_audience: Option<OneOrMany>,
    pub backchannel_revokes: Option<String>,
}

/// `upstreams.<name>:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct UpstreamFile {
    pub url: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub connect_timeout: Option<String>,
    #[serde(default, deserialize_with = "duration_text")]
    pub timeout: Option<String>,
    pub ca_file: Option<String>,
}

/// `routes[i]:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct RouteFile {
    pub prefix: Option<String>,
    pub upstream: Option<String>,
    pub auth: Option<String>,
    pub fresh: Option<bool>,
    pub require_claims: Option<BTreeMap<String, serde_yaml::Value>>,
    pub providers: Option<OneOrMany>,
}

/// `forward:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ForwardFile {
    pub token: Option<bool>,
    pub identity_headers: Option<BTreeMap<String, String>>,
    pub strip_headers: Option<OneOrMany>,
}

/// `forward_auth:`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a mapping of keys")]
pub struct ForwardAuthFile {
    pub path: Option<String>,
    pub trusted_proxies: Option<OneOrMany>,
}

/// The top-level sections; anything else at the top level is an unknown key.
pub const SECTIONS: &[&str] = &[
    "server",
    "admin",
    "jwt",
    "providers",
    "blocklist",
    "logout",
    "upstreams",
    "routes",
    "forward_auth",
    "forward",
];

/// A secret or token as written: text, or a whole number YAML read as one
/// (`secret: 123456`), taken as its digits. A secret is bytes; YAML's typing of them
/// is no reason to refuse the file.
fn secret_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(ScalarText {
        expecting: "a string",
        fractions: false,
    })
}

/// A duration as written: text (`30s`), or a bare number kept as its text so the
/// validator gives it the same hint as any other duration without a unit, instead of
/// serde's "invalid type: integer".
fn duration_text<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    d.deserialize_any(ScalarText {
        expecting: "a duration such as 500ms, 30s, 15m or 20d",
        fractions: true,
    })
}

/// A scalar as text: a string as it is, a number as its digits (with `fractions`, a
/// fractional one too), null as absent.
struct ScalarText {
    expecting: &'static str,
    fractions: bool,
}

impl serde::de::Visitor<'_> for ScalarText {
    type Value = Option<String>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str(self.expecting)
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Some(v.to_owned()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Some(v.to_string()))
    }
    fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Self::Value, E> {
        if self.fractions {
            Ok(Some(v.to_string()))
        } else {
            Err(E::invalid_type(serde::de::Unexpected::Float(v), &self))
        }
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}
