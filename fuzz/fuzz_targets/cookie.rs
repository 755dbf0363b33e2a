//! The sticky cookie parser: any Cookie header and any value must neither panic
//! nor open unless it is exactly a value the sealer made.
#![no_main]

use hybrid_lb::sticky::{find_cookie, Sealer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let sealer = Sealer::new(b"fuzzing-secret-0123456789abcdef");
    if let Some(value) = find_cookie(std::iter::once(text), "HLB_STICKY") {
        if let Ok(key) = sealer.open(value, 1_800_000_000) {
            // Only a genuine seal opens: resealing gives back the same value.
            let expiry: u64 = value.split('.').nth(1).unwrap().parse().unwrap();
            assert_eq!(sealer.seal(&key, expiry), value);
        }
    }
    let _ = sealer.open(text, 1_800_000_000);
});
