//! cargo-fuzz target for the Rust weights loader: arbitrary bytes as a
//! safetensors file, its preprocessing settings applied to a small image, then
//! the model built from its metadata (every tensor read by name, shape and
//! dtype) and, if that succeeds, one tiny forward pass. The same bytes also go
//! to a file, read by `Weights::open` (the header, then each tensor on demand)
//! and by `Weights::open_mmap`, which must agree with the in-memory reader.
//! Errors are fine; a panic, an abort, a hang or a huge allocation is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmamba_rt::preprocess::{Preprocess, Rgb8};
use vmamba_rt::{weights::META_CONFIG, Config, Error, VMamba, Weights};

/// The file's readers (read, mapped) and the in-memory one all refuse the
/// bytes, or all accept them and give the same metadata and the same tensors,
/// bit for bit (or refuse the same ones).
fn same_from_file(data: &[u8], in_memory: &Result<Weights, Error>) {
    let path =
        std::env::temp_dir().join(format!("vmamba-rt-fuzz-{}.safetensors", std::process::id()));
    std::fs::write(&path, data).expect("write the input to a file");
    same(in_memory, &Weights::open(&path));
    same(in_memory, &Weights::open_mmap(&path));
}

fn same(in_memory: &Result<Weights, Error>, from_file: &Result<Weights, Error>) {
    let (a, b) = match (in_memory, from_file) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(_), Err(_)) => return,
        (a, b) => panic!(
            "the readers disagree: in memory {:?}, from the file {:?}",
            a.as_ref().err(),
            b.as_ref().err()
        ),
    };
    assert_eq!(a.metadata(), b.metadata());
    let mut names: Vec<&str> = a.names().collect();
    names.sort();
    let mut other: Vec<&str> = b.names().collect();
    other.sort();
    assert_eq!(names, other);
    for name in names {
        match (a.tensor(name), b.tensor(name)) {
            (Ok(x), Ok(y)) => {
                assert_eq!(x.shape(), y.shape(), "{name}");
                let bits = |p: &vmamba_rt::weights::Param| {
                    p.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>()
                };
                assert!(
                    bits(&x) == bits(&y),
                    "{name}: the readers give different values"
                );
            }
            (Err(_), Err(_)) => {}
            (x, y) => panic!(
                "{name}: the readers disagree: {:?} / {:?}",
                x.err(),
                y.err()
            ),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let ws = Weights::from_bytes(data.to_vec());
    same_from_file(data, &ws);
    let Ok(ws) = ws else {
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
