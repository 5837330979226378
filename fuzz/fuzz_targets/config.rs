//! gateway.yaml loading: any text gives a Config or a list of errors, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let result = portcullis::config::parse(
        text,
        std::path::Path::new("/nonexistent/gateway.yaml"),
        |name| (name == "SET").then(|| "value".to_owned()),
    );
    if let Err(errors) = result {
        assert!(!errors.0.is_empty());
        let _ = errors.to_string();
    }
});
