//! The whole decode path a request's bytes take (format probe, pixel limit,
//! the 1/8-scale JPEG shortcut or the general decoders, EXIF orientation,
//! resize and crop to the network's input): any bytes give an input of the
//! right size or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::decode;

const MAX_PIXELS: u64 = 4_000_000;
/// EfficientNet-Lite0's input side.
const SIZE: u32 = 224;

fuzz_target!(|bytes: &[u8]| {
    if let Ok(input) = decode::network_input(bytes, MAX_PIXELS, SIZE) {
        assert_eq!(input.len(), (SIZE * SIZE * 3) as usize);
        assert!(input.iter().all(|v| v.is_finite()));
    }
});
