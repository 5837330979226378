//! Every way the edge refuses a request, and the exact answer each one gets.
//!
//! This is the contract's refusal table in one place: `status()`, `error_type()` and
//! `message()` are exhaustive matches, so adding a variant without deciding its
//! answer does not compile.

use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};

/// A refusal at the edge. Each variant is one row of the contract's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    /// No token in any configured location.
    #[error("no token in any configured location")]
    MissingToken,
    /// The token is on the blocklist (by jti, sid or subject).
    #[error("token revoked")]
    RevokedToken,
    /// Malformed token, algorithm not allowed, unknown key, or not yet valid.
    #[error("token could not be decoded")]
    Decode,
    /// The signature does not verify with any trusted key.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is in the past.
    #[error("token expired")]
    Expired,
    /// `aud` matches none of `jwt.audience`.
    #[error("wrong audience")]
    BadAudience,
    /// `iss` differs from `jwt.issuer`.
    #[error("wrong issuer")]
    BadIssuer,
    /// A refresh token on an `auth: access` route.
    #[error("access token required")]
    AccessTokenRequired,
    /// An access token on an `auth: refresh` route.
    #[error("refresh token required")]
    RefreshTokenRequired,
    /// A `fresh: true` route and a token without `fresh: true`.
    #[error("fresh token required")]
    FreshTokenRequired,
    /// Cookie token without a matching CSRF header.
    #[error("csrf mismatch")]
    Csrf,
    /// `require_claims` not met.
    #[error("missing required claims")]
    InsufficientScope,
    /// A forward-auth subrequest from a peer outside `forward_auth.trusted_proxies`:
    /// only the proxies in front may ask for a verdict (and name the request judged).
    #[error("untrusted proxy")]
    UntrustedProxy,
    /// No route matches the path.
    #[error("no route")]
    NoRoute,
    /// The path cannot be normalized safely, or the request head is ambiguous (a
    /// second token header field, a missing, repeated or userinfo-bearing `Host`, an
    /// HTTP/2 `host` that disagrees with `:authority`, `chunked` applied twice).
    #[error("bad request")]
    BadRequest,
    /// A transfer coding other than `chunked` (RFC 9112 §6.1): the gateway decodes
    /// none, and must not pass bytes on labelled as something they are not.
    #[error("transfer coding not implemented")]
    NotImplemented,
    /// The request head is larger than `server.max_header_bytes`.
    #[error("request header fields too large")]
    HeadersTooLarge,
    /// The revocation store cannot be read or written and the policy is to fail closed.
    #[error("revocation store unavailable")]
    StoreUnavailable,
    /// The upstream refused, reset or broke the connection.
    #[error("upstream error")]
    Upstream,
    /// The upstream did not answer within its `timeout`.
    #[error("upstream timeout")]
    UpstreamTimeout,
}

impl GatewayError {
    /// Every variant, in declaration order (`ALL[e as usize] == e`), for metrics.
    pub const ALL: [GatewayError; 20] = {
        use GatewayError::*;
        [
            MissingToken,
            RevokedToken,
            Decode,
            BadSignature,
            Expired,
            BadAudience,
            BadIssuer,
            AccessTokenRequired,
            RefreshTokenRequired,
            FreshTokenRequired,
            Csrf,
            InsufficientScope,
            UntrustedProxy,
            NoRoute,
            BadRequest,
            NotImplemented,
            HeadersTooLarge,
            StoreUnavailable,
            Upstream,
            UpstreamTimeout,
        ]
    };

    /// HTTP status of the refusal.
    pub fn status(self) -> StatusCode {
        use GatewayError::*;
        match self {
            MissingToken | RevokedToken | Decode | BadSignature | Expired | BadAudience
            | BadIssuer | AccessTokenRequired | RefreshTokenRequired | FreshTokenRequired
            | Csrf => StatusCode::UNAUTHORIZED,
            InsufficientScope | UntrustedProxy => StatusCode::FORBIDDEN,
            NoRoute => StatusCode::NOT_FOUND,
            BadRequest => StatusCode::BAD_REQUEST,
            NotImplemented => StatusCode::NOT_IMPLEMENTED,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Upstream => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// The AuthX error type name carried in the JSON body (and counted in metrics).
    pub fn error_type(self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingToken => "MissingTokenError",
            RevokedToken => "RevokedTokenError",
            Decode => "JWTDecodeError",
            BadSignature => "TokenInvalidSignatureError",
            Expired => "TokenExpiredError",
            BadAudience => "TokenInvalidAudienceError",
            BadIssuer => "TokenInvalidIssuerError",
            AccessTokenRequired => "AccessTokenRequiredError",
            RefreshTokenRequired => "RefreshTokenRequiredError",
            FreshTokenRequired => "FreshTokenRequiredError",
            Csrf => "CSRFError",
            InsufficientScope => "InsufficientScopeError",
            UntrustedProxy => "UntrustedProxyError",
            NoRoute => "NoRouteError",
            BadRequest => "BadRequestError",
            NotImplemented => "NotImplementedError",
            HeadersTooLarge => "HeadersTooLargeError",
            StoreUnavailable => "RevocationStoreError",
            Upstream => "UpstreamError",
            UpstreamTimeout => "UpstreamTimeoutError",
        }
    }

    /// The human message carried in the JSON body (AuthX's wording).
    pub fn message(self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingToken => "Token Error",
            RevokedToken => "Invalid token",
            Decode => "Invalid Token",
            BadSignature => "Signature verification failed",
            Expired => "Token has expired",
            BadAudience => "Invalid audience",
            BadIssuer => "Invalid issuer",
            AccessTokenRequired => "Access token required",
            RefreshTokenRequired => "Refresh token required",
            FreshTokenRequired => "Fresh token required",
            Csrf => "CSRF double submit does not match",
            InsufficientScope => "Missing required claims",
            UntrustedProxy => "Forbidden",
            NoRoute => "Not found",
            BadRequest => "Bad request",
            NotImplemented => "Not implemented",
            HeadersTooLarge => "Request header fields too large",
            StoreUnavailable => "Revocation store unavailable",
            Upstream => "Bad gateway",
            UpstreamTimeout => "Gateway timeout",
        }
    }

    /// The `WWW-Authenticate` value for 401s (RFC 6750 §3), `None` for other statuses.
    pub fn www_authenticate(self) -> Option<HeaderValue> {
        match self {
            GatewayError::MissingToken => Some(HeaderValue::from_static("Bearer")),
            e if e.status() == StatusCode::UNAUTHORIZED => {
                Some(HeaderValue::from_static("Bearer error=\"invalid_token\""))
            }
            _ => None,
        }
    }

    /// The JSON body `{"message": ..., "error_type": ...}`. Both strings are static
    /// ASCII without quotes or backslashes, so plain concatenation is valid JSON.
    pub fn body(self) -> Bytes {
        if self == GatewayError::HeadersTooLarge {
            // The contract gives 431 no body.
            return Bytes::new();
        }
        Bytes::from(format!(
            "{{\"message\":\"{}\",\"error_type\":\"{}\"}}",
            self.message(),
            self.error_type()
        ))
    }

    /// Builds the complete response for this refusal, wrapping the body with `body`.
    pub fn into_response<B>(self, body: impl FnOnce(Bytes) -> B) -> http::Response<B> {
        let mut response = http::Response::new(body(self.body()));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        if self != GatewayError::HeadersTooLarge {
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
        }
        if let Some(value) = self.www_authenticate() {
            headers.insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

/// An error and its sources on one line, for logs.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_the_contract_table() {
        use GatewayError::*;
        let table = [
            (MissingToken, 401, "MissingTokenError", "Token Error"),
            (RevokedToken, 401, "RevokedTokenError", "Invalid token"),
            (Decode, 401, "JWTDecodeError", "Invalid Token"),
            (
                BadSignature,
                401,
                "TokenInvalidSignatureError",
                "Signature verification failed",
            ),
            (Expired, 401, "TokenExpiredError", "Token has expired"),
            (
                BadAudience,
                401,
                "TokenInvalidAudienceError",
                "Invalid audience",
            ),
            (BadIssuer, 401, "TokenInvalidIssuerError", "Invalid issuer"),
            (
                AccessTokenRequired,
                401,
                "AccessTokenRequiredError",
                "Access token required",
            ),
            (
                RefreshTokenRequired,
                401,
                "RefreshTokenRequiredError",
                "Refresh token required",
            ),
            (
                FreshTokenRequired,
                401,
                "FreshTokenRequiredError",
                "Fresh token required",
            ),
            (Csrf, 401, "CSRFError", "CSRF double submit does not match"),
            (
                InsufficientScope,
                403,
                "InsufficientScopeError",
                "Missing required claims",
            ),
            (UntrustedProxy, 403, "UntrustedProxyError", "Forbidden"),
            (NoRoute, 404, "NoRouteError", "Not found"),
            (BadRequest, 400, "BadRequestError", "Bad request"),
            (
                NotImplemented,
                501,
                "NotImplementedError",
                "Not implemented",
            ),
            (
                StoreUnavailable,
                503,
                "RevocationStoreError",
                "Revocation store unavailable",
            ),
            (Upstream, 502, "UpstreamError", "Bad gateway"),
            (
                UpstreamTimeout,
                504,
                "UpstreamTimeoutError",
                "Gateway timeout",
            ),
        ];
        for (error, status, error_type, message) in table {
            assert_eq!(error.status().as_u16(), status, "{error:?}");
            assert_eq!(error.error_type(), error_type);
            assert_eq!(error.message(), message);
            let body: serde_json::Value = serde_json::from_slice(&error.body()).unwrap();
            assert_eq!(
                body,
                serde_json::json!({"message": message, "error_type": error_type})
            );
        }
        assert_eq!(HeadersTooLarge.status().as_u16(), 431);
        assert!(HeadersTooLarge.body().is_empty());
    }

    #[test]
    fn all_is_in_declaration_order() {
        for (i, e) in GatewayError::ALL.iter().enumerate() {
            assert_eq!(*e as usize, i);
        }
    }

    #[test]
    fn www_authenticate_follows_rfc6750() {
        assert_eq!(
            GatewayError::MissingToken.www_authenticate().unwrap(),
            "Bearer"
        );
        assert_eq!(
            GatewayError::Expired.www_authenticate().unwrap(),
            "Bearer error=\"invalid_token\""
        );
        assert!(GatewayError::NoRoute.www_authenticate().is_none());
    }
}
