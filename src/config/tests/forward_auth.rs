// Compiled only as a test module (#[cfg(test)] in the parent): unwrap/expect are fine here.
//! `forward_auth:`: the endpoint's path and the CIDRs of the proxies allowed to call it.

use super::{check_rows, Row};

pub(super) const ROWS: &[Row] = &[
    (
        "forward_auth:\n  trusted_proxies: [127.0.0.1/32]\n",
        "forward_auth.path",
        Some(1),
        "required with forward_auth",
    ),
    (
        "forward_auth:\n  path: _auth\n  trusted_proxies: [127.0.0.1/32]\n",
        "forward_auth.path",
        Some(2),
        "must be an absolute, normalized path",
    ),
    (
        "forward_auth:\n  path: /a/../auth\n  trusted_proxies: [127.0.0.1/32]\n",
        "forward_auth.path",
        Some(2),
        "must be an absolute, normalized path",
    ),
    (
        "forward_auth:\n  path: /\n  trusted_proxies: [127.0.0.1/32]\n",
        "forward_auth.path",
        Some(2),
        "must not be /",
    ),
    (
        "forward_auth:\n  path: /auth\n  trusted_proxies: [127.0.0.1/32]\nlogout:\n  path: /auth/logout\n",
        "forward_auth.path",
        Some(2),
        "/auth/logout (logout.path) is under it",
    ),
    (
        "forward_auth:\n  path: /auth\n  trusted_proxies: [127.0.0.1/32]\njwt:\n  secret: 0123456789abcdef0123456789abcdef\n  jwks_url: https://idp.test/jwks\n  issuer: https://idp.test\n  audience: [gw]\nlogout:\n  backchannel_path: /auth\n",
        "forward_auth.path",
        Some(2),
        "/auth (logout.backchannel_path) is under it",
    ),
    (
        "forward_auth:\n  path: /_auth\n  trusted_proxies: []\n",
        "forward_auth.trusted_proxies",
        Some(3),
        "lists no proxy",
    ),
    (
        "forward_auth:\n  path: /_auth\n  trusted_proxies: [127.0.0.1/32, localhost]\n",
        "forward_auth.trusted_proxies[1]",
        Some(3),
        "\"localhost\" is not an IP address",
    ),
    (
        "forward_auth:\n  path: /_auth\n  trusted_proxies:\n    - ::1/129\n",
        "forward_auth.trusted_proxies[0]",
        Some(4),
        "\"129\" is not a prefix length",
    ),
    (
        "forward_auth:\n  path: /_auth\n  trusted_proxies:\n    - 10.0.0.0/8\n    - 10.1.2.3/16\n",
        "forward_auth.trusted_proxies[1]",
        Some(5),
        "the network is 10.1.0.0/16",
    ),
    (
        "forward_auth:\n  path: /_auth\n  trusted_proxies: [127.0.0.1/32]\n  trusted: []\n",
        "forward_auth.trusted",
        Some(4),
        "unknown field `trusted`",
    ),
];

#[test]
fn forward_auth_errors() {
    check_rows(ROWS);
}
