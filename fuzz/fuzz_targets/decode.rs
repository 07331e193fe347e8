//! The whole decode path a request's bytes take (format probe, pixel limit,
//! the 1/8-scale JPEG shortcut or the general decoders, EXIF orientation,
//! resize (and crop) to the network's input in both views, the thumbnail,
//! the keypoints):
//! any bytes give an input of the right size or an error, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use lookalike::decode;

const MAX_PIXELS: u64 = 4_000_000;
/// EfficientNet-Lite0's input side.
const SIZE: u32 = 224;

fuzz_target!(|bytes: &[u8]| {
    let views = [decode::View::Whole, decode::View::Centre];
    if let Ok(decoded) = decode::for_network(bytes, MAX_PIXELS, (SIZE, &views), Some(128), true) {
        assert_eq!(decoded.inputs.len(), views.len());
        for input in &decoded.inputs {
            assert_eq!(input.len(), (SIZE * SIZE * 3) as usize);
            assert!(input.iter().all(|v| v.is_finite()));
        }
        let grey = decoded.for_keypoints.expect("keypoints were asked for");
        let found = lookalike::local::extract_grey(grey);
        assert!(found.points.len() <= lookalike::local::QUERY_KEYPOINTS);
        // What is stored reads back whole.
        let stored = found.stored();
        let back = lookalike::local::Keypoints::from_bytes(&found.to_bytes());
        assert_eq!(back.map(|k| k.points.len()).ok(), Some(stored.points.len()));
    }
});
