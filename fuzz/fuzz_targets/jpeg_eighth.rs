//! The JPEG 1/8-scale decoder (src/decode/jpeg_eighth.rs) on any bytes: it
//! parses headers and entropy-coded data itself, so it must refuse what is
//! malformed without a panic, a hang or an allocation beyond the limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::decode::jpeg_eighth;

/// The daemon's default pixel limit is far larger; a small one keeps each
/// run fast and still exercises the refusal path.
const MAX_PIXELS: u64 = 4_000_000;

fuzz_target!(|bytes: &[u8]| {
    if let Some(image) = jpeg_eighth::decode(bytes, MAX_PIXELS) {
        assert!(u64::from(image.width()) * u64::from(image.height()) <= MAX_PIXELS);
    }
});
