// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! Errors about the document as a whole: its size limits, its syntax, its top level,
//! `${VAR}` expansion and the shapes serde reads.

use super::{check_rows, Row};

pub(super) const ROWS: &[Row] = &[
    // limits::check, before serde sees the text
    (
        "x: [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]\n",
        "",
        Some(1),
        "deeper than 64",
    ),
    // serde_yaml's own syntax error, with its line
    ("a: b: c\n", "", Some(1), "not valid YAML"),
    (
        "- a\n- b\n# without jwt, blocklist, upstreams, routes\n",
        "",
        None,
        "the top level must be a mapping",
    ),
    ("bogus: 1\n", "bogus", Some(1), "unknown key; expected one of server, admin"),
    // env::expand, reported under the key of the string
    (
        "admin:\n  token: ${UNSET_TOKEN}\n",
        "admin.token",
        Some(2),
        "environment variable UNSET_TOKEN is not set",
    ),
    (
        "jwt:\n  secret: ${bad name}\n",
        "jwt.secret",
        Some(2),
        "is not a valid variable reference",
    ),
    (
        "jwt:\n  secret: ${OPEN\n",
        "jwt.secret",
        Some(2),
        "unclosed `${`",
    ),
    (
        "routes:\n  - prefix: /\n    upstream: ${UPSTREAM}\n",
        "routes[0].upstream",
        Some(3),
        "environment variable UPSTREAM is not set",
    ),
    // Checker::typed: serde errors, with the inner path appended
    ("server: 5\n", "server", Some(1), "expected a mapping of keys"),
    (
        "jwt:\n  secret: 0123456789abcdef0123456789abcdef\n  audience: {a: 1}\n",
        "jwt.audience",
        Some(3),
        "a string or a list of strings",
    ),
    (
        "blocklist:\n  store: memory\n  cache_max_entries: -1\n",
        "blocklist.cache_max_entries",
        Some(3),
        "invalid value: integer `-1`, expected a whole number (0 or more)",
    ),
    (
        "server:\n  max_connections: many\n",
        "server.max_connections",
        Some(2),
        "invalid type",
    ),
    (
        "server:\n  bogus: 1\n",
        "server.bogus",
        Some(2),
        "unknown field `bogus`, expected one of `listen`",
    ),
    (
        "blocklist:\n  store: memory\n  redis_sentinel:\n    master_name: m\n    addresses: [[1]]\n",
        "blocklist.redis_sentinel.addresses[0]",
        Some(5),
        "invalid type: sequence",
    ),
];

#[test]
fn document_errors() {
    check_rows(ROWS);
}
