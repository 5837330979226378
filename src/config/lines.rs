//! Line numbers for the key paths of a YAML config file.
//!
//! serde_yaml keeps no spans, yet most config errors come from our own validation after
//! deserializing (e.g. a route naming an unknown upstream) and must still say where the offending
//! key is. This is a small line scanner for the block-style YAML config files use, not a YAML
//! parser: when it cannot follow a document it records fewer keys, and [`LineIndex::line`] then
//! falls back to the nearest recorded ancestor.

use std::collections::HashMap;

/// Maps key paths of a YAML document to the 1-based line where they appear.
///
/// Paths use the syntax of the config errors: `server.listen`, `routes[2].upstream`,
/// `jwt.algorithms[1]`. Root-level keys have no leading dot; items of a root-level sequence are
/// `[0]`, `[1]`, ...
#[derive(Debug, Clone, Default)]
pub struct LineIndex {
    lines: HashMap<String, usize>,
}

impl LineIndex {
    /// Builds the index; never fails (a document it cannot follow simply yields fewer entries).
    ///
    /// When a path occurs twice (duplicate keys, several `---` documents) the first line wins.
    pub fn new(text: &str) -> LineIndex {
        let mut scanner = Scanner {
            stack: vec![Node::default()],
            ..Scanner::default()
        };
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        for (n, raw) in text.lines().enumerate() {
            scanner.line(raw, n + 1);
        }
        LineIndex { lines: scanner.map }
    }

    /// Line of the key (for mappings) or of the item (for sequences) at `path`.
    ///
    /// Path syntax: `server.listen`, `routes[2].upstream`, `jwt.algorithms[1]`,
    /// `upstreams.app.url`. When `path` itself is not present, falls back to the line of its
    /// longest present ancestor (so a missing key points at its parent section); `None` only when
    /// nothing matches (or the path is empty).
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        while !path.is_empty() {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            path = &path[..path.rfind(['.', '['])?];
        }
        None
    }
}

#[derive(Default)]
struct Scanner {
    map: HashMap<String, usize>,
    /// Keys and items that later, deeper-indented lines may belong to; the root is never popped.
    stack: Vec<Node>,
    /// Inside a block scalar: lines indented deeper than this column are its content.
    block: Option<usize>,
    /// Inside a flow collection or quoted scalar that did not end on its first line.
    flow: Option<Flow>,
}

/// A mapping key or sequence item that later lines may nest under.
#[derive(Default)]
struct Node {
    /// Column of the key, or of the `-` for an item.
    col: usize,
    path: String,
    item: bool,
    /// A key whose value follows on later lines (nothing after the colon).
    open: bool,
    /// Number of `-` items seen directly under this node, i.e. the next item's index.
    items: usize,
}

impl Scanner {
    fn line(&mut self, raw: &str, line: usize) {
        if let Some(flow) = self.flow.as_mut() {
            if !flow.scan(raw, line, &mut self.map) {
                self.flow = None;
            }
            return;
        }
        let body = raw.trim_start_matches(' ');
        let mut col = raw.len() - body.len();
        let mut rest = body.trim_end();
        if rest.is_empty() || self.block.is_some_and(|limit| col > limit) {
            return;
        }
        self.block = None;
        if rest.starts_with('#') {
            return;
        }
        if col == 0 && (is_marker(rest, "---") || is_marker(rest, "...")) {
            self.stack.truncate(1);
            return;
        }
        // One line may hold several nodes: `- - key: value` is two items and a key.
        let mut after_dash = false;
        loop {
            let dash = rest.strip_prefix('-');
            if let Some(content) = dash.filter(|r| r.is_empty() || r.starts_with([' ', '\t'])) {
                // Close deeper nodes, sibling items and finished keys; a key with an empty value
                // keeps a sequence written at its own column (`routes:\n- path: /`).
                self.close(|t| t.col > col || (t.col == col && (t.item || !t.open)));
                let Some(parent) = self.stack.last_mut() else {
                    return;
                };
                let path = format!("{}[{}]", parent.path, parent.items);
                parent.items += 1;
                self.push(col, path, true, true, line);
                let content = content.trim_start_matches([' ', '\t']);
                col += rest.len() - content.len();
                rest = content;
                after_dash = true;
            } else if let Some((key, value)) = split_key(rest) {
                self.close(|t| t.col >= col);
                let path = match self.stack.last() {
                    Some(parent) if !parent.path.is_empty() => format!("{}.{key}", parent.path),
                    _ => key,
                };
                let open = self.value(value, &path, col, line);
                self.push(col, path, false, open, line);
                return;
            } else {
                // The item's own value; anything else (e.g. the continuation of a multi-line
                // plain scalar) is ignored.
                if let Some(item) = self.stack.last().filter(|_| after_dash) {
                    let (path, col) = (item.path.clone(), item.col);
                    self.value(rest, &path, col, line);
                }
                return;
            }
        }
    }

    fn close(&mut self, done: impl Fn(&Node) -> bool) {
        while self.stack.len() > 1 && self.stack.last().is_some_and(&done) {
            self.stack.pop();
        }
    }

    fn push(&mut self, col: usize, path: String, item: bool, open: bool, line: usize) {
        self.map.entry(path.clone()).or_insert(line);
        let items = 0;
        self.stack.push(Node {
            col,
            path,
            item,
            open,
            items,
        });
    }

    /// Handles what follows the key or dash at `col`; returns whether the value is nested on the
    /// following lines.
    fn value(&mut self, value: &str, path: &str, col: usize, line: usize) -> bool {
        let mut v = value;
        // Anchors and tags (`&defaults`, `!!str`) only decorate the value that follows them.
        while v.starts_with(['&', '!']) {
            v = v.find([' ', '\t']).map_or("", |p| v[p..].trim_start());
        }
        match v.bytes().next() {
            None | Some(b'#') => return true,
            Some(b'|' | b'>') => self.block = Some(col),
            Some(b'[' | b'{' | b'"' | b'\'') => {
                let seq = v.starts_with('[');
                let path = path.to_owned();
                let mut flow = Flow {
                    path,
                    seq,
                    ..Flow::default()
                };
                if flow.scan(v, line, &mut self.map) {
                    self.flow = Some(flow);
                }
            }
            Some(_) => {}
        }
        false
    }
}

/// A flow collection (`[a, b]`, `{k: v}`) or quoted scalar, scanned line by line so that one
/// spanning several lines is skipped as a whole. Items of a flow sequence are indexed.
#[derive(Default)]
struct Flow {
    path: String,
    seq: bool,
    depth: usize,
    items: usize,
    in_item: bool,
    quote: Option<u8>,
    /// The last significant byte.
    prev: u8,
}

impl Flow {
    /// Scans one line; returns whether the collection (or quoted scalar) is still open after it.
    fn scan(&mut self, text: &str, line: usize, map: &mut HashMap<String, usize>) -> bool {
        let b = text.as_bytes();
        let mut i = 0;
        if let Some(q) = self.quote.take() {
            match closing_quote(b, 0, q) {
                Some(_) if self.depth == 0 => return false,
                Some(end) => i = end + 1,
                None => {
                    self.quote = Some(q);
                    return true;
                }
            }
        }
        while let Some(&c) = b.get(i) {
            i += 1;
            if matches!(c, b' ' | b'\t') {
                continue;
            }
            if c == b'#' && (i == 1 || matches!(b[i - 2], b' ' | b'\t')) {
                break; // comment
            }
            if self.depth == 1 && !self.in_item && !matches!(c, b',' | b']' | b'}') {
                self.in_item = true;
                if self.seq {
                    let path = format!("{}[{}]", self.path, self.items);
                    map.entry(path).or_insert(line);
                }
                self.items += 1;
            }
            match c {
                b'[' | b'{' => self.depth += 1,
                b']' | b'}' => self.depth = self.depth.saturating_sub(1),
                b',' if self.depth == 1 => self.in_item = false,
                // A quote opens a quoted scalar only at the start of a token: `[it's]` is plain.
                b'"' | b'\'' if matches!(self.prev, 0 | b'[' | b'{' | b',' | b':') => {
                    match closing_quote(b, i, c) {
                        Some(end) => i = end + 1,
                        None => self.quote = Some(c),
                    }
                }
                _ => {}
            }
            if self.depth == 0 || self.quote.is_some() {
                return self.quote.is_some();
            }
            self.prev = c;
        }
        true
    }
}

/// Splits `key: value` (value possibly empty) into the unquoted key and the value text.
fn split_key(s: &str) -> Option<(String, &str)> {
    let b = s.as_bytes();
    let (key, after) = match *b.first()? {
        q @ (b'"' | b'\'') => {
            let end = closing_quote(b, 1, q)?;
            (unquote(&s[1..end], q), s[end + 1..].trim_start())
        }
        // Indicators that cannot start a plain key (flow collections, aliases, complex keys, ...).
        b'[' | b']' | b'{' | b'}' | b'#' | b'&' | b'*' | b'!' | b'|' | b'>' | b'%' | b'@'
        | b'`' | b'?' => return None,
        _ => {
            let mut i = 0;
            loop {
                match *b.get(i)? {
                    b':' if matches!(b.get(i + 1), None | Some(b' ' | b'\t')) => break,
                    // A comment before any `: ` means this line is a plain scalar, not a key.
                    b'#' if i > 0 && matches!(b[i - 1], b' ' | b'\t') => return None,
                    _ => i += 1,
                }
            }
            (s[..i].trim_end().to_owned(), &s[i..])
        }
    };
    let value = after.strip_prefix(':')?;
    if key.is_empty() || !(value.is_empty() || value.starts_with([' ', '\t'])) {
        return None;
    }
    Some((key, value.trim_start()))
}

/// Index of the quote `q` closing a quoted scalar whose text starts at `b[i]`.
fn closing_quote(b: &[u8], mut i: usize, q: u8) -> Option<usize> {
    while let Some(&c) = b.get(i) {
        match c {
            b'\\' if q == b'"' => i += 2,
            _ if c == q && q == b'\'' && b.get(i + 1) == Some(&q) => i += 2,
            _ if c == q => return Some(i),
            _ => i += 1,
        }
    }
    None
}

/// Undoes the quoting of a key. Only the escapes a key name plausibly contains are handled.
fn unquote(s: &str, q: u8) -> String {
    if q == b'\'' {
        s.replace("''", "'")
    } else {
        s.replace("\\\"", "\"").replace("\\\\", "\\")
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    let rest = line.strip_prefix(marker);
    rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', '\t']))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r##"# portcullis example config
---
server:
  listen: "0.0.0.0:8443"   # quoted, contains ':'
  tls:
    cert: /etc/portcullis/cert.pem
    key: /etc/portcullis/key.pem

jwt:
  issuer: "https://auth.example.com/#issuer"
  algorithms: [HS256, "RS256"]   # flow list
  audiences: [
    api, 'web, mobile',
    # comment inside a flow
    admin,
  ]
  leeway: 30s

routes:
  - path: /api/
    upstream: app
    require_claims:
      role: admin
      "scope#x": 'read: all # not a comment'
  - path: "/public: docs"   # key-like text inside quotes
    upstream: static
    public: true
  - path: /hooks
    upstream: ap   # typo
    description: |
      Webhooks: these lines are content,
      upstream: not a key
    methods:
    - POST
    - PUT
    tags: &t
      - a
defaults: &d
  timeout: 5s

upstreams:
  app:
    url: http://127.0.0.1:3000
  'static':
    url: http://127.0.0.1:3001 # trailing comment
forward:
  identity_headers: {sub: X-User, email: X-Email}
"##;

    /// 1-based line of the only line of `CONFIG` containing `needle`.
    fn at(needle: &str) -> usize {
        let found: Vec<usize> = CONFIG
            .lines()
            .enumerate()
            .filter(|(_, l)| l.contains(needle))
            .map(|(n, _)| n + 1)
            .collect();
        assert_eq!(found.len(), 1, "needle {needle:?} must be unique");
        found[0]
    }

    #[test]
    fn realistic_config() {
        let idx = LineIndex::new(CONFIG);
        let cases = [
            ("server", at("server:")),
            ("server.listen", at("listen:")),
            ("server.tls.key", at("key: /etc")),
            ("jwt.issuer", at("issuer:")),
            ("jwt.algorithms", at("algorithms:")),
            ("jwt.algorithms[1]", at("algorithms:")),
            ("jwt.audiences[0]", at("api, ")),
            ("jwt.audiences[1]", at("api, ")),
            ("jwt.audiences[2]", at("admin,")),
            ("jwt.leeway", at("leeway:")),
            ("routes", at("routes:")),
            ("routes[0]", at("path: /api/")),
            ("routes[0].path", at("path: /api/")),
            ("routes[0].require_claims.role", at("role:")),
            ("routes[0].require_claims.scope#x", at("scope#x")),
            ("routes[1].path", at("/public: docs")),
            ("routes[1].public", at("public: true")),
            ("routes[2].upstream", at("# typo")),
            ("routes[2].methods", at("methods:")),
            ("routes[2].methods[1]", at("- PUT")),
            ("routes[2].tags[0]", at("- a")),
            ("defaults.timeout", at("timeout:")),
            ("upstreams.app.url", at("3000")),
            ("upstreams.static", at("'static'")),
            ("upstreams.static.url", at("3001")),
            ("forward.identity_headers", at("identity_headers:")),
        ];
        for (path, want) in cases {
            assert_eq!(idx.line(path), Some(want), "{path}");
        }
    }

    #[test]
    fn falls_back_to_ancestor() {
        let idx = LineIndex::new(CONFIG);
        // Block scalar content is not indexed: it points at the scalar's key.
        assert_eq!(
            idx.line("routes[2].description.upstream"),
            Some(at("description:"))
        );
        // Flow mappings are not indexed either.
        assert_eq!(
            idx.line("forward.identity_headers.sub"),
            Some(at("identity_headers:"))
        );
        assert_eq!(idx.line("routes[7].upstream"), Some(at("routes:")));
        assert_eq!(idx.line("routes[1].timeout"), Some(at("/public: docs")));
        assert_eq!(idx.line("server.tls.ciphers[3]"), Some(at("tls:")));
        assert_eq!(idx.line("jwt.algorithms[5]"), Some(at("algorithms:")));
        assert_eq!(idx.line("nope.deeper"), None);
        assert_eq!(idx.line(""), None);
    }

    #[test]
    fn sequences_of_all_shapes() {
        let text = "\
- name: a
  list:
  - - x
    - y
  -
    k: v
- plain
- [1, 2]
- |
  text: not a key
- last: 'multi
  line: still quoted'
  after: 1
";
        let idx = LineIndex::new(text);
        let cases = [
            ("[0].name", 1),
            ("[0].list[0]", 3),
            ("[0].list[0][0]", 3),
            ("[0].list[0][1]", 4),
            ("[0].list[1]", 5),
            ("[0].list[1].k", 6),
            ("[1]", 7),
            ("[2][1]", 8),
            ("[3]", 9),
            ("[3].text", 9),
            ("[4].last", 11),
            ("[4].line", 11),
            ("[4].after", 13),
        ];
        for (path, want) in cases {
            assert_eq!(idx.line(path), Some(want), "{path}");
        }
    }

    #[test]
    fn odd_lines_do_not_confuse_it() {
        let text = "\u{feff}a: # comment, value follows\n  b: 1\nc:value is a plain scalar\n\"q\\\"k\": 2\n'it''s': 3\nd:\n\n\n  e: [it's, \"x]\"]\n...\n";
        let idx = LineIndex::new(text);
        assert_eq!(idx.line("a.b"), Some(2));
        assert_eq!(idx.line("c"), None);
        assert_eq!(idx.line("q\"k"), Some(4));
        assert_eq!(idx.line("it's"), Some(5));
        assert_eq!(idx.line("d.e[1]"), Some(9));
        assert_eq!(idx.line("d.e[2]"), Some(9)); // falls back to d.e
        assert_eq!(LineIndex::new("").line("a"), None);
    }

    #[test]
    fn random_documents_never_panic() {
        const PIECES: &[&str] = &[
            " ", "  ", "\n", "-", "- ", ":", ": ", "#", " #", "'", "\"", "\\", "[", "]", "{", "}",
            ",", "|", ">", "&a ", "---", "é", "k", "x: ", "\t", "\r\n",
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..5_000 {
            let mut doc = String::new();
            for _ in 0..(state % 40) {
                // xorshift64
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                doc.push_str(PIECES[(state % PIECES.len() as u64) as usize]);
            }
            state ^= state << 13;
            let idx = LineIndex::new(&doc);
            let _ = idx.line("k.k[0]");
        }
    }
}
