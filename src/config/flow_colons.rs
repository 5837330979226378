//! `[127.0.0.1/32, ::1/128]`: a YAML 1.2 flow sequence that libyaml cannot read.
//!
//! YAML 1.2 lets a plain scalar inside `[...]` or `{...}` start with `:` when a
//! non-space follows (`::1/128`, an IPv6 CIDR); libyaml, under serde_yaml, implements
//! YAML 1.1, where such a `:` is an indicator, and refuses the whole file. The contract's
//! own `forward_auth.trusted_proxies` example is written that way. [`quote_flow_colons`]
//! quotes those scalars so that the file reads as YAML 1.2 reads it; it is tried only
//! once the text has failed to parse, and never moves a line (errors keep their lines).

/// `text` with every plain flow scalar that starts with `:` double-quoted, or `None` if
/// it has none.
pub fn quote_flow_colons(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 16);
    let mut changed = false;
    for line in text.split_inclusive('\n') {
        changed |= quote_line(line, &mut out);
    }
    changed.then_some(out)
}

/// Appends `line` to `out` with its flow scalars starting with `:` quoted. The flow
/// depth is counted per line: a flow collection spanning lines is rare in a config and
/// is left as it is.
fn quote_line(line: &str, out: &mut String) -> bool {
    let bytes = line.as_bytes();
    let mut depth = 0usize;
    let mut changed = false;
    // Where a flow item may start: after `[`, `{` or `,` (spaces skipped).
    let mut item_start = false;
    // Bytes before `copied` are in `out` already; the rest is copied as slices, so
    // that multi-byte characters pass through untouched.
    let mut copied = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' | b'\'' => {
                // A quoted scalar, skipped whole (`''` inside single quotes is one `'`).
                i = closing_quote(bytes, i);
                item_start = false;
                continue;
            }
            b'#' if i == 0 || bytes[i - 1] == b' ' || bytes[i - 1] == b'\t' => break,
            b'[' | b'{' => {
                depth += 1;
                item_start = true;
            }
            b']' | b'}' => {
                depth = depth.saturating_sub(1);
                item_start = false;
            }
            b',' if depth > 0 => item_start = true,
            b' ' | b'\t' => {}
            b':' if depth > 0 && item_start && bytes.get(i + 1).is_some_and(|c| !is_space(*c)) => {
                let end = plain_end(bytes, i);
                out.push_str(&line[copied..i]);
                out.push('"');
                out.push_str(&line[i..end]);
                out.push('"');
                copied = end;
                changed = true;
                i = end;
                item_start = false;
                continue;
            }
            _ => item_start = false,
        }
        i += 1;
    }
    out.push_str(&line[copied..]);
    changed
}

/// The index just past the quoted scalar opening at `start` (or the line's end).
fn closing_quote(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let mut i = start + 1;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quote == b'"' => i += 2,
            b'\'' if quote == b'\'' && bytes.get(i + 1) == Some(&b'\'') => i += 2,
            c if c == quote => return i + 1,
            _ => i += 1,
        }
    }
    bytes.len()
}

/// Where a plain flow scalar starting at `start` ends: at `,`, `]`, `}`, a comment or
/// the line's end. Only characters a CIDR or an address holds are taken, so nothing
/// that needs escaping inside double quotes is ever quoted.
fn plain_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start;
    while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || b":./%-_".contains(&bytes[i])) {
        i += 1;
    }
    i
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n')
}

#[cfg(test)]
mod tests {
    use super::quote_flow_colons;

    #[test]
    fn quotes_ipv6_items_of_flow_collections_only() {
        let text = "forward_auth:\n  trusted_proxies: [127.0.0.1/32, ::1/128]   # peers\n";
        assert_eq!(
            quote_flow_colons(text).as_deref(),
            Some("forward_auth:\n  trusted_proxies: [127.0.0.1/32, \"::1/128\"]   # peers\n")
        );
        assert_eq!(
            quote_flow_colons("a: [::1, ::ffff:10.0.0.0/104]\n").as_deref(),
            Some("a: [\"::1\", \"::ffff:10.0.0.0/104\"]\n")
        );
        // Already quoted, in a comment, or outside a flow collection: left alone.
        for text in [
            "a: [\"::1/128\"]\n",
            "a: ['::1/128']\n",
            "a: ::1/128\n",
            "a:\n  - ::1/128\n",
            "a: [1] # [::1]\n",
            "a: {b: c}\n",
        ] {
            assert_eq!(quote_flow_colons(text), None, "{text:?}");
        }
    }

    #[test]
    fn the_quoted_text_parses_as_yaml_1_2_reads_it() {
        let text = "trusted_proxies: [127.0.0.1/32, ::1/128]\n";
        assert!(serde_yaml::from_str::<serde_yaml::Value>(text).is_err());
        let quoted = quote_flow_colons(text).unwrap();
        let value: serde_yaml::Value = serde_yaml::from_str(&quoted).unwrap();
        assert_eq!(
            value["trusted_proxies"],
            serde_yaml::from_str::<serde_yaml::Value>("[127.0.0.1/32, \"::1/128\"]").unwrap()
        );
        assert_eq!(quoted.lines().count(), text.lines().count());
    }
}
