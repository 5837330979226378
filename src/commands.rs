//! The offline subcommands: `check`, `token` and `revoke`.

use crate::blocklist::Revocation;
use crate::blocklist::StoreError;
use crate::clock::now_unix;
use crate::config::{self, Config};
use crate::revocation::{self, revocation_for, RevokeTarget};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A failed command: its message goes to stderr (exit code 1). Each variant keeps the
/// error it came from, as its `source`.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("{0}")]
    Config(#[from] config::ConfigErrors),
    #[error(
        "no signing key: set jwt.secret (HS*) or jwt.private_key_file for an asymmetric algorithm"
    )]
    NoSigningKey,
    #[error("provider {0:?} does not exist (configured: {1})")]
    UnknownProvider(String, String),
    #[error("provider {0:?} has no signing key: set its secret (HS*) or private_key_file")]
    NoProviderSigningKey(String),
    #[error("--claim {0:?}: expected key=value")]
    ClaimSyntax(String),
    #[error("--claim {0:?}: the subject is set by --sub")]
    ClaimSub(String),
    #[error("--ttl must be at least 1s (a token's exp is in whole seconds)")]
    ZeroTtl,
    #[error("--ttl must be at most 36500d")]
    LongTtl,
    #[error("signing failed: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    #[error("no randomness available")]
    NoRandomness,
    /// What `--token`, `--jti` or `--sub` named is not a revocation.
    #[error("--{0}")]
    Target(String),
    #[error("reading stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("{}: {source}", path.display())]
    ReadFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: {source}; nothing recorded", path.display())]
    BadLine {
        path: PathBuf,
        source: revocation::LineError,
    },
    #[error("blocklist.store is memory: a separate process cannot reach it (use the admin API)")]
    MemoryStore,
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("no admin listener configured: pass --url")]
    NoAdminListener,
    #[error("{0:?} is not a URL")]
    BadUrl(String),
    #[error("{0}: no answer within 3s")]
    ProbeTimeout(String),
    #[error("{url}: {source}")]
    Probe {
        url: String,
        source: hyper_util::client::legacy::Error,
    },
    #[error("{url}: {status} {body}")]
    ProbeStatus {
        url: String,
        status: http::StatusCode,
        body: String,
    },
}

/// What `portcullis check` reports for a valid config.
pub struct CheckReport {
    /// The one-screen summary (stdout).
    pub summary: String,
    /// One line per warning, `key (line N): message` (stderr, exit still 0).
    pub warnings: Vec<String>,
}

/// `portcullis check`: the summary and warnings, or every error.
pub fn check(path: &Path) -> Result<CheckReport, CommandError> {
    let config = config::load(path)?;
    Ok(CheckReport {
        summary: config.summary(),
        warnings: config.warnings.iter().map(ToString::to_string).collect(),
    })
}

/// What `portcullis token` should put in the token.
pub struct TokenRequest {
    pub sub: String,
    pub refresh: bool,
    pub ttl: Duration,
    pub fresh: bool,
    /// `k=v` pairs; `v` is read as JSON when it parses (numbers, lists), else a string.
    pub claims: Vec<String>,
}

/// `portcullis token`: a token signed with the configured key.
pub fn token(path: &Path, request: &TokenRequest) -> Result<String, CommandError> {
    token_for(path, request, config::DEFAULT_PROVIDER)
}

/// `portcullis token --provider NAME`: a token of provider `provider`, signed with its key.
pub fn token_for(
    path: &Path,
    request: &TokenRequest,
    provider: &str,
) -> Result<String, CommandError> {
    let config = config::load(path)?;
    mint_for(&config, request, provider)
}

/// Signs a token for `request` with `config`'s signing key.
pub fn mint(config: &Config, request: &TokenRequest) -> Result<String, CommandError> {
    mint_for(config, request, config::DEFAULT_PROVIDER)
}

/// The index of provider `name` in `config`, or the error naming the configured ones.
fn provider_index(config: &Config, name: &str) -> Result<usize, CommandError> {
    config.provider_index(name).ok_or_else(|| {
        CommandError::UnknownProvider(name.to_owned(), config.provider_names().join(", "))
    })
}

/// Signs a token for `request` with the signing key of provider `provider`, with its
/// `iss` (and first `aud`) so that the gateway matches it to that provider.
pub fn mint_for(
    config: &Config,
    request: &TokenRequest,
    provider: &str,
) -> Result<String, CommandError> {
    let p = &config.providers[provider_index(config, provider)?];
    let signing = p.signing.as_ref().ok_or_else(|| match provider {
        config::DEFAULT_PROVIDER => CommandError::NoSigningKey,
        name => CommandError::NoProviderSigningKey(name.to_owned()),
    })?;
    if request.ttl.as_secs() == 0 {
        return Err(CommandError::ZeroTtl);
    }
    // As long as any duration of the config may be; `now + ttl` then stays far inside
    // the `exp` every verifier reads (an i64 of seconds), never wrapping into the past.
    if request.ttl > config::MAX_DURATION {
        return Err(CommandError::LongTtl);
    }
    let now = now_unix();
    let mut claims = Map::new();
    claims.insert("sub".into(), Value::String(request.sub.clone()));
    claims.insert("jti".into(), Value::String(random_hex(16)?));
    claims.insert(
        "type".into(),
        Value::String(if request.refresh { "refresh" } else { "access" }.into()),
    );
    claims.insert("fresh".into(), Value::Bool(request.fresh));
    claims.insert("csrf".into(), Value::String(random_hex(16)?));
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + request.ttl.as_secs()).into());
    if let Some(iss) = &p.issuer {
        claims.insert("iss".into(), Value::String(iss.clone()));
    }
    if let Some(aud) = p.audience.first() {
        claims.insert("aud".into(), Value::String(aud.clone()));
    }
    for pair in &request.claims {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| CommandError::ClaimSyntax(pair.clone()))?;
        if k == "sub" {
            return Err(CommandError::ClaimSub(pair.clone()));
        }
        let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        claims.insert(k.to_owned(), value);
    }
    let mut header = jsonwebtoken::Header::new(signing.algorithm);
    if let Some(typ) = &p.required_typ {
        // The gateway's own tokens must pass its `required_typ` check.
        header.typ = Some(typ.clone());
    }
    jsonwebtoken::encode(&header, &claims, &signing.key).map_err(CommandError::Signing)
}

fn random_hex(bytes: usize) -> Result<String, CommandError> {
    let mut buf = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut buf).map_err(|_| CommandError::NoRandomness)?;
    Ok(hex::encode(buf))
}

/// `portcullis revoke`: records the revocation in the configured store, durably.
pub async fn revoke(path: &Path, target: RevokeTarget) -> Result<String, CommandError> {
    revoke_at(path, target, config::DEFAULT_PROVIDER).await
}

/// `portcullis revoke --provider NAME`: the revocation at provider `provider`.
pub async fn revoke_at(
    path: &Path,
    target: RevokeTarget,
    provider: &str,
) -> Result<String, CommandError> {
    let config = config::load(path)?;
    provider_index(&config, provider)?;
    let revocation = revocation_for(target).map_err(CommandError::Target)?;
    let described = match provider {
        config::DEFAULT_PROVIDER => describe(&revocation),
        name => format!("{} at provider {name}", describe(&revocation)),
    };
    let revocation = revocation::io::at_provider(revocation, provider);
    record(&config, vec![revocation]).await?;
    Ok(format!("revoked {described}"))
}

/// A revocation in words, times in UTC: `jti dave-1 until 2026-12-01T10:00:00Z`.
pub fn describe(revocation: &Revocation) -> String {
    /// 9999-12-31T23:59:59Z: RFC 3339 has four-digit years.
    const LAST_RFC3339: u64 = 253_402_300_799;
    let time = |unix: u64| match unix {
        ..=LAST_RFC3339 => {
            let at = std::time::UNIX_EPOCH + Duration::from_secs(unix);
            humantime::format_rfc3339_seconds(at).to_string()
        }
        _ => "the end of time".to_owned(),
    };
    match revocation {
        Revocation::Token { key, exp } if key.starts_with("sha256:") => {
            format!("token {key} until {}", time(*exp))
        }
        Revocation::Token { key, exp } => format!("jti {key} until {}", time(*exp)),
        Revocation::Subject { sub, at } => {
            format!("every token of subject {sub} issued before {}", time(*at))
        }
        Revocation::Session { sid, at, exp } => format!(
            "every token of session {sid} issued before {} (kept until {})",
            time((*at).min(*exp)),
            time(*exp)
        ),
    }
}

/// `portcullis revoke --file F` (`-`: stdin): one admin-API revocation object per line,
/// all or nothing; returns how many were recorded.
pub async fn revoke_file(path: &Path, file: &Path) -> Result<String, CommandError> {
    let config = config::load(path)?;
    let body = if file == Path::new("-") {
        let mut body = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut body)
            .map_err(CommandError::Stdin)?;
        body
    } else {
        std::fs::read(file).map_err(|source| CommandError::ReadFile {
            path: file.to_owned(),
            source,
        })?
    };
    let names = config.provider_names();
    let revocations =
        revocation::parse_ndjson(&body, &names).map_err(|source| CommandError::BadLine {
            path: file.to_owned(),
            source,
        })?;
    let recorded = revocations.len();
    record(&config, revocations).await?;
    Ok(format!("recorded {recorded} revocations"))
}

/// Writes `revocations` into the configured store (not memory: another process's).
async fn record(config: &Config, revocations: Vec<Revocation>) -> Result<(), CommandError> {
    if config.blocklist.store == config::StoreKind::Memory {
        return Err(CommandError::MemoryStore);
    }
    let store = crate::blocklist::open_store(&config.blocklist).await?;
    // Straight into the store: this process enforces nothing itself.
    Ok(store.record(revocations).await?)
}

/// `portcullis probe`: GETs `url` (default: the admin listener's `/readyz`) and succeeds
/// on a 2xx answer. For container health checks in images without curl.
pub async fn probe(path: &Path, url: Option<String>) -> Result<String, CommandError> {
    use http_body_util::BodyExt;
    let url = match url {
        Some(url) => url,
        None => {
            let config = config::load(path)?;
            let admin = config.admin.ok_or(CommandError::NoAdminListener)?;
            let mut addr = admin.listen;
            if addr.ip().is_unspecified() {
                addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
            }
            format!("http://{addr}/readyz")
        }
    };
    let uri: http::Uri = url.parse().map_err(|_| CommandError::BadUrl(url.clone()))?;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let response = tokio::time::timeout(Duration::from_secs(3), client.get(uri))
        .await
        .map_err(|_| CommandError::ProbeTimeout(url.clone()))?
        .map_err(|source| CommandError::Probe {
            url: url.clone(),
            source,
        })?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    if status.is_success() {
        Ok(format!("{status} {body}"))
    } else {
        Err(CommandError::ProbeStatus { url, status, body })
    }
}
