//! The config loader: any text either parses or is refused with problems that
//! name a key or a line; it never panics.
#![no_main]

use hybrid_lb::config::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = Config::parse(text) {
        assert!(!e.problems.is_empty());
    }
});
