//! Image preprocessing that reproduces the official evaluation transform
//! (docs/model.md §8) and the Python package's `vmamba_rt.preprocess`, driven
//! by the same `vmamba_rt.preprocess` metadata. Resampling follows Pillow's
//! separable, antialiased convolution with its 22-bit fixed-point weights, so
//! results agree with the Python path pixel for pixel or within 1/255.

use std::collections::HashMap;

use serde::Deserialize;

use crate::error::{Error, Result};

pub use crate::format::META_PREPROCESS;

/// Largest image (width x height) decoded or produced by resizing, unless the
/// environment variable [`MAX_PIXELS_ENV`] says otherwise. It is Pillow's
/// decompression-bomb limit, so the Python and Rust paths refuse the same images.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;
/// Environment variable overriding [`DEFAULT_MAX_PIXELS`].
pub const MAX_PIXELS_ENV: &str = "VMAMBA_RT_MAX_IMAGE_PIXELS";
/// Largest model input side a weights file may ask for.
pub const MAX_INPUT_SIZE: usize = 4096;
/// The image formats read, by Pillow's names: the `image` crate's features, and
/// the list the Python package hands Pillow (which would otherwise open any
/// format it has a plugin for, EPS through Ghostscript among them).
pub const IMAGE_FORMATS: [&str; 7] = ["PNG", "JPEG", "BMP", "GIF", "TIFF", "WEBP", "PPM"];

/// The pixel limit in force: [`MAX_PIXELS_ENV`] when set, else [`DEFAULT_MAX_PIXELS`].
pub fn max_pixels() -> Result<u64> {
    match std::env::var(MAX_PIXELS_ENV) {
        Ok(v) => v.trim().parse::<u64>().map_err(|_| {
            Error::Usage(format!(
                "{MAX_PIXELS_ENV}={v:?} is not a whole number of pixels"
            ))
        }),
        Err(_) => Ok(DEFAULT_MAX_PIXELS),
    }
}

/// ImageNet channel means (RGB).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (RGB).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Resampling filter, as Pillow names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Interpolation {
    /// Nearest neighbour.
    Nearest,
    /// Triangle filter.
    Bilinear,
    /// Cubic convolution, a = -0.5.
    Bicubic,
    /// Lanczos, 3 lobes.
    Lanczos,
    /// Box filter.
    Box,
    /// Hamming window.
    Hamming,
}

/// How an image is brought to the model's input size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Resize {
    /// Scale the shorter side to `int(resize_ratio * input_size)`, then center-crop.
    Crop,
    /// Resize straight to `input_size` x `input_size`.
    Squash,
}

fn d_size() -> usize {
    224
}
fn d_resize() -> Resize {
    Resize::Crop
}
fn d_ratio() -> f64 {
    256.0 / 224.0
}
fn d_interp() -> Interpolation {
    Interpolation::Bicubic
}
fn d_mean() -> [f32; 3] {
    IMAGENET_MEAN
}
fn d_std() -> [f32; 3] {
    IMAGENET_STD
}

/// Per-model preprocessing settings (the defaults are ImageNet evaluation at 224).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Preprocess {
    /// Side of the square model input.
    #[serde(default = "d_size")]
    pub input_size: usize,
    /// Crop or squash.
    #[serde(default = "d_resize")]
    pub resize: Resize,
    /// Shorter side before the crop, as a multiple of `input_size`.
    #[serde(default = "d_ratio")]
    pub resize_ratio: f64,
    /// Resampling filter.
    #[serde(default = "d_interp")]
    pub interpolation: Interpolation,
    /// Channel means subtracted after scaling to [0, 1].
    #[serde(default = "d_mean")]
    pub mean: [f32; 3],
    /// Channel standard deviations divided by.
    #[serde(default = "d_std")]
    pub std: [f32; 3],
}

impl Default for Preprocess {
    fn default() -> Self {
        serde_json::from_str("{}").expect("defaults")
    }
}

/// An 8-bit RGB image, row-major (H, W, 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rgb8 {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// Pixels, `height * width * 3` bytes.
    pub data: Vec<u8>,
}

impl Preprocess {
    /// Settings from a weights header; the ImageNet defaults when absent.
    pub fn from_metadata(meta: &HashMap<String, String>) -> Result<Self> {
        crate::format::check_entry_sizes(meta)?;
        let p: Preprocess = match meta.get(META_PREPROCESS) {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| Error::Config(format!("{META_PREPROCESS}: {e}")))?,
            None => Preprocess::default(),
        };
        p.validate()?;
        Ok(p)
    }

    /// Refuse settings outside their ranges, naming the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::Config(format!("{META_PREPROCESS}: {what}")));
        if !(1..=MAX_INPUT_SIZE).contains(&self.input_size) {
            return bad(format!(
                "input_size must be in 1..={MAX_INPUT_SIZE}, got {}",
                self.input_size
            ));
        }
        if !(self.resize_ratio > 0.0 && self.resize_ratio <= 16.0) {
            return bad(format!(
                "resize_ratio must be in (0, 16], got {}",
                self.resize_ratio
            ));
        }
        if !self.mean.iter().all(|m| m.is_finite()) {
            return bad(format!("mean must be finite, got {:?}", self.mean));
        }
        if !self.std.iter().all(|s| s.is_finite() && *s > 0.0) {
            return bad(format!(
                "std must be finite and positive, got {:?}",
                self.std
            ));
        }
        Ok(())
    }

    /// The size an image of `w` x `h` is resampled to before the crop.
    fn resize_to(&self, w: usize, h: usize) -> (usize, usize) {
        let s = self.input_size;
        match self.resize {
            Resize::Squash => (s, s),
            Resize::Crop => {
                let size = (self.resize_ratio * s as f64) as usize;
                if w <= h {
                    (size, (size as f64 * h as f64 / w as f64) as usize)
                } else {
                    ((size as f64 * w as f64 / h as f64) as usize, size)
                }
            }
        }
    }

    /// The resize and crop steps. An image with no pixels, or one whose resized
    /// form would exceed the pixel limit (an extreme aspect ratio), is refused.
    pub fn resized(&self, img: &Rgb8) -> Result<Rgb8> {
        let (w, h) = (img.width, img.height);
        if w == 0 || h == 0 {
            return Err(Error::Input(format!("the image has no pixels ({w}x{h})")));
        }
        let (nw, nh) = self.resize_to(w, h);
        let limit = max_pixels()?;
        if nw as f64 * nh as f64 > limit as f64 {
            return Err(Error::Input(format!(
                "a {w}x{h} image would be resized to {nw}x{nh}, over the limit of {limit} pixels \
                 ({MAX_PIXELS_ENV}); its aspect ratio is too extreme"
            )));
        }
        Ok(match self.resize {
            Resize::Squash => resample(img, nw, nh, self.interpolation),
            Resize::Crop => {
                let r = if (nw, nh) == (w, h) {
                    img.clone()
                } else {
                    resample(img, nw, nh, self.interpolation)
                };
                center_crop(&r, self.input_size)
            }
        })
    }

    /// One image -> normalised float32 (3, S, S), channel-first.
    pub fn apply(&self, img: &Rgb8) -> Result<Vec<f32>> {
        let r = self.resized(img)?;
        let hw = r.width * r.height;
        let mut out = vec![0.0f32; 3 * hw];
        for (p, px) in r.data.chunks_exact(3).enumerate() {
            for c in 0..3 {
                out[c * hw + p] = (px[c] as f32 / 255.0 - self.mean[c]) / self.std[c];
            }
        }
        Ok(out)
    }
}

/// Crop `s` x `s` from the center (offsets `round((H - s) / 2)`), zero-padding a smaller image.
fn center_crop(img: &Rgb8, s: usize) -> Rgb8 {
    let (w, h) = (img.width, img.height);
    let (pw, ph) = (w.max(s), h.max(s));
    let (ox, oy) = ((pw - w) / 2, (ph - h) / 2);
    let top = ((ph - s) as f64 / 2.0).round_ties_even() as usize;
    let left = ((pw - s) as f64 / 2.0).round_ties_even() as usize;
    let mut data = vec![0u8; s * s * 3];
    for y in 0..s {
        for x in 0..s {
            let (sy, sx) = (
                (y + top) as isize - oy as isize,
                (x + left) as isize - ox as isize,
            );
            if sy >= 0 && sx >= 0 && (sy as usize) < h && (sx as usize) < w {
                let src = (sy as usize * w + sx as usize) * 3;
                data[(y * s + x) * 3..][..3].copy_from_slice(&img.data[src..src + 3]);
            }
        }
    }
    Rgb8 {
        width: s,
        height: s,
        data,
    }
}

/// Filter kernel and support radius (Pillow's definitions).
fn filter(kind: Interpolation) -> (fn(f64) -> f64, f64) {
    fn bicubic(x: f64) -> f64 {
        let (a, x) = (-0.5, x.abs());
        if x < 1.0 {
            ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
        } else if x < 2.0 {
            (((x - 5.0) * x + 8.0) * x - 4.0) * a
        } else {
            0.0
        }
    }
    fn triangle(x: f64) -> f64 {
        let x = x.abs();
        if x < 1.0 {
            1.0 - x
        } else {
            0.0
        }
    }
    fn boxf(x: f64) -> f64 {
        if (-0.5..0.5).contains(&x) {
            1.0
        } else {
            0.0
        }
    }
    fn hamming(x: f64) -> f64 {
        let x = x.abs();
        if x == 0.0 {
            1.0
        } else if x >= 1.0 {
            0.0
        } else {
            let px = x * std::f64::consts::PI;
            px.sin() / px * (0.54 + 0.46 * px.cos())
        }
    }
    fn sinc(x: f64) -> f64 {
        if x == 0.0 {
            1.0
        } else {
            let px = x * std::f64::consts::PI;
            px.sin() / px
        }
    }
    fn lanczos(x: f64) -> f64 {
        if (-3.0..3.0).contains(&x) {
            sinc(x) * sinc(x / 3.0)
        } else {
            0.0
        }
    }
    match kind {
        Interpolation::Bicubic => (bicubic, 2.0),
        Interpolation::Bilinear => (triangle, 1.0),
        Interpolation::Box => (boxf, 0.5),
        Interpolation::Hamming => (hamming, 1.0),
        Interpolation::Lanczos => (lanczos, 3.0),
        Interpolation::Nearest => unreachable!("nearest is not a convolution"),
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

/// Fixed-point weights for one axis: for each output index, (first input index, weights).
fn coefficients(in_size: usize, out_size: usize, kind: Interpolation) -> Vec<(usize, Vec<i32>)> {
    let (f, support) = filter(kind);
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = support * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as isize).max(0) as usize;
            let xmax = ((center + support + 0.5) as isize).min(in_size as isize) as usize;
            let k: Vec<f64> = (xmin..xmax)
                .map(|x| f((x as f64 - center + 0.5) * ss))
                .collect();
            let total: f64 = k.iter().sum();
            let fixed = k
                .iter()
                .map(|&w| {
                    let w =
                        if total != 0.0 { w / total } else { w } * (1u32 << PRECISION_BITS) as f64;
                    (if w < 0.0 { w - 0.5 } else { w + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

fn clip8(v: i64) -> u8 {
    (v >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resize like Pillow's `Image.resize`: horizontal pass, then vertical, 8-bit in between.
pub fn resample(img: &Rgb8, out_w: usize, out_h: usize, kind: Interpolation) -> Rgb8 {
    if kind == Interpolation::Nearest {
        let mut data = vec![0u8; out_w * out_h * 3];
        for y in 0..out_h {
            let sy = (((y as f64 + 0.5) * img.height as f64 / out_h as f64) as usize)
                .min(img.height - 1);
            for x in 0..out_w {
                let sx = (((x as f64 + 0.5) * img.width as f64 / out_w as f64) as usize)
                    .min(img.width - 1);
                data[(y * out_w + x) * 3..][..3]
                    .copy_from_slice(&img.data[(sy * img.width + sx) * 3..][..3]);
            }
        }
        return Rgb8 {
            width: out_w,
            height: out_h,
            data,
        };
    }
    let half = 1i64 << (PRECISION_BITS - 1);
    let mut cur = img.clone();
    if out_w != img.width {
        let coeffs = coefficients(img.width, out_w, kind);
        let mut data = vec![0u8; out_w * cur.height * 3];
        for y in 0..cur.height {
            let row = &cur.data[y * cur.width * 3..][..cur.width * 3];
            for (x, (x0, k)) in coeffs.iter().enumerate() {
                for c in 0..3 {
                    let s: i64 = k
                        .iter()
                        .enumerate()
                        .map(|(i, &w)| row[(x0 + i) * 3 + c] as i64 * w as i64)
                        .sum();
                    data[(y * out_w + x) * 3 + c] = clip8(s + half);
                }
            }
        }
        cur = Rgb8 {
            width: out_w,
            height: cur.height,
            data,
        };
    }
    if out_h != img.height {
        let coeffs = coefficients(img.height, out_h, kind);
        let w = cur.width;
        let mut data = vec![0u8; w * out_h * 3];
        for (y, (y0, k)) in coeffs.iter().enumerate() {
            for x in 0..w * 3 {
                let s: i64 = k
                    .iter()
                    .enumerate()
                    .map(|(i, &wt)| cur.data[(y0 + i) * w * 3 + x] as i64 * wt as i64)
                    .sum();
                data[y * w * 3 + x] = clip8(s + half);
            }
        }
        cur = Rgb8 {
            width: w,
            height: out_h,
            data,
        };
    }
    cur
}

/// Decode an image file to 8-bit RGB, applying its EXIF orientation. Grayscale,
/// palette and 16-bit images are converted; alpha is dropped (as the reference
/// loader's `convert("RGB")` does). Images over [`max_pixels`] are refused from
/// their header, before anything is decoded; so is anything but a regular file.
#[cfg(feature = "image")]
pub fn load_rgb(path: impl AsRef<std::path::Path>) -> Result<Rgb8> {
    use image::{DynamicImage, ImageDecoder, ImageReader, Limits};
    let path = path.as_ref();
    let err = |e: String| Error::Input(format!("cannot read image {}: {e}", path.display()));
    let file = crate::weights::open_regular(path)?;
    let limit = max_pixels()?;
    let mut reader = ImageReader::new(std::io::BufReader::new(file))
        .with_guessed_format()
        .map_err(|e| err(e.to_string()))?;
    let mut limits = Limits::default();
    // Decoders allocate up to 8 bytes a pixel (16-bit RGBA), plus their own buffers.
    limits.max_alloc = Some(limit.saturating_mul(8).saturating_add(64 << 20));
    reader.limits(limits);
    let mut decoder = reader.into_decoder().map_err(|e| err(e.to_string()))?;
    let (w, h) = decoder.dimensions();
    if w as u64 * h as u64 > limit {
        return Err(err(format!(
            "{w}x{h} pixels is over the limit of {limit} ({MAX_PIXELS_ENV})"
        )));
    }
    if w == 0 || h == 0 {
        return Err(err(format!("the image has no pixels ({w}x{h})")));
    }
    let orientation = decoder.orientation().map_err(|e| err(e.to_string()))?;
    let mut img = DynamicImage::from_decoder(decoder).map_err(|e| err(e.to_string()))?;
    img.apply_orientation(orientation);
    let rgb = match img {
        // Keep the top 8 bits, as the Python path does.
        DynamicImage::ImageLuma16(g) => {
            let (w, h) = g.dimensions();
            let data = g.pixels().flat_map(|p| [(p.0[0] >> 8) as u8; 3]).collect();
            return Ok(Rgb8 {
                width: w as usize,
                height: h as usize,
                data,
            });
        }
        other => other.to_rgb8(),
    };
    let (w, h) = rgb.dimensions();
    Ok(Rgb8 {
        width: w as usize,
        height: h as usize,
        data: rgb.into_raw(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extreme_aspect_ratios_and_empty_images_are_refused() {
        let wide = Rgb8 {
            width: 20000,
            height: 1,
            data: vec![7; 20000 * 3],
        };
        let err = Preprocess::default()
            .resized(&wide)
            .unwrap_err()
            .to_string();
        assert!(err.contains("aspect ratio"), "{err}");
        let squash = Preprocess {
            resize: Resize::Squash,
            ..Preprocess::default()
        };
        assert_eq!(squash.resized(&wide).unwrap().width, 224);
        let empty = Rgb8 {
            width: 0,
            height: 5,
            data: vec![],
        };
        assert!(Preprocess::default().resized(&empty).is_err());
    }

    /// A 68-byte PNG whose header declares 100000 x 100000 pixels (30 GB decoded).
    #[cfg(feature = "image")]
    const HUGE_PNG: [u8; 68] = [
        137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 1, 134, 160, 0, 1, 134,
        160, 8, 2, 0, 0, 0, 39, 48, 156, 159, 0, 0, 0, 11, 73, 68, 65, 84, 120, 156, 99, 96, 128,
        1, 0, 0, 10, 0, 1, 127, 128, 116, 94, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66, 96, 130,
    ];

    #[cfg(feature = "image")]
    #[test]
    fn images_over_the_pixel_limit_are_refused_from_their_header() {
        let path = std::env::temp_dir().join(format!("vmamba-rt-huge-{}.png", std::process::id()));
        std::fs::write(&path, HUGE_PNG).unwrap();
        let err = load_rgb(&path).unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(
            err.contains("100000x100000") && err.contains("limit"),
            "{err}"
        );
        // Folders (like FIFOs and devices) are refused before they are opened.
        let err = load_rgb(std::env::temp_dir()).unwrap_err().to_string();
        assert!(err.contains("not a regular file"), "{err}");
    }

    #[test]
    fn out_of_range_settings_name_the_field() {
        for (json, field) in [
            (r#"{"input_size": 100000}"#, "input_size"),
            (r#"{"resize_ratio": 1e300}"#, "resize_ratio"),
            (r#"{"std": [1, 0, 1]}"#, "std"),
            (r#"{"mean": [1, 2, 1e39]}"#, "mean"),
        ] {
            let meta = HashMap::from([(META_PREPROCESS.to_string(), json.to_string())]);
            let err = Preprocess::from_metadata(&meta).unwrap_err().to_string();
            assert!(err.contains(field), "{json}: {err}");
        }
    }

    #[test]
    fn weights_sum_to_one_in_fixed_point() {
        for (i, o) in [(8, 64), (300, 256), (1000, 224), (5, 5)] {
            for (_, k) in coefficients(i, o, Interpolation::Bicubic) {
                let s: i64 = k.iter().map(|&w| w as i64).sum();
                assert!(
                    (s - (1i64 << PRECISION_BITS)).abs() <= k.len() as i64,
                    "{i}->{o}"
                );
            }
        }
    }

    #[test]
    fn constant_image_stays_constant() {
        let img = Rgb8 {
            width: 37,
            height: 11,
            data: [200u8, 30, 90].repeat(37 * 11),
        };
        let out = Preprocess::default().resized(&img).unwrap();
        assert_eq!((out.width, out.height), (224, 224));
        assert!(out.data.chunks(3).all(|p| p == [200, 30, 90]));
    }

    #[test]
    fn crop_without_resampling_is_exact() {
        let data: Vec<u8> = (0..256 * 300 * 3).map(|i| (i * 7 % 251) as u8).collect();
        let img = Rgb8 {
            width: 300,
            height: 256,
            data,
        };
        let out = Preprocess::default().resized(&img).unwrap();
        for y in [0, 100, 223] {
            for x in [0, 50, 223] {
                let want = &img.data[((y + 16) * 300 + x + 38) * 3..][..3];
                assert_eq!(&out.data[(y * 224 + x) * 3..][..3], want);
            }
        }
    }
}
