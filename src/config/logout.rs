//! `logout:`: the logout endpoint and OIDC back-channel logout, which needs the
//! provider settings of `jwt:`.

use super::checker::Checker;
use super::{file, BackchannelRevokes, JwtConfig, LogoutConfig, ProviderConfig};

impl Checker {
    pub(super) fn logout(
        &mut self,
        f: Option<file::LogoutFile>,
        jwt: Option<&JwtConfig>,
        providers: &[ProviderConfig],
    ) -> LogoutConfig {
        let f = f.unwrap_or_default();
        let path = f.path.unwrap_or_else(|| "/logout".to_owned());
        self.absolute_path(&path, "logout.path");
        let backchannel_audience = match f.backchannel_audience {
            Some(list) => {
                let list = list.into_vec();
                if list.iter().any(String::is_empty) || list.is_empty() {
                    self.error(
                        "logout.backchannel_audience",
                        "must list the gateway's client_id(s) at the provider, none empty",
                    );
                }
                list
            }
            None => jwt.map(|j| j.audience.clone()).unwrap_or_default(),
        };
        let backchannel_revokes = match f.backchannel_revokes.as_deref() {
            None | Some("session") => BackchannelRevokes::Session,
            Some("subject") => BackchannelRevokes::Subject,
            Some(other) => {
                self.error(
                    "logout.backchannel_revokes",
                    format!("{other:?} is not one of session, subject"),
                );
                BackchannelRevokes::Session
            }
        };
        if let Some(p) = &f.backchannel_path {
            self.absolute_path(p, "logout.backchannel_path");
            // A logout token comes from the provider its `iss` names: `jwt`, or a named
            // provider that takes keys from a JWKS (a named provider always has an issuer).
            let named_idp = providers.iter().skip(1).any(ProviderConfig::uses_jwks);
            if let Some(jwt) = jwt.filter(|_| !named_idp) {
                if jwt.jwks_url.is_none() && !jwt.discovery {
                    self.error(
                        "logout.backchannel_path",
                        "needs jwt.jwks_url or jwt.discovery (the provider's keys)",
                    );
                }
                if jwt.issuer.is_none() {
                    self.error(
                        "logout.backchannel_path",
                        "needs jwt.issuer (a logout token's iss must equal it)",
                    );
                }
            }
            if jwt.is_some() && backchannel_audience.is_empty() {
                self.error("logout.backchannel_path", "needs logout.backchannel_audience or jwt.audience (the gateway's client_id, which a logout token's aud must hold)");
            }
        }
        LogoutConfig {
            path,
            methods: self.methods(f.methods, "logout.methods", &["POST"]),
            revoke_refresh: f.revoke_refresh.unwrap_or(true),
            forward: f.forward.unwrap_or(false),
            backchannel_path: f.backchannel_path,
            backchannel_audience,
            backchannel_revokes,
        }
    }
}
