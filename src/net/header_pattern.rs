//! Header-name patterns for `forward.strip_headers` (`X-Auth-*`, `X-Internal`).
//!
//! Parsed once at config load. The common shapes, an exact name or `Prefix-*`, are
//! matched with a byte comparison; anything else goes through a compiled glob.
//!
//! `_` and `-` are the same character here: CGI, WSGI, PHP and Rack turn both into `_`
//! (`X_Auth_Subject` and `X-Auth-Subject` both become `HTTP_X_AUTH_SUBJECT`), so a
//! client must not be able to slip a stripped header past as its underscore spelling
//! (nginx drops underscore headers by default). Patterns are stored with `_` folded to
//! `-`; a name is folded byte by byte while comparing, so nothing is allocated except
//! for a glob against a name that holds a `_` (rare).

use http::HeaderName;

/// A case-insensitive header-name pattern.
#[derive(Debug, Clone)]
pub enum HeaderPattern {
    /// A single header name (`_` and `-` alike when matching).
    Exact(HeaderName),
    /// Every name starting with this prefix (lowercase, `_` folded to `-`).
    Prefix(String),
    /// Any other glob.
    Glob(globset::GlobMatcher),
}

impl HeaderPattern {
    /// Parses a pattern such as `X-Auth-*`.
    pub fn parse(raw: &str) -> Result<HeaderPattern, String> {
        let lower = raw.trim().to_ascii_lowercase().replace('_', "-");
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

    /// Whether `name` (lowercase, as `http` stores it) matches, `_` and `-` alike.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            HeaderPattern::Exact(h) => {
                let (pattern, name) = (h.as_str().as_bytes(), name.as_bytes());
                pattern.len() == name.len() && same_folded(pattern, name)
            }
            HeaderPattern::Prefix(p) => name
                .as_bytes()
                .get(..p.len())
                .is_some_and(|head| same_folded(p.as_bytes(), head)),
            HeaderPattern::Glob(g) if name.contains('_') => g.is_match(name.replace('_', "-")),
            HeaderPattern::Glob(g) => g.is_match(name),
        }
    }
}

/// Whether `a` and `b` (same length) are equal once every `_` is read as `-`.
fn same_folded(a: &[u8], b: &[u8]) -> bool {
    let fold = |c: u8| if c == b'_' { b'-' } else { c };
    a.iter().zip(b).all(|(&x, &y)| fold(x) == fold(y))
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
        assert!(HeaderPattern::parse("X_Internal_*")
            .unwrap()
            .matches("x-internal-role"));
        assert!(HeaderPattern::parse("").is_err());
    }

    #[test]
    fn underscores_and_dashes_are_alike() {
        let exact = HeaderPattern::parse("X-Auth-Subject").unwrap();
        assert!(exact.matches("x_auth_subject"));
        assert!(exact.matches("x-auth_subject"));
        assert!(!exact.matches("x_auth_subjects"));
        // An identity header added as is (config), even one spelled with `_`.
        let raw = HeaderPattern::Exact(http::HeaderName::from_static("x_user"));
        assert!(raw.matches("x-user") && raw.matches("x_user"));
        let prefix = HeaderPattern::parse("X-Auth-*").unwrap();
        assert!(prefix.matches("x_auth_token_id"));
        assert!(!prefix.matches("x_auth"));
        let glob = HeaderPattern::parse("X-*-User").unwrap();
        assert!(glob.matches("x_remote_user"));
        let underscored = HeaderPattern::parse("X_Internal").unwrap();
        assert!(underscored.matches("x-internal") && underscored.matches("x_internal"));
    }
}
