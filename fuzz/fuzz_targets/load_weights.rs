//! cargo-fuzz target for the Rust weights loader: arbitrary bytes as a
//! safetensors file, its preprocessing settings applied to a small image, then
//! the model built from its metadata (every tensor read by name, shape and
//! dtype) and, if that succeeds, one tiny forward pass.
//! Errors are fine; a panic, an abort, a hang or a huge allocation is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmamba_rt::preprocess::{Preprocess, Rgb8};
use vmamba_rt::{weights::META_CONFIG, Config, VMamba, Weights};

fuzz_target!(|data: &[u8]| {
    let Ok(ws) = Weights::from_bytes(data.to_vec()) else {
        return;
    };
    if let Ok(pre) = Preprocess::from_metadata(ws.metadata()) {
        let (width, height) = (3 + data.len() % 29, 1 + data.len() % 7);
        let img = Rgb8 {
            width,
            height,
            data: vec![100; width * height * 3],
        };
        let _ = pre.apply(&img);
    }
    let Some(text) = ws.metadata().get(META_CONFIG) else {
        return;
    };
    let Ok(cfg) = Config::from_json(text) else {
        return;
    };
    // Bound the work an input can ask for: a fuzz input must stay small.
    if cfg.depths.iter().sum::<usize>() > 16 || cfg.dims > 256 {
        return;
    }
    if let Ok(model) = VMamba::from_weights(cfg, &ws) {
        let s = model.min_size().max(8);
        let _ = model.forward(&vec![0.5; 3 * s * s], [1, 3, s, s]);
        let _ = model.features(&vec![0.5; 3 * s * s], [1, 3, s, s]);
    }
});
