//! The one-screen summary `portcullis check` prints for a valid file.

use super::{redact_url, Config, StoreKind};

impl Config {
    /// A one-screen summary for `portcullis check`.
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let _ = writeln!(s, "config {} is valid", self.source.display());
        let _ = writeln!(
            s,
            "  edge      {} ({})",
            self.server.listen,
            if self.server.tls.is_some() {
                "https"
            } else {
                "http"
            }
        );
        if let Some(admin) = &self.admin {
            let _ = writeln!(s, "  admin     {}", admin.listen);
        }
        let algs: Vec<String> = self
            .jwt
            .algorithms
            .iter()
            .map(|a| format!("{a:?}"))
            .collect();
        let _ = writeln!(
            s,
            "  jwt       {} via {}{}",
            algs.join(", "),
            words(self.jwt.token_location.iter().map(|l| l.as_str())),
            match &self.jwt.required_typ {
                Some(typ) => format!(", required typ {typ}"),
                None => String::new(),
            }
        );
        for p in self.providers.iter().skip(1) {
            let algs: Vec<String> = p.algorithms.iter().map(|a| format!("{a:?}")).collect();
            let _ = writeln!(
                s,
                "  provider  {} for iss {} ({}{})",
                p.name,
                p.issuer.as_deref().unwrap_or(""),
                algs.join(", "),
                if p.uses_jwks() { ", JWKS" } else { "" }
            );
        }
        let _ = writeln!(
            s,
            "  blocklist {}{} (cache {} entries, on_store_error {})",
            self.blocklist.store.as_str(),
            match self.blocklist.store {
                StoreKind::Sqlite => format!(" at {}", self.blocklist.sqlite_path.display()),
                StoreKind::Redis => match &self.blocklist.redis_sentinel {
                    Some(sentinel) => format!(
                        " master {:?} via {} Sentinel(s)",
                        sentinel.master_name,
                        sentinel.addresses.len()
                    ),
                    None => format!(
                        " at {}",
                        redact_url(self.blocklist.redis_url.as_deref().unwrap_or(""))
                    ),
                },
                StoreKind::Memory => String::new(),
            },
            self.blocklist.cache_max_entries,
            self.blocklist.on_store_error.as_str()
        );
        let _ = writeln!(
            s,
            "  logout    {} ({})",
            self.logout.path,
            words(self.logout.methods.iter().map(|m| m.as_str()))
        );
        for u in &self.upstreams {
            let _ = writeln!(s, "  upstream  {} -> {}", u.name, u.url);
        }
        for r in &self.routes {
            let _ = writeln!(
                s,
                "  route     {} -> {} (auth {}{}{})",
                r.prefix,
                self.upstreams[r.upstream].name,
                r.auth.as_str(),
                if r.fresh { ", fresh" } else { "" },
                if r.require_claims.is_empty() {
                    String::new()
                } else {
                    let claims = r
                        .require_claims
                        .iter()
                        .map(|(name, value)| format!("{name}: {value}"));
                    format!(", require_claims {}", words(claims))
                }
            );
        }
        if let Some(fa) = &self.forward_auth {
            let trusted: Vec<String> = fa.trusted_proxies.iter().map(|c| c.to_string()).collect();
            let _ = writeln!(
                s,
                "  fwd auth  {} (trusted: {})",
                fa.path,
                trusted.join(", ")
            );
        }
        s
    }
}

/// `a, b, c`: a list as the config file's flow style writes it.
fn words<S: AsRef<str>>(items: impl Iterator<Item = S>) -> String {
    let mut out = String::new();
    for item in items {
        if !out.is_empty() {
            out.push_str(", ");
        }
        out.push_str(item.as_ref());
    }
    out
}
