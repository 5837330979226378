//! Token extraction and decoding: arbitrary Authorization, Cookie and query values go
//! through the same code as a request, and must come back as a verdict, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;
use portcullis::auth::verify::Verifier;
use portcullis::config::{self, AuthMode, Config};
use std::sync::OnceLock;

fn setup() -> &'static (Config, Verifier) {
    static SETUP: OnceLock<(Config, Verifier)> = OnceLock::new();
    SETUP.get_or_init(|| {
        let yaml = "jwt:\n  algorithms: [HS256, HS512]\n  secret: fuzz-secret-0123456789\n  token_location: [headers, cookies, query]\n  audience: [api]\nblocklist: { store: memory }\nupstreams: { app: { url: http://127.0.0.1:9 } }\nroutes: [{ prefix: /, upstream: app }]\n";
        let config = config::parse(yaml, std::path::Path::new("/fuzz/gateway.yaml"), |_| None)
            .expect("fuzz config");
        let verifier = Verifier::new(&config.jwt, Vec::new(), 1024, Default::default(), None);
        (config, verifier)
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, verifier) = setup();
    let text = String::from_utf8_lossy(data);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_bytes(data) {
        headers.insert(http::header::COOKIE, v.clone());
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let query = format!("token={text}");
    for mode in [AuthMode::Access, AuthMode::Refresh, AuthMode::Any] {
        let _ = portcullis::auth::authenticate(&headers, Some(&query), mode, &config.jwt, verifier);
    }
    // The raw bytes as a token, straight into the decoder.
    let _ = verifier.verify_uncached(&text, 1_700_000_000);
});
