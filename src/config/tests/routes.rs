// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `upstreams:`, `routes:` and `forward:`.

use super::{check_rows, Row};

pub(super) const ROWS: &[Row] = &[
    (
        "upstreams: {}\n",
        "upstreams",
        Some(1),
        "at least one upstream is required",
    ),
    (
        "routes: []\n",
        "routes",
        Some(1),
        "at least one route is required",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:99999\n",
        "upstreams.app.url",
        Some(3),
        "the port must be 1 to 65535",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:9\n    timeout:\n",
        "upstreams.app.timeout",
        Some(4),
        "has no value",
    ),
    // An absent key has no line.
    (
        "# without upstreams\n",
        "upstreams",
        None,
        "at least one upstream is required",
    ),
    (
        "upstreams: [app]\n",
        "upstreams",
        Some(1),
        "must be a mapping of name -> { url, ... }",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:9\n    retries: 3\n",
        "upstreams.app.retries",
        Some(4),
        "unknown field `retries`, expected one of `url`",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:9/base?x=1\n",
        "upstreams.app.url",
        Some(3),
        "\"http://127.0.0.1:9/base?x=1\" has a query; an upstream URL is a scheme, host, port and optional path prefix",
    ),
    (
        "upstreams:\n  app:\n    timeout: 5s\n",
        "upstreams.app.url",
        Some(2),
        "required",
    ),
    (
        "upstreams:\n  app:\n    url: ftp://files\n",
        "upstreams.app.url",
        Some(3),
        "\"ftp://files\" is not an http:// or https:// URL",
    ),
    (
        "upstreams:\n  app:\n    url: /relative\n",
        "upstreams.app.url",
        Some(3),
        "is not an http:// or https:// URL",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:9\n    connect_timeout: fast\n",
        "upstreams.app.connect_timeout",
        Some(4),
        "\"fast\" is not a duration",
    ),
    (
        "upstreams:\n  app:\n    url: http://127.0.0.1:9\n    timeout: slow\n",
        "upstreams.app.timeout",
        Some(4),
        "\"slow\" is not a duration",
    ),
    (
        "upstreams:\n  app:\n    url: https://127.0.0.1:9\n    ca_file: upstream-ca.pem\n",
        "upstreams.app.ca_file",
        Some(4),
        "upstream-ca.pem does not exist",
    ),
    (
        "upstreams:\n  app:\n    url: https://127.0.0.1:9\n    ca_file: Cargo.toml\n",
        "upstreams.app.ca_file",
        Some(4),
        "holds no PEM certificate",
    ),
    (
        "# without routes\n",
        "routes",
        None,
        "at least one route is required",
    ),
    (
        "routes:\n  prefix: /\n",
        "routes",
        Some(1),
        "must be a list of { prefix, upstream, auth }",
    ),
    (
        "routes:\n  - prefix: /\n    upstream: app\n    methods: [GET]\n",
        "routes[0].methods",
        Some(4),
        "unknown field `methods`, expected one of `prefix`",
    ),
    (
        "routes:\n  - upstream: app\n",
        "routes[0].prefix",
        Some(2),
        "required, e.g. /api",
    ),
    (
        "routes:\n  - prefix: api\n    upstream: app\n",
        "routes[0].prefix",
        Some(2),
        "\"api\" must be an absolute, normalized path",
    ),
    (
        "routes:\n  - prefix: /café\n    upstream: app\n",
        "routes[0].prefix",
        Some(2),
        "\"/café\" must be written as requests are matched: \"/caf%C3%A9\" (non-ASCII escaped)",
    ),
    (
        "routes:\n  - prefix: /\n",
        "routes[0].upstream",
        Some(2),
        "required",
    ),
    (
        "routes:\n  - prefix: /api\n    upstream: app\n  - prefix: /db\n    upstream: db\n",
        "routes[1].upstream",
        Some(5),
        "no upstream named \"db\" (defined: app)",
    ),
    (
        "routes:\n  - prefix: /\n    upstream: app\n    auth: admin\n",
        "routes[0].auth",
        Some(4),
        "\"admin\": use none, access, refresh or any",
    ),
    (
        "routes:\n  - prefix: /\n    upstream: app\n    auth: none\n    fresh: true\n",
        "routes[0]",
        Some(2),
        "fresh and require_claims need a token",
    ),
    (
        "routes:\n  - prefix: /\n    upstream: app\n    auth: none\n    require_claims:\n      role: admin\n",
        "routes[0]",
        Some(2),
        "fresh and require_claims need a token",
    ),
    // A claim value JSON cannot hold: a mapping keyed by a list.
    (
        "routes:\n  - prefix: /\n    upstream: app\n    require_claims:\n      roles: {[1]: x}\n",
        "routes[0].require_claims.roles",
        Some(5),
        "key must be a string",
    ),
    (
        "forward:\n  identity_headers:\n    sub: \"x subject\"\n",
        "forward.identity_headers.sub",
        Some(3),
        "\"x subject\" is not a valid header name",
    ),
    (
        "forward:\n  strip_headers: [X-Auth-*, \"\"]\n",
        "forward.strip_headers[1]",
        Some(2),
        "empty header pattern",
    ),
    (
        "forward:\n  strip_headers:\n    - \"x forwarded\"\n",
        "forward.strip_headers[0]",
        Some(3),
        "\"x forwarded\" is not a valid header name",
    ),
    (
        "forward:\n  strip_headers:\n    - \"x-{a\"\n",
        "forward.strip_headers[0]",
        Some(3),
        "\"x-{a\" is not a valid pattern",
    ),
];

#[test]
fn upstream_route_and_forward_errors() {
    check_rows(ROWS);
}
