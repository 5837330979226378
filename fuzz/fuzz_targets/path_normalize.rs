//! Path normalization: never panics, and every accepted path is canonical.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = portcullis::path::normalize(path) {
        assert!(normal.starts_with('/'));
        assert!(!normal.contains("//"));
        assert!(!normal.contains("/../") && !normal.ends_with("/.."));
        assert!(!normal.contains("/./") && !normal.ends_with("/."));
        // Idempotent: a normalized path normalizes to itself.
        assert_eq!(
            portcullis::path::normalize(&normal).as_deref(),
            Ok(&*normal)
        );
    }
});
