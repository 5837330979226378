//! `upstreams:`: the named backends routes send requests to.

use super::checker::{key_name, Checker};
use super::{file, UpstreamConfig};
use http::Uri;
use serde_yaml::Value;
use std::time::Duration;

impl Checker {
    pub(super) fn upstreams(&mut self, raw: Option<&Value>) -> Vec<UpstreamConfig> {
        let mut out = Vec::new();
        let Some(raw) = raw else {
            self.error("upstreams", "at least one upstream is required");
            return out;
        };
        if raw.as_mapping().is_some_and(|map| map.is_empty()) {
            self.error("upstreams", "at least one upstream is required");
        }
        let Some(map) = raw.as_mapping() else {
            self.error("upstreams", "must be a mapping of name -> { url, ... }");
            return out;
        };
        for (key, value) in map {
            let name = key_name(key);
            let path = format!("upstreams.{name}");
            // An upstream with errors is still defined: routes naming it are not told it
            // is missing, and its other keys are still checked. The placeholder URL never
            // serves: a config with errors does not load.
            let placeholder = || Uri::from_static("http://invalid.invalid");
            let Some(f) = self.typed::<file::UpstreamFile>(value, &path) else {
                out.push(UpstreamConfig {
                    name,
                    url: placeholder(),
                    connect_timeout: Duration::from_secs(2),
                    timeout: Duration::from_secs(30),
                    ca_file: None,
                });
                continue;
            };
            let url = match f.url.as_deref() {
                None => {
                    self.error(&format!("{path}.url"), "required");
                    placeholder()
                }
                Some(raw) => match raw.parse::<Uri>() {
                    // Requests keep their own query; one on the base URL was dropped
                    // without a word, so it is an error rather than a surprise.
                    Ok(uri)
                        if uri.query().is_some()
                            && matches!(uri.scheme_str(), Some("http") | Some("https")) =>
                    {
                        self.error(
                            &format!("{path}.url"),
                            format!("{raw:?} has a query; an upstream URL is a scheme, host, port and optional path prefix"),
                        );
                        placeholder()
                    }
                    // `http` takes any digits as a port (`:99999` read as no port at all).
                    Ok(uri)
                        if uri
                            .authority()
                            .and_then(|a| a.as_str().rsplit_once(':'))
                            .map(|(_, port)| port)
                            .is_some_and(|port| {
                                port.bytes().all(|b| b.is_ascii_digit())
                                    && port.parse::<u16>().map_or(true, |p| p == 0)
                            }) =>
                    {
                        self.error(
                            &format!("{path}.url"),
                            format!("{raw:?}: the port must be 1 to 65535"),
                        );
                        placeholder()
                    }
                    Ok(uri)
                        if matches!(uri.scheme_str(), Some("http") | Some("https"))
                            && uri.authority().is_some() =>
                    {
                        uri
                    }
                    _ => {
                        self.error(
                            &format!("{path}.url"),
                            format!("{raw:?} is not an http:// or https:// URL"),
                        );
                        placeholder()
                    }
                },
            };
            let connect_timeout = self.duration(
                f.connect_timeout.as_deref(),
                &format!("{path}.connect_timeout"),
                Duration::from_secs(2),
            );
            let timeout = self.duration(
                f.timeout.as_deref(),
                &format!("{path}.timeout"),
                Duration::from_secs(30),
            );
            let ca_file = f
                .ca_file
                .as_deref()
                .map(|p| self.file_exists(p, &format!("{path}.ca_file")));
            if let Some(ca) = ca_file.as_deref().filter(|p| p.is_file()) {
                if let Err(e) = crate::tls::read_certs(ca) {
                    self.error(&format!("{path}.ca_file"), e.to_string());
                }
            }
            out.push(UpstreamConfig {
                name,
                url,
                connect_timeout,
                timeout,
                ca_file,
            });
        }
        out
    }
}
