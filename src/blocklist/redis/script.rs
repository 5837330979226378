//! Writes: the record script, run once per logout and in pipelined batches for a bulk
//! import.

use super::{RedisStore, COMMAND_TIMEOUT, MAX_TIME, STREAM_MAXLEN};
use crate::blocklist::{Revocation, StoreError};
use std::time::Duration;

/// Revocations per script call in a bulk write: a few milliseconds of Redis time each,
/// so other clients' commands run between the batches of a large import.
pub const RECORD_BATCH: usize = 1_000;

/// Time allowed per batch of a bulk write, on top of [`COMMAND_TIMEOUT`].
const PER_BATCH: Duration = Duration::from_millis(100);

/// The write script. Arguments:
/// * `KEYS[1]` `P expiry`, `KEYS[2]` `P subjects`, `KEYS[3]` `P changes`, `KEYS[4]`
///   the replay key (`P seen:<jti>`; `P changes` again when there is none);
/// * `KEYS[4 + i]`: the key revocation `i` touches (its `jti:`/`sid:` string, or
///   `P subjects` again), declared so the script is honest about what it writes;
/// * `ARGV[1]` the stream's `MAXLEN`, `ARGV[2]` the cut-off that stands for a whole
///   session, `ARGV[3]` the replay key's expiry (`0`: no replay check), then
///   `kind, key, value, cut-off` for each revocation.
///
/// With a replay key, the script records nothing and returns -1 when `SET NX` finds
/// the key already there: first sight and the revocations it causes are one step.
///
/// A session's string holds `exp:cut-off`; one holding only `exp` was written before
/// cut-offs existed and revokes the whole session, which a merge keeps.
///
/// The `P expiry` members are added with one variadic `ZADD GT` per 500 revocations
/// rather than one call each: a call from Lua costs about as much as the insert itself,
/// and this is a fifth of the script's Redis time in a bulk import. (`GT` keeps the later
/// score of a member named twice, as separate calls would.)
///
/// Values are validated and clamped before the call: a Redis error half-way through a
/// script does not roll back what it already wrote.
pub(super) const RECORD_SCRIPT: &str = r"
if ARGV[3] ~= '0' then
  if not redis.call('SET', KEYS[4], 1, 'NX', 'EXAT', ARGV[3]) then return -1 end
end
local n = #KEYS - 4
local index = {}
local function flush()
  if #index > 0 then
    redis.call('ZADD', KEYS[1], 'GT', unpack(index))
    index = {}
  end
end
for i = 1, n do
  local kind = ARGV[4 * i]
  local key = ARGV[4 * i + 1]
  local value = ARGV[4 * i + 2]
  if kind == 'sub' then
    redis.call('ZADD', KEYS[2], 'GT', value, key)
    value = redis.call('ZSCORE', KEYS[2], key)
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'key', key, 'value', value)
  else
    local exp = tonumber(value)
    local cut = tonumber(ARGV[4 * i + 3])
    local current = redis.call('GET', KEYS[4 + i])
    if current then
      local e, a = string.match(current, '^(%d+):(%d+)$')
      if not e then
        e = current
        a = ARGV[2]
      end
      e = tonumber(e)
      a = tonumber(a)
      if e and e > exp then exp = e end
      if a and a > cut then cut = a end
    end
    local expiry = string.format('%d', exp)
    local stored = expiry
    if kind == 'sid' then stored = string.format('%d:%d', exp, cut) end
    if stored ~= current then
      redis.call('SET', KEYS[4 + i], stored, 'EXAT', expiry)
    end
    index[#index + 1] = expiry
    index[#index + 1] = kind .. ':' .. key
    if #index >= 1000 then flush() end
    if kind == 'sid' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'key', key, 'value', expiry, 'at', string.format('%d', cut))
    else
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'key', key, 'value', expiry)
    end
  end
end
flush()
return n
";

impl RedisStore {
    /// An `EVALSHA` of [`RECORD_SCRIPT`] with `revocations`, after a replay check when
    /// `replay` names a key and its expiry.
    fn record_call(
        &self,
        replay: Option<&(String, u64)>,
        revocations: &[Revocation],
    ) -> redis::Cmd {
        let mut call = redis::cmd("EVALSHA");
        call.arg(self.record_script.get_hash())
            .arg(4 + revocations.len())
            .arg(&self.expiry_key)
            .arg(&self.subjects_key)
            .arg(&self.changes_key);
        match replay {
            Some((key, _)) => call.arg(key),
            None => call.arg(&self.changes_key),
        };
        for r in revocations {
            match r {
                Revocation::Token { key, .. } => call.arg(self.item_key("jti", key)),
                Revocation::Session { sid, .. } => call.arg(self.item_key("sid", sid)),
                Revocation::Subject { .. } => call.arg(&self.subjects_key),
            };
        }
        call.arg(STREAM_MAXLEN)
            .arg(MAX_TIME)
            .arg(replay.map_or(0, |(_, exp)| *exp));
        for r in revocations {
            // EXAT must be positive: an expiry of 0 (long past) becomes 1, which
            // Redis accepts and forgets at once, like any other past expiry.
            let (kind, key, value, cutoff) = match r {
                Revocation::Token { key, exp } => ("jti", key, (*exp).clamp(1, MAX_TIME), 0),
                Revocation::Session { sid, at, exp } => {
                    ("sid", sid, (*exp).clamp(1, MAX_TIME), (*at).min(MAX_TIME))
                }
                Revocation::Subject { sub, at } => ("sub", sub, (*at).min(MAX_TIME), 0),
            };
            call.arg(kind).arg(key.as_str()).arg(value).arg(cutoff);
        }
        call
    }

    /// Runs [`RECORD_SCRIPT`] once (`EVALSHA`, loading the script on `NOSCRIPT`).
    /// Returns `false` when the replay key was already there (nothing recorded).
    pub(super) async fn run_record(
        &self,
        replay: Option<(String, u64)>,
        revocations: &[Revocation],
    ) -> Result<bool, StoreError> {
        let call = self.record_call(replay.as_ref(), revocations);
        let recorded: i64 = self
            .eval("recording revocations", &self.record_script, call)
            .await?;
        Ok(recorded >= 0)
    }

    /// Records many revocations: [`RECORD_BATCH`] per script call, every call in one
    /// pipeline (`SCRIPT LOAD` first, then `EVALSHA`s), so a 100 000-line import costs
    /// one round trip and Redis serves other clients between batches. Each batch is
    /// atomic; the whole is not (a connection lost half-way leaves the first batches
    /// recorded, which only ever refuses more, and a retry is harmless).
    pub(super) async fn record_bulk(&self, revocations: &[Revocation]) -> Result<(), StoreError> {
        let batches: Vec<&[Revocation]> = revocations.chunks(RECORD_BATCH).collect();
        let mut pipe = redis::pipe();
        pipe.cmd("SCRIPT").arg("LOAD").arg(RECORD_SCRIPT).ignore();
        for batch in &batches {
            pipe.add_command(self.record_call(None, batch)).ignore();
        }
        let limit = COMMAND_TIMEOUT + PER_BATCH * batches.len() as u32;
        self.run_pipe_within("recording revocations (bulk)", pipe, limit)
            .await
    }
}
