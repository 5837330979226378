//! `${NAME}` and `${NAME:-default}` (unset or empty: the default) expansion in string
//! values.

/// Replaces every `${NAME}` / `${NAME:-default}` in `input` using `lookup`.
///
/// `$$` stands for a literal `$`. Returns the name of the first unset variable that
/// has no default, or a description of a malformed reference.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    if !input.contains('$') {
        return Ok(input.to_owned());
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(stripped) = after.strip_prefix('$') {
            out.push('$');
            rest = stripped;
            continue;
        }
        let Some(body_start) = after.strip_prefix('{') else {
            out.push('$');
            rest = after;
            continue;
        };
        let Some(close) = body_start.find('}') else {
            return Err(format!("unclosed `${{` in {input:?}"));
        };
        let reference = &body_start[..close];
        let (name, default) = match reference.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (reference, None),
        };
        let valid_name =
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !valid_name {
            return Err(format!(
                "`${{{reference}}}` is not a valid variable reference"
            ));
        }
        // `:-` as in the shell and Compose: the default stands in for an unset *or
        // empty* variable (`GRACE= portcullis` means "not given", not "empty duration").
        match (lookup(name), default) {
            (Some(value), Some(default)) if value.is_empty() => out.push_str(default),
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(format!(
                "environment variable {name} is not set (use ${{{name}:-default}} for a fallback)"
            ))
            }
        }
        rest = &body_start[close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    fn env(name: &str) -> Option<String> {
        match name {
            "SET" => Some("value".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_unset_and_defaults() {
        assert_eq!(expand("plain", env).unwrap(), "plain");
        assert_eq!(expand("${SET}", env).unwrap(), "value");
        assert_eq!(expand("a-${SET}-b", env).unwrap(), "a-value-b");
        assert_eq!(expand("${UNSET:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand("${SET:-dflt}", env).unwrap(), "value");
        assert_eq!(expand("${EMPTY}", env).unwrap(), "");
        assert_eq!(expand("${EMPTY:-dflt}", env).unwrap(), "dflt");
        assert_eq!(expand("$$HOME and $5", env).unwrap(), "$HOME and $5");
        assert!(expand("${UNSET}", env).unwrap_err().contains("UNSET"));
        assert!(expand("${SET", env).is_err());
        assert!(expand("${bad name}", env).is_err());
    }
}
