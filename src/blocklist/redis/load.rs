//! Reading the live set out of Redis: the start-up load (in pages by score, see the
//! module docs of [`super`]) and the admin export (in pages by rank, resumable).

use super::{RedisStore, LOAD_PAGE};
use crate::blocklist::{ExportError, ExportPage, Revocation, StoreError};

/// A value written by this store or by hand (`SET ... 1767225600`); scores come back
/// from Redis as decimal text, possibly with a fraction if someone typed one.
pub(super) fn parse_time(raw: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(raw).ok()?.trim();
    text.parse::<u64>().ok().or_else(|| {
        text.parse::<f64>()
            .ok()
            .filter(|v| *v >= 0.0)
            .map(|v| v as u64)
    })
}

/// A `jti:`/`sid:` string's value: `exp`, or `exp:cut-off` for a session.
pub(super) fn parse_item(raw: &[u8]) -> Option<(u64, Option<u64>)> {
    match raw.iter().position(|&b| b == b':') {
        Some(colon) => Some((parse_time(&raw[..colon])?, parse_time(&raw[colon + 1..]))),
        None => Some((parse_time(raw)?, None)),
    }
}

/// A flat `[member, score, member, score, ...]` reply as pairs, without copying.
fn pairs(flat: Vec<Vec<u8>>) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> {
    let mut items = flat.into_iter();
    std::iter::from_fn(move || Some((items.next()?, items.next()?)))
}

/// One page of a sorted set by rank, resuming after a member: `KEYS[1]` the set,
/// `ARGV[1]` the lowest score wanted (now), `ARGV[2]` the member the previous page
/// ended with (empty: from the start), `ARGV[3]` its score then, `ARGV[4]` how many.
///
/// One script, so that the rank it starts from cannot shift before the read (a purge
/// removes members ranked before it). If that member is still there with the same score,
/// the page starts right after it, exactly; if it was purged or re-scored meanwhile, the
/// page starts at the first member of its old score: a few may come twice, none is
/// skipped.
pub(super) const EXPORT_SCRIPT: &str = r"
local start
local after = ARGV[2]
if after ~= '' then
  local score = redis.call('ZSCORE', KEYS[1], after)
  if score and tonumber(score) == tonumber(ARGV[3]) then
    start = redis.call('ZRANK', KEYS[1], after) + 1
  end
end
if not start then
  local from = ARGV[1]
  if after ~= '' and tonumber(ARGV[3]) > tonumber(from) then from = ARGV[3] end
  start = redis.call('ZCOUNT', KEYS[1], '-inf', '(' .. from)
end
return redis.call('ZRANGE', KEYS[1], start, start + tonumber(ARGV[4]) - 1, 'WITHSCORES')
";

/// Where an export stands: which set (`x`: `P expiry`, tokens and sessions; `s`:
/// `P subjects`), the member the last page ended with (its bytes: a member another
/// program wrote need not be UTF-8, and the next page must still start after it) and
/// its score.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct ExportCursor(String, Member, u64);

/// A sorted-set member in a cursor: its text when it is UTF-8 (as cursors always held
/// it, so one issued before a deploy still reads), else its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Member(Vec<u8>);

impl serde::Serialize for Member {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match std::str::from_utf8(&self.0) {
            Ok(text) => s.serialize_str(text),
            Err(_) => self.0.serialize(s),
        }
    }
}

impl<'de> serde::Deserialize<'de> for Member {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Bytes(Vec<u8>),
        }
        Ok(Member(match Form::deserialize(d)? {
            Form::Text(text) => text.into_bytes(),
            Form::Bytes(bytes) => bytes,
        }))
    }
}

fn encode_cursor(cursor: &ExportCursor) -> String {
    use base64::Engine;
    let json = serde_json::to_vec(cursor).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(text: &str) -> Option<ExportCursor> {
    use base64::Engine;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

impl RedisStore {
    /// Every member of a sorted set with a score of at least `min`, with its score,
    /// in pages by score.
    ///
    /// Each page starts right after the previous page's last score; the members that
    /// share that last score (a tie that may continue past the page) are read in one
    /// more query, whole, because an offset inside a tie would shift if one of them got
    /// a later score meanwhile, and skip another. A tie larger than a page (thousands
    /// of revocations expiring in the same second: a bulk import) cannot be read whole
    /// without blocking Redis, so then the set is read with `ZSCAN` instead: slower,
    /// but still exact. Members may be returned twice, which is harmless.
    async fn read_zset(
        &self,
        key: &str,
        min: u64,
        mut each: impl FnMut(Vec<u8>, u64),
    ) -> Result<(), StoreError> {
        let what = "loading revocations (ZRANGEBYSCORE)";
        let mut from = min.to_string();
        loop {
            let page: Vec<Vec<u8>> = self
                .run(
                    what,
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(&from)
                        .arg("+inf")
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LOAD_PAGE)
                        .clone(),
                )
                .await?;
            let full = page.len() / 2 == LOAD_PAGE;
            let last = page.chunks_exact(2).last().map(|pair| pair[1].clone());
            for (member, score) in pairs(page) {
                if let Some(score) = parse_time(&score) {
                    each(member, score);
                }
            }
            let Some(last) = last.filter(|_| full) else {
                return Ok(());
            };
            // Scores come back as Redis prints them; reusing the text keeps the bound
            // exact.
            let last = String::from_utf8_lossy(&last).into_owned();
            let tie: Vec<Vec<u8>> = self
                .run(
                    what,
                    redis::cmd("ZRANGEBYSCORE")
                        .arg(key)
                        .arg(&last)
                        .arg(&last)
                        .arg("WITHSCORES")
                        .arg("LIMIT")
                        .arg(0)
                        .arg(LOAD_PAGE + 1)
                        .clone(),
                )
                .await?;
            if tie.len() / 2 > LOAD_PAGE {
                tracing::info!(
                    key,
                    "over {LOAD_PAGE} revocations share one expiry: loading them with ZSCAN"
                );
                return self.scan_zset(key, min, each).await;
            }
            for (member, score) in pairs(tie) {
                if let Some(score) = parse_time(&score) {
                    each(member, score);
                }
            }
            from = format!("({last}");
        }
    }

    /// Every member of a sorted set with a score of at least `min`, with `ZSCAN`: its
    /// guarantee (a member present for the whole scan is returned) holds whatever
    /// changes meanwhile, at about five times the Redis CPU of `ZRANGEBYSCORE` (it
    /// formats every score anew).
    async fn scan_zset(
        &self,
        key: &str,
        min: u64,
        mut each: impl FnMut(Vec<u8>, u64),
    ) -> Result<(), StoreError> {
        let mut cursor = 0u64;
        loop {
            let (next, page): (u64, Vec<Vec<u8>>) = self
                .run(
                    "loading revocations (ZSCAN)",
                    redis::cmd("ZSCAN")
                        .arg(key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(LOAD_PAGE)
                        .clone(),
                )
                .await?;
            for (member, score) in pairs(page) {
                match parse_time(&score) {
                    Some(score) if score >= min => each(member, score),
                    _ => {}
                }
            }
            if next == 0 {
                return Ok(());
            }
            cursor = next;
        }
    }

    /// Every live revocation: `P expiry` and `P subjects` in pages, sessions' cut-offs
    /// from their strings.
    pub(super) async fn load_live_paged(&self, now: u64) -> Result<Vec<Revocation>, StoreError> {
        let mut out = Vec::new();
        let mut sessions = Vec::new();
        self.read_zset(&self.expiry_key, now, |member, exp| {
            let Ok(member) = String::from_utf8(member) else {
                return;
            };
            match member.split_once(':') {
                Some(("sid", sid)) => sessions.push((sid.to_owned(), exp)),
                Some((kind, key)) => {
                    out.extend(Revocation::from_parts(kind, key.to_owned(), exp, None))
                }
                None => {}
            }
        })
        .await?;
        // A session's cut-off lives in its string.
        self.with_cutoffs(sessions, &mut out).await?;
        self.read_zset(&self.subjects_key, 0, |member, at| {
            if let Ok(sub) = String::from_utf8(member) {
                out.push(Revocation::Subject { sub, at });
            }
        })
        .await?;
        Ok(out)
    }

    /// One page of an export: `P expiry` (tokens, sessions) by rank, then `P subjects`.
    pub(super) async fn export(
        &self,
        after: Option<&str>,
        limit: usize,
        now: u64,
    ) -> Result<ExportPage, ExportError> {
        let cursor = match after {
            None => ExportCursor("x".into(), Member::default(), 0),
            Some(text) => decode_cursor(text)
                .filter(|c| c.0 == "x" || c.0 == "s")
                .ok_or_else(|| ExportError::BadCursor(text.to_owned()))?,
        };
        let limit = limit.max(1);
        let mut out = Vec::new();
        if cursor.0 == "x" {
            let mut last = None;
            // One more than the page: whether more remain decides the `Link` (a full
            // page with nothing after it must not send the client to an empty one).
            let mut page = self
                .export_set(&self.expiry_key, now, &cursor.1 .0, cursor.2, limit + 1)
                .await?;
            let more = page.len() > limit;
            page.truncate(limit);
            let mut sessions = Vec::new();
            for (member, exp) in page {
                match std::str::from_utf8(&member).map(|text| text.split_once(':')) {
                    Ok(Some(("sid", sid))) if exp >= now => sessions.push((sid.to_owned(), exp)),
                    Ok(Some((kind, key))) if exp >= now => {
                        out.extend(Revocation::from_parts(kind, key.to_owned(), exp, None))
                    }
                    _ => {}
                }
                last = Some(ExportCursor("x".into(), Member(member), exp));
            }
            self.with_cutoffs(sessions, &mut out).await?;
            if more {
                return Ok(ExportPage {
                    revocations: out,
                    next: last.as_ref().map(encode_cursor),
                });
            }
            // Tokens and sessions done: subjects fill the rest.
            let left = limit.saturating_sub(out.len());
            return Ok(self.export_subjects(out, Vec::new(), 0, left).await?);
        }
        Ok(self
            .export_subjects(out, cursor.1 .0, cursor.2, limit)
            .await?)
    }

    async fn export_subjects(
        &self,
        mut out: Vec<Revocation>,
        after: Vec<u8>,
        score: u64,
        limit: usize,
    ) -> Result<ExportPage, StoreError> {
        let mut page = self
            .export_set(&self.subjects_key, 0, &after, score, limit + 1)
            .await?;
        let more = page.len() > limit;
        page.truncate(limit);
        // With no room left on this page, the next one starts where this call did.
        let mut last = ExportCursor("s".into(), Member(after), score);
        for (member, at) in page {
            if let Ok(sub) = std::str::from_utf8(&member) {
                out.push(Revocation::Subject {
                    sub: sub.to_owned(),
                    at,
                });
            }
            // Past a member that is not UTF-8 too (written by another program): the
            // next page must not start before it again.
            last = ExportCursor("s".into(), Member(member), at);
        }
        let next = more.then(|| encode_cursor(&last));
        Ok(ExportPage {
            revocations: out,
            next,
        })
    }

    /// Runs [`EXPORT_SCRIPT`] on one sorted set.
    async fn export_set(
        &self,
        key: &str,
        min: u64,
        after: &[u8],
        score: u64,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, u64)>, StoreError> {
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.export_script.get_hash())
            .arg(1)
            .arg(key)
            .arg(min)
            .arg(after)
            .arg(score)
            .arg(limit);
        let flat: Vec<Vec<u8>> = self
            .eval("exporting revocations", &self.export_script, call)
            .await?;
        Ok(pairs(flat)
            .filter_map(|(member, score)| Some((member, parse_time(&score)?)))
            .collect())
    }

    /// Reads sessions' cut-offs from their strings, a page at a time, adding the
    /// sessions still there to `out` (one gone meanwhile expired).
    async fn with_cutoffs(
        &self,
        sessions: Vec<(String, u64)>,
        out: &mut Vec<Revocation>,
    ) -> Result<(), StoreError> {
        for page in sessions.chunks(LOAD_PAGE) {
            let mut mget = redis::cmd("MGET");
            for (sid, _) in page {
                mget.arg(self.item_key("sid", sid));
            }
            let values: Vec<Option<Vec<u8>>> =
                self.run("loading session revocations (MGET)", mget).await?;
            for ((sid, _), value) in page.iter().zip(values) {
                if let Some((exp, at)) = value.as_deref().and_then(parse_item) {
                    out.extend(Revocation::from_parts("sid", sid.clone(), exp, at));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        for member in [&b"jti:a/b c"[..], b"jti:a/b c\xff"] {
            let cursor = ExportCursor("x".into(), Member(member.to_vec()), 1_767_225_600);
            assert_eq!(decode_cursor(&encode_cursor(&cursor)), Some(cursor));
        }
        // A cursor from before members were kept as bytes (the text form) still reads.
        use base64::Engine;
        let old = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"["x","jti:a",123]"#);
        assert_eq!(
            decode_cursor(&old),
            Some(ExportCursor("x".into(), Member(b"jti:a".to_vec()), 123))
        );
        assert_eq!(decode_cursor("not a cursor!"), None);
    }

    #[test]
    fn parses_items_and_times() {
        assert_eq!(parse_item(b"100:90"), Some((100, Some(90))));
        assert_eq!(parse_item(b"100"), Some((100, None)));
        assert_eq!(parse_item(b"x"), None);
        assert_eq!(parse_time(b"1767225600.0"), Some(1_767_225_600));
        assert_eq!(parse_time(b"-5"), None);
    }
}
