//! Request path normalization.
//!
//! Routes are matched (and authorization decided) on the normalized path, and the same normalized
//! path is forwarded upstream, so the gateway and the app can never disagree about which resource
//! a request names: `/public/../private`, `//private` and `/%70rivate` all become `/private`, and
//! anything an upstream might interpret differently (encoded slashes, backslashes, NULs, broken
//! escapes, climbing above the root) is refused outright.
//!
//! This runs on every request. A path that is already normal (the overwhelmingly common case) is
//! recognized by a single byte scan and returned borrowed; only a path that actually changes pays
//! for an allocation.

use std::borrow::Cow;
use std::fmt;

/// Why a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/`.
    NotAbsolute,
    /// A `..` segment would climb above `/`.
    ClimbsAboveRoot,
    /// `%2F`: an encoded slash would let a segment boundary hide from route matching.
    EncodedSlash,
    /// A raw `\` or `%5C`, which some servers treat as a separator.
    Backslash,
    /// A raw NUL or `%00`, which truncates paths in C-based upstreams.
    Nul,
    /// A `%` not followed by two hex digits.
    BadPercentEncoding,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathError::NotAbsolute => "path does not start with /",
            PathError::ClimbsAboveRoot => "path climbs above the root",
            PathError::EncodedSlash => "path contains an encoded slash (%2F)",
            PathError::Backslash => "path contains a backslash",
            PathError::Nul => "path contains a NUL byte",
            PathError::BadPercentEncoding => "path contains a malformed percent-escape",
        })
    }
}

impl std::error::Error for PathError {}

/// Normalizes a request path (no query string) for route matching and forwarding.
///
/// Percent-escapes of unreserved characters (RFC 3986 §2.3) are decoded, every other escape is
/// kept with its hex digits uppercased; `.` and `..` segments are resolved (also when they only
/// appear after decoding, like `%2e%2E`); repeated slashes are merged; a trailing slash is kept
/// (`/a/.` and `/a/b/..` both give `/a/`).
///
/// Returns [`Cow::Borrowed`] exactly when the input is already normal, so
/// `normalize(p) == Ok(Cow::Borrowed(p))` is a cheap "is this path canonical?" test.
///
/// When a path has several problems, the error is the one met first scanning left to right.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if is_normal(path.as_bytes()) {
        Ok(Cow::Borrowed(path))
    } else {
        rebuild(path).map(Cow::Owned)
    }
}

/// The fast path: true when `normalize` would return `b` unchanged.
///
/// Every way of returning `false` corresponds to a change (or an error) in [`rebuild`], which is
/// what guarantees that a normal path never allocates and that `rebuild`'s output is normal.
fn is_normal(b: &[u8]) -> bool {
    if b.first() != Some(&b'/') {
        return false;
    }
    let mut seg_start = 1;
    // The two hex digits after a kept '%' are ordinary bytes for this scan, so there is nothing
    // to skip and the loop stays a plain iteration (no index arithmetic, no bounds checks).
    for (i, &c) in b.iter().enumerate().skip(1) {
        match c {
            b'/' => {
                let seg = &b[seg_start..i];
                if seg.is_empty() || is_dot_segment(seg) {
                    return false;
                }
                seg_start = i + 1;
            }
            // Only an escape that is kept verbatim may stay: uppercase hex, not unreserved, not
            // one of the refused characters.
            b'%' => match b.get(i + 1..i + 3) {
                Some(&[h, l]) if is_upper_hex(h) && is_upper_hex(l) => {
                    let v = (hex_val(h).unwrap_or(0) << 4) | hex_val(l).unwrap_or(0);
                    if is_unreserved(v) || matches!(v, 0 | b'/' | b'\\') {
                        return false;
                    }
                }
                _ => return false,
            },
            b'\\' | 0 => return false,
            // Raw non-ASCII (UTF-8 that hyper let through) is percent-encoded.
            0x80.. => return false,
            _ => {}
        }
    }
    // The last segment may be empty (trailing slash) but not a dot segment.
    !is_dot_segment(&b[seg_start..])
}

/// The slow path: builds the normalized path, or finds why there is none.
fn rebuild(path: &str) -> Result<String, PathError> {
    let b = path.as_bytes();
    if b.first() != Some(&b'/') {
        return Err(PathError::NotAbsolute);
    }
    let mut out = String::with_capacity(path.len());
    let mut i = 1; // start of the current raw segment
    loop {
        // Decode one segment straight into `out` after a provisional '/', then decide whether it
        // stays. `out` is always "" or "/seg/seg...", so popping a segment is a truncate.
        out.push('/');
        let seg_start = out.len();
        // Runs of bytes without '%' are copied as slices. Runs only ever end at an ASCII byte or
        // at the end of input, so every slice of `path` is on a char boundary.
        let mut run = i;
        while let Some(&c) = b.get(i) {
            match c {
                b'/' => break,
                b'%' => {
                    out.push_str(&path[run..i]);
                    let (h, l) = match (
                        b.get(i + 1).copied().and_then(hex_val),
                        b.get(i + 2).copied().and_then(hex_val),
                    ) {
                        (Some(h), Some(l)) => (h, l),
                        _ => return Err(PathError::BadPercentEncoding),
                    };
                    match (h << 4) | l {
                        b'/' => return Err(PathError::EncodedSlash),
                        b'\\' => return Err(PathError::Backslash),
                        0 => return Err(PathError::Nul),
                        v if is_unreserved(v) => out.push(char::from(v)),
                        v => push_escaped(&mut out, v),
                    }
                    i += 3;
                    run = i;
                }
                b'\\' => return Err(PathError::Backslash),
                0 => return Err(PathError::Nul),
                // A raw non-ASCII byte is not valid in a request line (RFC 3986 §2.1):
                // forwarded as its escape, which is how the route sees it too.
                0x80.. => {
                    // Byte by byte: `run` may sit inside the character, but then there
                    // is nothing before `i` to copy (and slicing there would panic).
                    if run < i {
                        out.push_str(&path[run..i]);
                    }
                    push_escaped(&mut out, c);
                    i += 1;
                    run = i;
                }
                _ => i += 1,
            }
        }
        out.push_str(&path[run..i]);

        // Empty, `.` and `..` segments leave a directory: if one ends the path, the result keeps
        // a trailing slash.
        let directory = match &out[seg_start..] {
            "" | "." => {
                out.truncate(seg_start - 1);
                true
            }
            ".." => {
                out.truncate(seg_start - 1);
                match out.rfind('/') {
                    Some(parent) => out.truncate(parent),
                    None => return Err(PathError::ClimbsAboveRoot),
                }
                true
            }
            _ => false,
        };
        if i >= b.len() {
            if directory || out.is_empty() {
                out.push('/');
            }
            return Ok(out);
        }
        i += 1; // the '/'
    }
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `byte` as a percent-escape with uppercase hex (`%C3`).
pub fn push_escaped(out: &mut String, byte: u8) {
    out.push('%');
    out.push(char::from(HEX_UPPER[usize::from(byte >> 4)]));
    out.push(char::from(HEX_UPPER[usize::from(byte & 0xF)]));
}

fn is_dot_segment(seg: &[u8]) -> bool {
    seg == b"." || seg == b".."
}

/// ALPHA / DIGIT / "-" / "." / "_" / "~" (RFC 3986 §2.3).
fn is_unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

fn is_upper_hex(c: u8) -> bool {
    matches!(c, b'0'..=b'9' | b'A'..=b'F')
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table() {
        use PathError::*;
        let cases: &[(&str, Result<&str, PathError>)] = &[
            // Already normal.
            ("/", Ok("/")),
            ("/api/users/42", Ok("/api/users/42")),
            ("/a/", Ok("/a/")),
            ("/a%20b", Ok("/a%20b")),
            ("/caf%C3%A9", Ok("/caf%C3%A9")),
            // Raw UTF-8 is escaped byte by byte: the same resource as its escaped form.
            ("/café", Ok("/caf%C3%A9")),
            ("/é/x", Ok("/%C3%A9/x")),
            ("/a/€%41", Ok("/a/%E2%82%ACA")),
            ("/日本", Ok("/%E6%97%A5%E6%9C%AC")),
            ("/a/.hidden/..x/...", Ok("/a/.hidden/..x/...")),
            ("/a%25b", Ok("/a%25b")),
            // Unreserved characters are decoded, case-insensitively.
            ("/%70rivate", Ok("/private")),
            ("/%41%4a%4A%7e%2D%5f%30", Ok("/AJJ~-_0")),
            // Other escapes keep their value, with uppercase hex.
            ("/%c3%a9", Ok("/%C3%A9")),
            ("/a%3f%3F", Ok("/a%3F%3F")),
            // Dot segments, raw and encoded.
            ("/public/../private", Ok("/private")),
            ("/a/./b", Ok("/a/b")),
            ("/a/.", Ok("/a/")),
            ("/a/b/..", Ok("/a/")),
            ("/a/b/../", Ok("/a/")),
            ("/a/..", Ok("/")),
            ("/.", Ok("/")),
            ("/./", Ok("/")),
            ("/a/%2e%2E/b", Ok("/b")),
            ("/a/.%2e", Ok("/")),
            ("/a/%2e/b", Ok("/a/b")),
            ("/a/%2e%2e%2e", Ok("/a/...")),
            // Repeated slashes.
            ("//private", Ok("/private")),
            ("/a//b///c", Ok("/a/b/c")),
            ("/a//", Ok("/a/")),
            ("//", Ok("/")),
            ("//..//a", Err(ClimbsAboveRoot)),
            // Refusals.
            ("", Err(NotAbsolute)),
            ("a/b", Err(NotAbsolute)),
            ("%2Fa", Err(NotAbsolute)),
            ("/..", Err(ClimbsAboveRoot)),
            ("/../x", Err(ClimbsAboveRoot)),
            ("/a/../../x", Err(ClimbsAboveRoot)),
            ("/%2e%2e/x", Err(ClimbsAboveRoot)),
            ("/a%2Fb", Err(EncodedSlash)),
            ("/a%2fb", Err(EncodedSlash)),
            ("/a\\b", Err(Backslash)),
            ("/a%5Cb", Err(Backslash)),
            ("/a%5cb", Err(Backslash)),
            ("/a\0b", Err(Nul)),
            ("/a%00b", Err(Nul)),
            ("/a%", Err(BadPercentEncoding)),
            ("/a%4", Err(BadPercentEncoding)),
            ("/a%g1", Err(BadPercentEncoding)),
            ("/a%%41", Err(BadPercentEncoding)),
            ("/a%é", Err(BadPercentEncoding)),
            // First problem left to right wins.
            ("/../a%2F", Err(ClimbsAboveRoot)),
            ("/a%2F/../..", Err(EncodedSlash)),
        ];
        for &(input, want) in cases {
            let got = normalize(input);
            assert_eq!(got.as_deref().map_err(|e| *e), want, "normalize({input:?})");
        }
    }

    #[test]
    fn borrows_exactly_when_unchanged() {
        for p in ["/", "/api/users/42", "/a/", "/a%20b", "/%C3%A9/x", "/a/.b"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p:?}");
        }
        for p in ["//a", "/a/./b", "/%61", "/%c3%a9", "/é/x"] {
            assert!(matches!(normalize(p), Ok(Cow::Owned(_))), "{p:?}");
        }
    }

    #[test]
    fn random_inputs_never_panic_and_outputs_are_normal() {
        // 0xE9 becomes 'é', two bytes of UTF-8: escaped byte by byte.
        const ALPHABET: &[u8] = b"/.%2eEfF5cC0ab\\\xe9";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut ok = 0;
        for _ in 0..20_000 {
            let len = (next() % 16) as usize;
            let mut s: String = (0..len)
                .map(|_| char::from(ALPHABET[(next() % ALPHABET.len() as u64) as usize]))
                .collect();
            // Most inputs should be absolute, or nearly everything is NotAbsolute.
            if next() % 8 != 0 {
                s.insert(0, '/');
            }
            let Ok(out) = normalize(&s) else { continue };
            ok += 1;
            assert!(out.starts_with('/'), "{s:?} -> {out:?}");
            assert!(!out.contains("//"), "{s:?} -> {out:?}");
            for seg in out.split('/') {
                assert!(seg != "." && seg != "..", "{s:?} -> {out:?}");
            }
            assert!(
                matches!(normalize(&out), Ok(Cow::Borrowed(again)) if again == out),
                "not idempotent: {s:?} -> {out:?} -> {:?}",
                normalize(&out)
            );
        }
        // Make sure the generator actually exercises the success path.
        assert!(ok > 2_000, "only {ok} inputs normalized");
    }
}
