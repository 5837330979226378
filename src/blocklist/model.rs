//! What the blocklist holds: a revocation (token, session cut-off, subject cut-off),
//! its kind, the cut-off rule, and the answer a check gives.

/// One revocation, as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revocation {
    /// A single token, by `jti` (or `sha256:` digest), until its `exp`.
    Token { key: String, exp: u64 },
    /// A cut-off for one session: every token carrying this `sid` issued before `at`
    /// (by `iat`; a token without `iat` too) is refused, until `exp`. Tokens the
    /// identity provider issues later in the same session are accepted.
    Session { sid: String, at: u64, exp: u64 },
    /// A cut-off for one subject: every token of `sub` issued before `at` (by `iat`;
    /// a token without `iat` too) is refused; kept until replaced by a later one.
    Subject { sub: String, at: u64 },
}

/// The latest second any store records, 9999-12-31T23:59:59Z: Redis refuses absurd
/// `EXAT` values and its Lua compares numbers as doubles (exact below 2^53). Every store
/// keeps the same bound, so an answer shows what each of them records.
pub const LATEST_SECOND: u64 = 253_402_300_799;

/// The cut-off of a session revocation recorded before cut-offs existed: it refused
/// every token of the session, which a cut-off in the far future still does.
pub const WHOLE_SESSION: u64 = u64::MAX;

/// The cut-off rule of section 3 of the contract, for sessions and subjects: a token
/// issued before `cutoff` (whole seconds), or one without `iat`, is refused; a token
/// issued in the same second as the revocation is accepted, so a user who logs out
/// everywhere can log in again at once.
pub fn issued_before(iat: Option<u64>, cutoff: u64) -> bool {
    iat.is_none_or(|iat| iat < cutoff)
}

impl Revocation {
    /// The kind, key and value (`exp`, or the revocation time of a subject): the form
    /// stores keep it in. A session's cut-off is [`Revocation::cutoff`].
    pub fn parts(&self) -> (Kind, &str, u64) {
        match self {
            Revocation::Token { key, exp } => (Kind::Token, key, *exp),
            Revocation::Session { sid, exp, .. } => (Kind::Session, sid, *exp),
            Revocation::Subject { sub, at } => (Kind::Subject, sub, *at),
        }
    }

    /// A session revocation's cut-off (`None` for the other kinds).
    pub fn cutoff(&self) -> Option<u64> {
        match self {
            Revocation::Session { at, .. } => Some(*at),
            _ => None,
        }
    }

    /// Rebuilds a revocation from a stored kind name (`jti`, `sid`, `sub`), key, value
    /// and, for sessions, cut-off (absent in records written before cut-offs existed:
    /// the whole session, as it was then).
    pub fn from_parts(kind: &str, key: String, value: u64, at: Option<u64>) -> Option<Revocation> {
        match kind {
            "jti" => Some(Revocation::Token { key, exp: value }),
            "sid" => Some(Revocation::Session {
                sid: key,
                at: at.unwrap_or(WHOLE_SESSION),
                exp: value,
            }),
            "sub" => Some(Revocation::Subject {
                sub: key,
                at: value,
            }),
            _ => None,
        }
    }

    /// Whether it still has an effect at `now`.
    pub fn is_live(&self, now: u64) -> bool {
        match self {
            Revocation::Token { exp, .. } | Revocation::Session { exp, .. } => *exp >= now,
            Revocation::Subject { .. } => true,
        }
    }
}

/// The kinds of revocation, for lookups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Token,
    Session,
    Subject,
}

impl Kind {
    /// The name stores use for this kind: `jti`, `sid` or `sub`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Token => "jti",
            Kind::Session => "sid",
            Kind::Subject => "sub",
        }
    }
}

/// Why a token was found revoked, or that the answer is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allowed,
    Revoked,
    /// The cache overflowed and the store could not be asked.
    Unknown,
}
