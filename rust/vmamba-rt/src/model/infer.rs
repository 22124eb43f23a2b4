//! The architecture of a bare state dict, worked out from its tensor names and
//! shapes alone (the converter's last resort: no preset, no config). The names
//! are the ones the model code loads (`VMamba::parameter_shapes`); a test holds
//! this to be its inverse for every released and official setting it can tell.
//!
//! Names and shapes cannot tell a scan order from another, or one activation
//! from another: the standard forms are guessed (the converter says so).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{json, Value};

use crate::config::Config;

/// The config (JSON, as the converter writes it before validation) of weights
/// with these (name, shape) pairs; the error says why it cannot be told.
pub fn infer_config(tensors: &[(String, Vec<usize>)]) -> Result<Value, String> {
    let shapes: HashMap<&str, &[usize]> = tensors
        .iter()
        .map(|(n, s)| (n.as_str(), s.as_slice()))
        .collect();
    let shape = |name: &str| shapes.get(name).copied();
    let dim = |name: &str, s: &[usize], i: usize| {
        s.get(i)
            .copied()
            .ok_or_else(|| format!("'{name}' has shape {s:?}, too few dimensions"))
    };

    // One pass over the names: stage -> block indices.
    let mut blocks_of: BTreeMap<usize, BTreeSet<usize>> = BTreeMap::new();
    for (name, _) in tensors {
        let Some((stage, block)) = stage_and_block(name) else {
            continue;
        };
        let blocks = blocks_of.entry(stage).or_default();
        blocks.extend(block);
        if blocks.len() > Config::MAX_DEPTH {
            return Err(format!(
                "more than {} blocks in stage {stage}",
                Config::MAX_DEPTH
            ));
        }
        if blocks_of.len() > Config::MAX_STAGES {
            return Err(format!("more than {} stages", Config::MAX_STAGES));
        }
    }

    let stem0 = match shape("patch_embed.0.weight") {
        Some(s) if s.len() == 4 => s,
        _ => return Err("no 4-D 'patch_embed.0.weight'".into()),
    };
    let (stem, dims) = if let Some(s) = shape("patch_embed.5.weight") {
        ("v2", dim("patch_embed.5.weight", s, 0)?)
    } else if stem0[2] == 4 {
        ("v1", stem0[0])
    } else {
        return Err(format!(
            "'patch_embed.0.weight' has shape {stem0:?}, which fits neither stem"
        ));
    };
    let in_chans = stem0[1];
    if !(1..=Config::MAX_DIMS).contains(&dims) || !(1..=Config::MAX_IN_CHANS).contains(&in_chans) {
        return Err(format!(
            "stem of {dims} channels from {in_chans} inputs is out of range"
        ));
    }

    let stages: Vec<usize> = blocks_of.keys().copied().collect();
    if stages.is_empty() || stages.iter().enumerate().any(|(i, &s)| i != s) {
        return Err(format!("stage indices {stages:?} are not 0..n-1"));
    }
    let mut depths = Vec::new();
    for (i, blocks) in blocks_of.values().enumerate() {
        if blocks.iter().enumerate().any(|(j, &b)| j != b) {
            let some: Vec<_> = blocks.iter().take(20).collect();
            return Err(format!(
                "block indices of stage {i} are not contiguous: {some:?}"
            ));
        }
        depths.push(blocks.len());
    }

    let down = if shape("layers.0.downsample.reduction.weight").is_some() {
        "v1"
    } else if let Some(s) = shape("layers.0.downsample.1.weight") {
        match s.last() {
            Some(2) => "v2",
            Some(3) => "v3",
            k => return Err(format!("downsample conv of kernel {k:?}")),
        }
    } else if stages.len() > 1 {
        return Err("no downsample weights after stage 0".into());
    } else {
        "v1"
    };

    let mut cfg = json!({
        "dims": dims, "depths": depths, "patchembed_version": stem, "downsample_version": down,
        "in_chans": in_chans, "patch_size": 4, "ssm_d_state": 16, "ssm_ratio": 0.0, "ssm_dt_rank": "auto",
        "ssm_conv": 3, "ssm_conv_bias": false, "forward_type": "v05_noz", "mlp_ratio": 0.0,
    });
    let mut ranks: BTreeMap<usize, usize> = BTreeMap::new(); // stage width -> dt rank
    for (i, &depth) in depths.iter().enumerate() {
        let c = dims << i;
        for j in 0..depth {
            let p = format!("layers.{i}.blocks.{j}");
            let has = |key: &str| shapes.contains_key(format!("{p}.{key}").as_str());
            let get = |key: &str| {
                let name = format!("{p}.{key}");
                shape(&name).map(|s| (name, s))
            };
            if let Some((name, a)) = get("op.A_logs") {
                let (di, n) = (dim(&name, a, 0)? / 4, dim(&name, a, 1)?);
                cfg["ssm_d_state"] = n.into();
                cfg["ssm_ratio"] = (di as f64 / c as f64).into();
                let (inp_name, inp) =
                    get("op.in_proj.weight").ok_or(format!("no '{p}.op.in_proj.weight'"))?;
                let conv = get("op.conv2d.weight").and_then(|(_, s)| s.last().copied());
                cfg["ssm_conv"] = conv.map_or(-1, |k| k as i64).into();
                let conv_bias = has("op.conv2d.bias");
                cfg["ssm_conv_bias"] = conv_bias.into();
                let gated = dim(&inp_name, inp, 0)? == 2 * di;
                // The out norm by its keys; with none, the parameter-free ones
                // (identity, softmax, sigmoid) cannot be told apart: identity is the guess.
                let norm = [
                    ("op.out_norm.weight", ""),
                    ("op.out_norm.1.weight", "_ondwconv3"),
                    ("op.out_norm.0.weight", "_oncnorm"),
                ]
                .into_iter()
                .find(|(key, _)| has(key))
                .map_or("_onnone", |(_, post)| post);
                let vanilla = gated && norm.is_empty() && conv == Some(3) && conv_bias;
                cfg["forward_type"] = if vanilla {
                    "v0".to_string()
                } else {
                    format!("v05{norm}{}", if gated { "" } else { "_noz" })
                }
                .into();
                let (dtw_name, dtw) =
                    get("op.dt_projs_weight").ok_or(format!("no '{p}.op.dt_projs_weight'"))?;
                ranks.insert(c, dim(&dtw_name, dtw, 2)?);
            }
            if let Some((fc1_name, fc1)) = get("mlp.fc1.weight") {
                let hidden = dim(&fc1_name, fc1, 0)?;
                let gmlp = matches!(get("mlp.fc2.weight"),
                    Some((_, fc2)) if fc2.len() == 2 && fc2[1].checked_mul(2) == Some(hidden));
                cfg["gmlp"] = gmlp.into();
                cfg["mlp_ratio"] =
                    ((if gmlp { hidden / 2 } else { hidden }) as f64 / c as f64).into();
            }
        }
    }
    if !ranks.is_empty() {
        let fixed: BTreeSet<usize> = ranks.values().copied().collect();
        if ranks.iter().all(|(&c, &r)| r == c.div_ceil(16)) {
            cfg["ssm_dt_rank"] = "auto".into();
        } else if fixed.len() == 1 {
            cfg["ssm_dt_rank"] = ranks.values().next().copied().into();
        } else {
            return Err(format!(
                "dt ranks {ranks:?} fit neither 'auto' nor one fixed rank"
            ));
        }
    }

    cfg["patch_norm"] = shapes.contains_key("patch_embed.2.weight").into();
    if let Some(pos) = shape("pos_embed") {
        if pos.len() != 4 || pos[2] != pos[3] {
            return Err(format!(
                "'pos_embed' has shape {pos:?}; expected (1, C, S, S)"
            ));
        }
        cfg["posembed"] = true.into();
        cfg["imgsize"] = pos[3].saturating_mul(4).into();
    }
    let outs: BTreeSet<usize> = tensors
        .iter()
        .filter_map(|(name, _)| {
            let i = name.strip_prefix("outnorm")?.strip_suffix(".weight")?;
            (1..=3).contains(&i.len()).then_some(())?;
            i.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| i.parse().ok())?
        })
        .collect();
    if let Some(head) = shape("classifier.head.weight") {
        cfg["num_classes"] = dim("classifier.head.weight", head, 0)?.into();
        cfg["out_indices"] = Value::Null;
    } else if !outs.is_empty() {
        cfg["num_classes"] = 0.into();
        cfg["out_indices"] = outs.into_iter().collect::<Vec<_>>().into();
    } else {
        return Err(
            "neither a classifier head ('classifier.head.weight') nor backbone norms ('outnorm{i}')"
                .into(),
        );
    }
    Ok(cfg)
}

/// (stage, block) of `layers.{stage}.` or `layers.{stage}.blocks.{block}.`
/// names (indices of 1 to 6 digits).
fn stage_and_block(name: &str) -> Option<(usize, Option<usize>)> {
    fn index(s: &str) -> Option<(usize, &str)> {
        let end = s.find('.')?;
        let digits = &s[..end];
        if !(1..=6).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some((digits.parse().ok()?, &s[end + 1..]))
    }
    let (stage, rest) = index(name.strip_prefix("layers.")?)?;
    let block = rest.strip_prefix("blocks.").and_then(index).map(|(b, _)| b);
    Some((stage, block))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VMamba;

    /// Inference inverts `parameter_shapes` for every setting names and shapes
    /// can tell: the released models and the official ablations' settings.
    #[test]
    fn inference_inverts_the_parameter_names() {
        let mut cases = Vec::new();
        for preset in Config::PRESETS {
            let mut cfg = Config::preset(preset).unwrap();
            cfg.depths = cfg.depths.iter().map(|&d| d.min(2)).collect(); // the names, not the size
            cases.push(cfg);
        }
        let base = || {
            let mut cfg = Config::preset("vmamba-tiny-s1l8").unwrap();
            (cfg.dims, cfg.depths) = (16, vec![1, 2, 1]);
            cfg
        };
        for forward in ["v05_ondwconv3_noz", "v05_oncnorm_noz", "v05", "v05_onnone"] {
            let mut cfg = base();
            cfg.forward_type = forward.into();
            cases.push(cfg);
        }
        let mut gmlp = base();
        gmlp.gmlp = true;
        let mut plain_stem = base();
        plain_stem.patch_norm = false;
        let mut pos = base();
        (pos.posembed, pos.imgsize) = (true, 64);
        let mut backbone = base();
        (backbone.num_classes, backbone.out_indices) = (0, Some(vec![1, 2]));
        let mut no_conv = base();
        no_conv.ssm_conv = -1;
        let mut rank = base();
        rank.ssm_dt_rank = crate::config::DtRank::Fixed(3);
        cases.extend([gmlp, plain_stem, pos, backbone, no_conv, rank]);
        for cfg in cases {
            let shapes = VMamba::parameter_shapes(&cfg).unwrap();
            let got = Config::from_json(&infer_config(&shapes).unwrap().to_string()).unwrap();
            let mut want = cfg.clone();
            // What names cannot tell keeps its default; a preset's imgsize is not in the names.
            if !want.posembed {
                want.imgsize = got.imgsize;
            }
            assert_eq!(got, want, "{}", cfg.to_json());
        }
    }

    #[test]
    fn names_that_fit_no_architecture_are_refused_by_why() {
        let t = |pairs: &[(&str, &[usize])]| -> Vec<(String, Vec<usize>)> {
            pairs
                .iter()
                .map(|(n, s)| (n.to_string(), s.to_vec()))
                .collect()
        };
        let stem: (&str, &[usize]) = ("patch_embed.0.weight", &[96, 3, 4, 4]);
        let head: (&str, &[usize]) = ("classifier.head.weight", &[10, 96]);
        for (tensors, why) in [
            (t(&[]), "no 4-D 'patch_embed.0.weight'"),
            (
                t(&[("patch_embed.0.weight", &[96, 3, 3, 3])]),
                "fits neither stem",
            ),
            (
                t(&[stem, ("patch_embed.5.weight", &[])]),
                "'patch_embed.5.weight' has shape [], too few dimensions",
            ),
            (
                t(&[stem, ("layers.1.blocks.0.norm.weight", &[96])]),
                "are not 0..n-1",
            ),
            (
                t(&[stem, ("layers.0.blocks.1.norm.weight", &[96])]),
                "are not contiguous",
            ),
            (
                t(&[stem, ("layers.0.blocks.0.op.A_logs", &[8]), head]),
                "'layers.0.blocks.0.op.A_logs' has shape [8], too few dimensions",
            ),
            (
                t(&[
                    stem,
                    ("layers.0.blocks.0.norm.weight", &[96]),
                    ("layers.0.downsample.1.weight", &[]),
                ]),
                "downsample conv of kernel None",
            ),
            (
                t(&[stem, ("layers.0.blocks.0.norm.weight", &[96])]),
                "neither a classifier head",
            ),
        ] {
            let err = infer_config(&tensors).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
        let many: Vec<(String, Vec<usize>)> = (0..2000)
            .map(|i| (format!("layers.0.blocks.{i}.norm.weight"), vec![1]))
            .collect();
        assert!(infer_config(&many)
            .unwrap_err()
            .contains("more than 1024 blocks"));
        // An fc2 width that would wrap around when doubled is no gated MLP's.
        let wide = t(&[
            stem,
            ("layers.0.blocks.0.mlp.fc1.weight", &[usize::MAX - 1, 96]),
            ("layers.0.blocks.0.mlp.fc2.weight", &[96, usize::MAX]),
            head,
        ]);
        assert_eq!(infer_config(&wide).unwrap()["gmlp"], false);
        // Indices of more than six digits are not stage or block indices.
        assert_eq!(stage_and_block("layers.1234567.x"), None);
        assert_eq!(stage_and_block("layers.2.blocks.7.op"), Some((2, Some(7))));
        assert_eq!(
            stage_and_block("layers.2.downsample.1.weight"),
            Some((2, None))
        );
    }
}
