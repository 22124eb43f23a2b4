//! Golden cases through the Rust API alone: weights converted from checkpoints
//! written by the official implementation, with the outputs it produced.

use std::path::PathBuf;

use vmamba_rt::{VMamba, Weights};

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

/// (input, its NCHW shape, the file holding the expected outputs).
fn io(case: &str) -> (Vec<f32>, [usize; 4], Weights) {
    let w = Weights::open(data(&format!("{case}.io.safetensors"))).expect("io file");
    let input = w.tensor("input").expect("input");
    let s = input.shape();
    let shape = [s[0], s[1], s[2], s[3]];
    (input.data().to_vec(), shape, w)
}

fn argmax(v: &[f32]) -> usize {
    (0..v.len()).fold(0, |best, i| if v[i] > v[best] { i } else { best })
}

fn rel_err(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    got.iter()
        .zip(want)
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()))
        / scale
}

#[test]
fn vanilla_classifier_matches_official_logits() {
    let model = VMamba::load(data("v0_small.safetensors")).unwrap();
    let (x, shape, io) = io("v0_small");
    let logits = model.forward(&x, shape).unwrap();
    let want = io.tensor("expected").unwrap();
    let classes = model.config().num_classes;
    assert_eq!(want.shape(), &[shape[0], classes]);
    assert!(rel_err(&logits, want.data()) < 1e-4);
    let top = model.top_k(&logits[..classes], 3);
    assert_eq!(top[0].0, model.labels()[argmax(&want.data()[..classes])]);
    assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
}

#[test]
fn v2_backbone_matches_official_feature_maps() {
    let model = VMamba::load(data("v2_backbone.safetensors")).unwrap();
    let (x, shape, io) = io("v2_backbone");
    let feats = model.features(&x, shape).unwrap();
    assert_eq!(feats.len(), 4);
    for (i, f) in feats.iter().enumerate() {
        let want = io.tensor(&format!("expected.{i}")).unwrap();
        assert_eq!(want.shape(), &f.shape[..]);
        assert!(rel_err(&f.data, want.data()) < 1e-4, "stage {i}");
    }
    let err = model.forward(&x, shape).unwrap_err().to_string();
    assert!(err.contains("backbone"), "{err}");
}

#[test]
fn bad_inputs_are_errors_not_panics() {
    let model = VMamba::load(data("v0_small.safetensors")).unwrap();
    let x = vec![0.0f32; 3 * 64 * 64];
    assert!(model
        .forward(&x, [1, 4, 64, 48])
        .unwrap_err()
        .to_string()
        .contains("channels"));
    assert!(model
        .forward(&x, [1, 3, 64, 60])
        .unwrap_err()
        .to_string()
        .contains("needs"));
    assert!(model
        .forward(&[], [0, 3, 64, 64])
        .unwrap_err()
        .to_string()
        .contains("empty batch"));
    assert!(model
        .forward(&x[..27], [1, 3, 3, 3])
        .unwrap_err()
        .to_string()
        .contains("too small"));
    assert!(VMamba::load(data("missing.safetensors")).is_err());
}
