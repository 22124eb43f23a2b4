//! What the official code's variant settings mean (docs/model.md §9): the
//! `forward_type` string of SS2D, the activation names, and the scan orders.
//! Parsing follows the official constructor step by step, so a string it
//! accepts means here what it means there, and one it would not run is refused.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// An activation layer, by its official name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Act {
    /// The identity (no activation).
    None,
    /// x * sigmoid(x).
    Silu,
    /// The exact (erf) GELU.
    Gelu,
    /// max(x, 0).
    Relu,
    /// 1 / (1 + exp(-x)).
    Sigmoid,
}

/// The order in which one direction of a scan visits the pixels of an H x W map,
/// and where it writes each step's output.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanPath {
    /// Row by row, left to right.
    Raster,
    /// Column by column, top to bottom (the transposed map).
    Transposed,
    /// `Raster` backwards.
    RasterRev,
    /// `Transposed` backwards.
    TransposedRev,
    /// The map turned 90 degrees: columns right to left, each top to bottom.
    Rot90,
    /// The map turned 270 degrees: columns left to right, each bottom to top.
    Rot270,
    /// `RasterRev` whose output at step `l` lands on pixel `l`, not on the pixel
    /// read: the official cascade scan sums its reversed direction unflipped.
    RasterRevUnflipped,
}

impl ScanPath {
    /// The four directions of each official scan mode.
    pub const CROSS: [ScanPath; 4] = [
        Self::Raster,
        Self::Transposed,
        Self::RasterRev,
        Self::TransposedRev,
    ];
    /// `unidi`: four forward raster scans.
    pub const UNIDI: [ScanPath; 4] = [Self::Raster; 4];
    /// `bidi`: two forward, two backward raster scans.
    pub const BIDI: [ScanPath; 4] = [Self::Raster, Self::Raster, Self::RasterRev, Self::RasterRev];
    /// Scan mode 3: the map and its rotations by 90, 180 and 270 degrees.
    pub const ROT: [ScanPath; 4] = [Self::Raster, Self::Rot90, Self::RasterRev, Self::Rot270];

    /// Pixel (row-major `y * w + x`) that step `l` of the path reads.
    pub fn position(self, l: usize, h: usize, w: usize) -> usize {
        let n = h * w;
        match self {
            Self::Raster => l,
            Self::RasterRev | Self::RasterRevUnflipped => n - 1 - l,
            Self::Transposed => (l % h) * w + l / h,
            Self::TransposedRev => ((n - 1 - l) % h) * w + (n - 1 - l) / h,
            Self::Rot90 => (l % h) * w + (w - 1 - l / h),
            Self::Rot270 => (h - 1 - l % h) * w + l / h,
        }
    }

    /// Pixel that step `l`'s output is added to.
    pub fn out_position(self, l: usize, h: usize, w: usize) -> usize {
        match self {
            Self::RasterRevUnflipped => l,
            _ => self.position(l, h, w),
        }
    }
}

/// The scan of SS2D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScanMode {
    /// Four directions over the whole map, each with its own parameters.
    Paths([ScanPath; 4]),
    /// `cascade2d`: a two-direction scan along each row (parameters 0, 1), then,
    /// on its normed result, along each column (parameters 2, 3).
    Cascade,
}

/// SS2D's output norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutNorm {
    /// LayerNorm over channels (the default).
    LayerNorm,
    /// None (`_onnone`).
    Identity,
    /// A 3x3 depthwise convolution without bias (`_ondwconv3`).
    DwConv3,
    /// LayerNorm, then that convolution (`_oncnorm`).
    LayerNormDwConv3,
    /// Softmax over the pixels of each channel (`_onsoftmax`).
    Softmax,
    /// Sigmoid (`_onsigmoid`).
    Sigmoid,
}

/// Everything a `forward_type` string selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ss2dForm {
    /// The first vanilla form (`v0`, `v0seq`): fixed 3x3 conv with bias and SiLU,
    /// whatever the other settings say.
    pub vanilla: bool,
    /// `in_proj` also yields z and the output is multiplied by it.
    pub gated: bool,
    /// z goes through the SS2D activation first (not with `_nozact`).
    pub gate_act: bool,
    /// GELU after the output norm (`_oact`).
    pub out_gelu: bool,
    /// The output norm.
    pub out_norm: OutNorm,
    /// The scan.
    pub scan: ScanMode,
}

impl Ss2dForm {
    /// Parse a `forward_type` as the official SS2D constructor does.
    pub fn parse(forward_type: &str) -> Result<Self> {
        let bad = || {
            Error::Config(format!(
                "forward_type {forward_type:?} is not one the official code runs \
                 (v0, v0seq, or v01-v05, v051d, v052d, v052dc, v052d3, v2, v3 with the \
                 postfixes _no32 _oact _noz _nozact _onnone _ondwconv3 _oncnorm _onsoftmax _onsigmoid)"
            ))
        };
        if forward_type == "v0" || forward_type == "v0seq" {
            return Ok(Ss2dForm {
                vanilla: true,
                gated: true,
                gate_act: true,
                out_gelu: false,
                out_norm: OutNorm::LayerNorm,
                scan: ScanMode::Paths(ScanPath::CROSS),
            });
        }
        // Each postfix is taken off the end, in the official order, if it is there.
        let mut rest = forward_type;
        let mut strip = |tag: &str| match rest.strip_suffix(tag) {
            Some(r) => {
                rest = r;
                true
            }
            None => false,
        };
        strip("_no32"); // fp32 or not: the same values in fp32
        let out_gelu = strip("_oact");
        let no_z = strip("_noz");
        let no_z_act = strip("_nozact");
        let out_norm = if strip("_onnone") {
            OutNorm::Identity
        } else if strip("_ondwconv3") {
            OutNorm::DwConv3
        } else if strip("_oncnorm") {
            OutNorm::LayerNormDwConv3
        } else if strip("_onsoftmax") {
            OutNorm::Softmax
        } else if strip("_onsigmoid") {
            OutNorm::Sigmoid
        } else {
            OutNorm::LayerNorm
        };
        let scan = match rest {
            "v01" | "v02" | "v03" | "v04" | "v05" | "v2" | "v3" => ScanMode::Paths(ScanPath::CROSS),
            "v051d" => ScanMode::Paths(ScanPath::UNIDI),
            "v052d" => ScanMode::Paths(ScanPath::BIDI),
            "v052d3" => ScanMode::Paths(ScanPath::ROT),
            "v052dc" => ScanMode::Cascade,
            _ => return Err(bad()),
        };
        Ok(Ss2dForm {
            vanilla: false,
            gated: !no_z,
            gate_act: !no_z_act,
            out_gelu,
            out_norm,
            scan,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forward_types_parse_as_the_official_constructor_reads_them() {
        let f = Ss2dForm::parse("v05_ondwconv3_noz").unwrap();
        assert_eq!((f.gated, f.out_norm), (false, OutNorm::DwConv3));
        let f = Ss2dForm::parse("v052dc_noz").unwrap();
        assert_eq!(f.scan, ScanMode::Cascade);
        assert!(Ss2dForm::parse("v0seq").unwrap().vanilla);
        let f = Ss2dForm::parse("v05_nozact").unwrap();
        assert!(f.gated && !f.gate_act);
        // "_oact" is looked for before "_noz": the official code does not run this one.
        assert!(Ss2dForm::parse("v05_oact_noz").is_err());
        assert!(Ss2dForm::parse("v05_noz_oact").unwrap().out_gelu);
        assert!(Ss2dForm::parse("v9").is_err());
    }

    #[test]
    fn every_path_visits_every_pixel_once() {
        let (h, w) = (3, 5);
        for path in ScanPath::CROSS.into_iter().chain(ScanPath::ROT) {
            let mut seen: Vec<usize> = (0..h * w).map(|l| path.position(l, h, w)).collect();
            seen.sort_unstable();
            assert_eq!(seen, (0..h * w).collect::<Vec<_>>(), "{path:?}");
        }
        // rot90 of the official code: step l reads (row l % H, column W-1 - l / H)
        assert_eq!(ScanPath::Rot90.position(0, h, w), w - 1);
        assert_eq!(ScanPath::Rot270.position(0, h, w), (h - 1) * w);
    }
}
