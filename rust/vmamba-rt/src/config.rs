//! Architecture description of a VMamba model (docs/model.md §1-6) and the
//! released presets. Field names follow the official `VSSM` constructor, so the
//! JSON stored in converted weights reads like the official kwargs.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::variant::{Act, Ss2dForm};

/// Patch-embedding stem (docs/model.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StemVersion {
    /// Conv k4 s4 -> LayerNorm.
    #[serde(rename = "v1")]
    V1,
    /// Two conv k3 s2 with LayerNorm and GELU between.
    #[serde(rename = "v2")]
    V2,
}

/// Downsampling between stages (docs/model.md §3).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum DownsampleVersion {
    /// Patch merging: 2x2 concat -> LayerNorm -> Linear.
    #[serde(rename = "v1")]
    V1,
    /// Conv k2 s2 -> LayerNorm.
    #[serde(rename = "v2")]
    V2,
    /// Conv k3 s2 p1 -> LayerNorm.
    #[serde(rename = "v3")]
    V3,
}

/// Rank of the dt projection: `"auto"` means `ceil(C / 16)` at each stage width C.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum DtRank {
    /// The same rank at every stage.
    Fixed(usize),
    /// `"auto"`.
    Named(String),
}

fn default_conv() -> i64 {
    3
}
fn default_true() -> bool {
    true
}
fn default_ssm_act() -> Act {
    Act::Silu
}
fn default_mlp_act() -> Act {
    Act::Gelu
}
fn default_imgsize() -> usize {
    224
}
fn default_in_chans() -> usize {
    3
}
fn default_patch_size() -> usize {
    4
}
fn default_dt_rank() -> DtRank {
    DtRank::Named("auto".into())
}

/// The constructor arguments of a VMamba model.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Width of stage 0 (C0); stage i is `dims * 2^i` wide.
    pub dims: usize,
    /// VSS blocks per stage.
    pub depths: Vec<usize>,
    /// State size N of the selective scan.
    pub ssm_d_state: usize,
    /// Inner SS2D width as a multiple of the stage width (0: no SS2D).
    pub ssm_ratio: f64,
    /// Rank of the dt projection.
    #[serde(default = "default_dt_rank")]
    pub ssm_dt_rank: DtRank,
    /// Kernel size of the depthwise convolution in SS2D (odd); below 2: no convolution.
    #[serde(default = "default_conv")]
    pub ssm_conv: i64,
    /// Whether that convolution has a bias.
    pub ssm_conv_bias: bool,
    /// Activation in SS2D (after the convolution, and on the gate).
    #[serde(default = "default_ssm_act")]
    pub ssm_act_layer: Act,
    /// SS2D variant, as the official `forward_type` string (see [`Ss2dForm`]).
    pub forward_type: String,
    /// MLP hidden width as a multiple of the stage width (0: no MLP).
    pub mlp_ratio: f64,
    /// Activation in the MLP.
    #[serde(default = "default_mlp_act")]
    pub mlp_act_layer: Act,
    /// A gated MLP: fc1 yields [x, z] and fc2 reads x * act(z).
    #[serde(default)]
    pub gmlp: bool,
    /// LayerNorms in the stem (off: none).
    #[serde(default = "default_true")]
    pub patch_norm: bool,
    /// A learned position embedding added after the stem, for `imgsize` inputs only.
    #[serde(default)]
    pub posembed: bool,
    /// The input side the position embedding was made for.
    #[serde(default = "default_imgsize")]
    pub imgsize: usize,
    /// Stem variant.
    pub patchembed_version: StemVersion,
    /// Downsampling variant.
    pub downsample_version: DownsampleVersion,
    /// Classes of the classifier head (unused by backbones).
    #[serde(default)]
    pub num_classes: usize,
    /// Stages whose normed output a backbone returns; `None` for a classifier.
    #[serde(default)]
    pub out_indices: Option<Vec<usize>>,
    /// Input channels (3).
    #[serde(default = "default_in_chans")]
    pub in_chans: usize,
    /// Stride of the stem (4).
    #[serde(default = "default_patch_size")]
    pub patch_size: usize,
}

impl Config {
    /// Width of stage `i`: `dims * 2^i`.
    pub fn stage_dim(&self, i: usize) -> usize {
        self.dims << i
    }

    /// Inner SS2D width at model width `c`: `int(ssm_ratio * c)`.
    pub fn d_inner(&self, c: usize) -> usize {
        (self.ssm_ratio * c as f64) as usize
    }

    /// Rank of the dt projection at model width `c`.
    pub fn dt_rank(&self, c: usize) -> usize {
        match &self.ssm_dt_rank {
            DtRank::Fixed(r) => *r,
            DtRank::Named(_) => c.div_ceil(16),
        }
    }

    /// What `forward_type` selects (checked by `validate`).
    pub fn ss2d_form(&self) -> Result<Ss2dForm> {
        Ss2dForm::parse(&self.forward_type)
    }

    /// Kernel size of SS2D's depthwise convolution, if it has one. The vanilla
    /// form always has a 3x3 one (with bias), whatever the config says.
    pub fn dwconv(&self) -> Option<usize> {
        match self.ss2d_form() {
            Ok(f) if f.vanilla => Some(3),
            _ => (self.ssm_conv > 1).then_some(self.ssm_conv as usize),
        }
    }

    /// Whether that convolution has a bias.
    pub fn dwconv_bias(&self) -> bool {
        self.ss2d_form().is_ok_and(|f| f.vanilla) || self.ssm_conv_bias
    }

    /// SS2D's activation (SiLU in the vanilla form, whatever the config says).
    pub fn ssm_act(&self) -> Act {
        match self.ss2d_form() {
            Ok(f) if f.vanilla => Act::Silu,
            _ => self.ssm_act_layer,
        }
    }

    /// Hidden width of the MLP at model width `c` (0 when there is no MLP).
    pub fn mlp_hidden(&self, c: usize) -> usize {
        (self.mlp_ratio * c as f64) as usize
    }

    /// True for detection / segmentation backbones (no classifier head).
    pub fn is_backbone(&self) -> bool {
        self.out_indices.is_some()
    }

    /// Parse and validate a config from its JSON form.
    pub fn from_json(text: &str) -> Result<Self> {
        let cfg: Config = serde_json::from_str(text).map_err(|e| Error::Config(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The JSON form stored in converted weights.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("config serialises")
    }

    /// Widest stage 0 a config may ask for (the released models use 96 and 128).
    pub const MAX_DIMS: usize = 1 << 14;
    /// Most blocks in one stage (the released models use up to 27).
    pub const MAX_DEPTH: usize = 1024;
    /// Most classes of a classifier head.
    pub const MAX_CLASSES: usize = 1 << 20;
    /// Most stages.
    pub const MAX_STAGES: usize = 8;
    /// Largest scan state (the released models use 1 and 16).
    pub const MAX_D_STATE: usize = 1024;
    /// Widest depthwise kernel, and largest dt rank.
    pub const MAX_CONV: i64 = 31;
    /// Largest SS2D and MLP width ratios.
    pub const MAX_RATIO: f64 = 64.0;
    /// Most input channels.
    pub const MAX_IN_CHANS: usize = 64;
    /// Largest input side a position embedding is made for.
    pub const MAX_IMGSIZE: usize = 1 << 16;

    /// Reject configurations the runtime cannot build, with the field that is wrong.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.dims == 0 || self.dims > Self::MAX_DIMS {
            return bad(format!(
                "dims must be in 1..={}, got {}",
                Self::MAX_DIMS,
                self.dims
            ));
        }
        if let Some(d) = self.depths.iter().find(|&&d| d > Self::MAX_DEPTH) {
            return bad(format!(
                "a stage may hold at most {} blocks, got {d}",
                Self::MAX_DEPTH
            ));
        }
        if self.num_classes > Self::MAX_CLASSES {
            return bad(format!(
                "num_classes must be at most {}, got {}",
                Self::MAX_CLASSES,
                self.num_classes
            ));
        }
        if self.depths.is_empty() || self.depths.len() > Self::MAX_STAGES {
            return bad(format!(
                "depths must list 1 to 8 stages, got {:?}",
                self.depths
            ));
        }
        if self.ssm_ratio > 0.0 && self.ssm_d_state == 0 {
            return bad("ssm_d_state must be positive".into());
        }
        if !(self.ssm_ratio >= 0.0 && self.ssm_ratio <= Self::MAX_RATIO) {
            return bad(format!("ssm_ratio {} out of range", self.ssm_ratio));
        }
        if !(self.mlp_ratio >= 0.0 && self.mlp_ratio <= Self::MAX_RATIO) {
            return bad(format!("mlp_ratio {} out of range", self.mlp_ratio));
        }
        if let DtRank::Named(s) = &self.ssm_dt_rank {
            if s != "auto" {
                return bad(format!(
                    "ssm_dt_rank must be \"auto\" or an integer, got {s:?}"
                ));
            }
        }
        if matches!(self.ssm_dt_rank, DtRank::Fixed(0)) {
            return bad("ssm_dt_rank must be positive".into());
        }
        if self.ssm_conv > 1 && self.ssm_conv % 2 == 0 {
            return bad(format!(
                "ssm_conv must be odd (or below 2: no convolution), got {}",
                self.ssm_conv
            ));
        }
        self.ss2d_form()?;
        if self.ssm_act_layer == Act::None || self.mlp_act_layer == Act::None {
            return bad(
                "ssm_act_layer and mlp_act_layer name an activation: silu, gelu, relu or sigmoid"
                    .into(),
            );
        }
        if self.posembed && (self.imgsize < self.patch_size || self.imgsize > Self::MAX_IMGSIZE) {
            return bad(format!(
                "imgsize {} out of range for the position embedding",
                self.imgsize
            ));
        }
        for i in 0..self.depths.len() {
            let c = self.stage_dim(i);
            if self.ssm_ratio > 0.0 && self.d_inner(c) == 0 {
                return bad(format!(
                    "ssm_ratio {} leaves no inner width at stage {i} (width {c})",
                    self.ssm_ratio
                ));
            }
            if self.mlp_ratio > 0.0 && self.mlp_hidden(c) == 0 {
                return bad(format!(
                    "mlp_ratio {} leaves no hidden width at stage {i} (width {c})",
                    self.mlp_ratio
                ));
            }
        }
        if self.ssm_d_state > Self::MAX_D_STATE
            || self.ssm_conv > Self::MAX_CONV
            || matches!(self.ssm_dt_rank, DtRank::Fixed(r) if r > Self::MAX_DIMS)
        {
            return bad("ssm_d_state, ssm_conv or ssm_dt_rank out of range".into());
        }
        if self.in_chans == 0 || self.in_chans > Self::MAX_IN_CHANS {
            return bad(format!(
                "in_chans must be in 1..={}, got {}",
                Self::MAX_IN_CHANS,
                self.in_chans
            ));
        }
        if self.patch_size != 4 {
            return bad(format!("patch_size must be 4, got {}", self.patch_size));
        }
        if self.patchembed_version == StemVersion::V2 && !self.dims.is_multiple_of(2) {
            return bad(format!("the v2 stem needs even dims, got {}", self.dims));
        }
        match &self.out_indices {
            Some(idx) => {
                if let Some(i) = idx.iter().find(|&&i| i >= self.depths.len()) {
                    return bad(format!(
                        "out_indices holds {i}, but there are {} stages",
                        self.depths.len()
                    ));
                }
            }
            None if self.num_classes == 0 => {
                return bad(
                    "a classifier needs num_classes > 0 (or give out_indices for a backbone)"
                        .into(),
                )
            }
            None => {}
        }
        Ok(())
    }

    /// How many weights the architecture has (computed from the sizes alone, so a
    /// config can be judged before anything is allocated).
    pub fn param_count(&self) -> f64 {
        let mut total = 0.0;
        let c0 = self.dims as f64;
        total += c0 * self.in_chans as f64 * 16.0 + c0 * c0 * 9.0 + 8.0 * c0; // either stem, generously
        let n_stages = self.depths.len();
        for (i, &depth) in self.depths.iter().enumerate() {
            let c = self.stage_dim(i) as f64;
            let (di, n, r) = (
                self.d_inner(self.stage_dim(i)) as f64,
                self.ssm_d_state as f64,
                self.dt_rank(self.stage_dim(i)) as f64,
            );
            let k2 = self.dwconv().map_or(0.0, |k| (k * k) as f64);
            let ssm = if self.ssm_ratio > 0.0 {
                2.0 * c
                    + 2.0 * di * c
                    + di * (k2 + 10.0)
                    + 4.0 * di * (2.0 * r + 2.0 * n + n + 2.0)
                    + 2.0 * di
                    + c * di
            } else {
                0.0
            };
            let h = self.mlp_hidden(self.stage_dim(i)) as f64;
            let fc = if self.gmlp { 3.0 } else { 2.0 }; // a gated MLP's fc1 is twice as wide
            let mlp = if h > 0.0 {
                2.0 * c + fc * h * c + 2.0 * h + c
            } else {
                0.0
            };
            total += depth as f64 * (ssm + mlp);
            if i + 1 < n_stages {
                total += 2.0 * c * c * 9.0 + 8.0 * c * 2.0; // the largest downsample
            }
            total += 2.0 * c; // an outnorm
        }
        let pos = if self.posembed {
            c0 * (self.imgsize / self.patch_size).pow(2) as f64
        } else {
            0.0
        };
        total + pos + (self.num_classes as f64 + 2.0) * self.stage_dim(n_stages - 1) as f64
    }

    /// Names of the released configurations (docs/model.md §6).
    pub const PRESETS: [&'static str; 9] = [
        "vanilla-vmamba-tiny",
        "vanilla-vmamba-small",
        "vanilla-vmamba-base",
        "vmamba-tiny-s2l5",
        "vmamba-small-s2l15",
        "vmamba-base-s2l15",
        "vmamba-tiny-s1l8",
        "vmamba-small-s1l20",
        "vmamba-base-s1l20",
    ];

    /// A released configuration by name, with 1000 ImageNet classes.
    ///
    /// ```
    /// let cfg = vmamba_rt::Config::preset("vanilla-vmamba-tiny").unwrap();
    /// assert_eq!((cfg.dims, cfg.ssm_d_state, cfg.d_inner(96)), (96, 16, 192));
    /// assert!(vmamba_rt::Config::preset("vmamba-huge").is_none());
    /// ```
    pub fn preset(name: &str) -> Option<Self> {
        let (dims, depths, v2, ratio): (usize, [usize; 4], bool, f64) = match name {
            "vanilla-vmamba-tiny" => (96, [2, 2, 9, 2], false, 2.0),
            "vanilla-vmamba-small" => (96, [2, 2, 27, 2], false, 2.0),
            "vanilla-vmamba-base" => (128, [2, 2, 27, 2], false, 2.0),
            "vmamba-tiny-s2l5" => (96, [2, 2, 5, 2], true, 2.0),
            "vmamba-small-s2l15" => (96, [2, 2, 15, 2], true, 2.0),
            "vmamba-base-s2l15" => (128, [2, 2, 15, 2], true, 2.0),
            "vmamba-tiny-s1l8" => (96, [2, 2, 8, 2], true, 1.0),
            "vmamba-small-s1l20" => (96, [2, 2, 20, 2], true, 1.0),
            "vmamba-base-s1l20" => (128, [2, 2, 20, 2], true, 1.0),
            _ => return None,
        };
        Some(Config {
            dims,
            depths: depths.to_vec(),
            ssm_d_state: if v2 { 1 } else { 16 },
            ssm_ratio: ratio,
            ssm_dt_rank: default_dt_rank(),
            ssm_conv: 3,
            ssm_conv_bias: !v2,
            ssm_act_layer: Act::Silu,
            forward_type: if v2 { "v05_noz" } else { "v0" }.into(),
            mlp_ratio: if v2 { 4.0 } else { 0.0 },
            mlp_act_layer: Act::Gelu,
            gmlp: false,
            patch_norm: true,
            posembed: false,
            imgsize: 224,
            patchembed_version: if v2 { StemVersion::V2 } else { StemVersion::V1 },
            downsample_version: if v2 {
                DownsampleVersion::V3
            } else {
                DownsampleVersion::V1
            },
            num_classes: 1000,
            out_indices: None,
            in_chans: 3,
            patch_size: 4,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_sizes_follow_the_spec() {
        let c = Config::preset("vmamba-tiny-s1l8").unwrap();
        assert_eq!(c.stage_dim(3), 768);
        assert_eq!(c.d_inner(96), 96);
        assert_eq!(c.dt_rank(96), 6);
        assert_eq!(c.dt_rank(100), 7);
        assert_eq!(c.mlp_hidden(96), 384);
        let v = Config::preset("vanilla-vmamba-tiny").unwrap();
        assert_eq!(v.d_inner(96), 192);
        assert!(v.ss2d_form().unwrap().vanilla);
    }

    #[test]
    fn param_count_bounds_the_real_count() {
        for name in Config::PRESETS {
            let cfg = Config::preset(name).unwrap();
            let real: usize = crate::VMamba::parameter_shapes(&cfg)
                .unwrap()
                .iter()
                .map(|(_, s)| s.iter().product::<usize>())
                .sum();
            let est = cfg.param_count();
            assert!(
                est >= real as f64 && est < 1.5 * real as f64,
                "{name}: {est} vs {real}"
            );
        }
    }

    #[test]
    fn json_round_trip_and_validation() {
        let c = Config::preset("vmamba-tiny-s2l5").unwrap();
        assert_eq!(Config::from_json(&c.to_json()).unwrap(), c);
        let bad = c.to_json().replace("\"auto\"", "\"sometimes\"");
        let err = Config::from_json(&bad).unwrap_err().to_string();
        assert!(err.contains("ssm_dt_rank"), "{err}");
        let mut b = c.clone();
        b.out_indices = Some(vec![0, 7]);
        assert!(b
            .validate()
            .unwrap_err()
            .to_string()
            .contains("out_indices holds 7"));
    }
}
