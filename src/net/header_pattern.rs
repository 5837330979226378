//! Header-name patterns for `forward.strip_headers` (`X-Auth-*`, `X-Internal`).
//!
//! Parsed once at config load. The common shapes, an exact name or `Prefix-*`, are
//! matched with a byte comparison; anything else goes through a compiled glob.

use http::HeaderName;

/// A case-insensitive header-name pattern.
#[derive(Debug, Clone)]
pub enum HeaderPattern {
    /// A single header name.
    Exact(HeaderName),
    /// Every name starting with this (lowercase) prefix.
    Prefix(String),
    /// Any other glob.
    Glob(globset::GlobMatcher),
}

impl HeaderPattern {
    /// Parses a pattern such as `X-Auth-*`.
    pub fn parse(raw: &str) -> Result<HeaderPattern, String> {
        let lower = raw.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err("empty header pattern".to_owned());
        }
        let is_meta = |c: char| matches!(c, '*' | '?' | '[' | ']' | '{' | '}');
        if !lower.contains(is_meta) {
            return HeaderName::from_bytes(lower.as_bytes())
                .map(HeaderPattern::Exact)
                .map_err(|_| format!("{raw:?} is not a valid header name"));
        }
        if let Some(prefix) = lower.strip_suffix('*') {
            if !prefix.contains(is_meta) {
                return Ok(HeaderPattern::Prefix(prefix.to_owned()));
            }
        }
        globset::GlobBuilder::new(&lower)
            .case_insensitive(true)
            .build()
            .map(|g| HeaderPattern::Glob(g.compile_matcher()))
            .map_err(|e| format!("{raw:?} is not a valid pattern: {e}"))
    }

    /// Whether `name` (lowercase, as `http` stores it) matches.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HeaderPattern::Exact(h) => h.as_str() == name,
            HeaderPattern::Prefix(p) => name.starts_with(p.as_str()),
            HeaderPattern::Glob(g) => g.is_match(name),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::HeaderPattern;

    #[test]
    fn matches_exact_prefix_and_glob() {
        let exact = HeaderPattern::parse("X-Auth-Subject").unwrap();
        assert!(exact.matches("x-auth-subject"));
        assert!(!exact.matches("x-auth-subjects"));
        let prefix = HeaderPattern::parse("X-Auth-*").unwrap();
        assert!(matches!(prefix, HeaderPattern::Prefix(_)));
        assert!(prefix.matches("x-auth-subject"));
        assert!(prefix.matches("x-auth-"));
        assert!(!prefix.matches("x-author"));
        let glob = HeaderPattern::parse("X-*-User").unwrap();
        assert!(glob.matches("x-remote-user"));
        assert!(!glob.matches("x-remote-users"));
        assert!(HeaderPattern::parse("bad header").is_err());
        assert!(HeaderPattern::parse("").is_err());
    }
}
