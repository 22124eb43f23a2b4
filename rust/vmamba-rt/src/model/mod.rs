//! The VMamba network (docs/model.md §1), top to bottom:
//! stem -> stages of VSS blocks with downsampling -> classifier head, or, for
//! detection / segmentation backbones, the normed outputs of selected stages.

mod block;
mod downsample;
mod layers;
mod runtime;
mod ss2d;
mod stem;

use std::path::Path;
use std::sync::Arc;

use rayon::prelude::*;

use block::VssBlock;
use downsample::Downsample;
use layers::{Linear, Map, Norm};
use stem::Stem;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::weights::{Weights, META_CONFIG};

pub use crate::format::META_LABELS;

/// Environment variable that sets the number of worker threads (default: all cores).
pub const THREADS_ENV: &str = "VMAMBA_RT_NUM_THREADS";

/// One feature map, channel-first: data (B, C, H, W).
#[derive(Clone, Debug, PartialEq)]
pub struct FeatureMap {
    /// Elements, channel-first.
    pub data: Vec<f32>,
    /// [B, C, H, W]
    pub shape: [usize; 4],
}

struct Stage {
    blocks: Vec<VssBlock>,
    downsample: Option<Downsample>,
    /// `outnorm{i}` of backbone checkpoints.
    outnorm: Option<Norm>,
}

/// Classifier: LayerNorm -> global average pool -> Linear.
struct Head {
    norm: Norm,
    fc: Linear,
}

/// A loaded VMamba model, ready to run. `Send + Sync`: one model may serve many threads.
///
/// `Debug` shows the architecture and the metadata keys, not the weights.
pub struct VMamba {
    config: Config,
    metadata: std::collections::HashMap<String, String>,
    stem: Stem,
    stages: Vec<Stage>,
    head: Option<Head>,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl VMamba {
    /// Load a converted `.safetensors` file; the architecture comes from its metadata.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
    /// let model = vmamba_rt::VMamba::load(path)?;
    /// assert_eq!(model.config().depths, vec![1, 1, 2, 1]);
    /// assert!(vmamba_rt::VMamba::load("no/such/file.safetensors").is_err());
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_file(path, Weights::open(path)?)
    }

    /// Like [`VMamba::load`], but the weights stay memory-mapped: no copy, and the
    /// file must not change while the model lives (see [`Weights::open_mmap`]).
    pub fn load_mmap(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        Self::from_file(path, Weights::open_mmap(path)?)
    }

    fn from_file(path: &Path, ws: Weights) -> Result<Self> {
        let build = || {
            crate::format::check_version(ws.metadata())?;
            let text = ws.metadata().get(META_CONFIG).ok_or_else(|| {
                Error::Config(format!(
                    "no '{META_CONFIG}' entry in the header metadata; convert the checkpoint with `vmamba-rt convert`"
                ))
            })?;
            Self::from_weights(Config::from_json(text)?, &ws)
        };
        build().map_err(|e| e.in_file(path))
    }

    /// Build the model from a config and weights, checking every tensor by name and
    /// shape and refusing tensors the architecture does not use.
    pub fn from_weights(config: Config, ws: &Weights) -> Result<Self> {
        config.validate()?;
        let stem = Stem::load(&config, ws)?;
        let n = config.depths.len();
        let mut stages = Vec::with_capacity(n);
        for (i, &depth) in config.depths.iter().enumerate() {
            let c = config.stage_dim(i);
            let blocks = (0..depth)
                .map(|j| VssBlock::load(&config, ws, &format!("layers.{i}.blocks.{j}"), c))
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < n {
                Some(Downsample::load(
                    config.downsample_version,
                    ws,
                    &format!("layers.{i}.downsample"),
                    c,
                )?)
            } else {
                None
            };
            let outnorm = match &config.out_indices {
                Some(idx) if idx.contains(&i) => Some(Norm::load(ws, &format!("outnorm{i}"), c)?),
                _ => None,
            };
            stages.push(Stage {
                blocks,
                downsample,
                outnorm,
            });
        }
        let head = if config.is_backbone() {
            None
        } else {
            let c = config.stage_dim(n - 1);
            Some(Head {
                norm: Norm::load(ws, "classifier.norm", c)?,
                fc: Linear::load(ws, "classifier.head", config.num_classes, c, true)?,
            })
        };
        ws.check_all_used()?;
        let mut model = VMamba {
            config,
            metadata: ws.metadata().clone(),
            stem,
            stages,
            head,
            pool: None,
        };
        if let Ok(v) = std::env::var(THREADS_ENV) {
            let n = v.trim().parse::<usize>().map_err(|_| {
                Error::Usage(format!(
                    "{THREADS_ENV}={v:?} is not a whole number of threads"
                ))
            })?;
            model.set_num_threads(n)?;
        }
        Ok(model)
    }

    /// A model of the given architecture with random weights (see
    /// [`Weights::synthetic`]): for benchmarks in the released shapes.
    ///
    /// ```
    /// let mut cfg = vmamba_rt::Config::preset("vmamba-tiny-s1l8").unwrap();
    /// cfg.dims = 8; // keep the example small
    /// let model = vmamba_rt::VMamba::random(cfg, 0)?;
    /// assert_eq!(model.forward(&vec![0.0; 3 * 32 * 32], [1, 3, 32, 32])?.len(), 1000);
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn random(config: Config, seed: u64) -> Result<Self> {
        config.validate()?;
        // Every weight is made up, and some are re-laid out: twice the model's size.
        let weights = config.param_count();
        crate::memory::ensure((weights * 4.0 * 2.0) as u64, || {
            format!("a random model of {weights:.0} weights")
        })?;
        Self::from_weights(config, &Weights::synthetic(seed))
    }

    /// Every tensor the architecture reads, by checkpoint name, with its shape.
    pub fn parameter_shapes(config: &Config) -> Result<Vec<(String, Vec<usize>)>> {
        let ws = Weights::synthetic(0);
        Self::from_weights(config.clone(), &ws)?;
        Ok(ws.requested())
    }

    /// The architecture.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Header metadata of the weights file (config, labels, preprocessing, ...).
    pub fn metadata(&self) -> &std::collections::HashMap<String, String> {
        &self.metadata
    }

    /// Whether an input of `h` x `w` leaves every stage at least one pixel: each
    /// strided convolution's window must fit (patch merging always fits).
    fn fits(&self, h: usize, w: usize) -> bool {
        let mut size = self.stem.out_hw(h, w);
        for ds in self.stages.iter().filter_map(|st| st.downsample.as_ref()) {
            size = size.and_then(|(h, w)| ds.out_hw(h, w));
        }
        size.is_some()
    }

    /// Smallest square input side the model accepts: one pixel after the last
    /// stage, traced back through every downsample and the stem.
    pub fn min_size(&self) -> usize {
        let need = self
            .stages
            .iter()
            .rev()
            .filter_map(|st| st.downsample.as_ref())
            .fold(1, |need, ds| ds.min_in(need));
        self.stem.min_in(need)
    }

    /// Stem and stages; calls `tap(i, map)` with each stage's output before its downsample.
    fn trunk(&self, x: &[f32], shape: [usize; 4], mut tap: impl FnMut(usize, &Map)) -> Map {
        let [b, c, h, w] = shape;
        let mut map = Map {
            data: transpose_images(x, b, c, h * w),
            b,
            h,
            w,
            c,
        };
        map = self.stem.forward(&map);
        for (i, st) in self.stages.iter().enumerate() {
            for blk in &st.blocks {
                blk.forward(&mut map);
            }
            tap(i, &map);
            if let Some(ds) = &st.downsample {
                map = ds.forward(&map);
            }
        }
        map
    }

    /// Class logits for an NCHW batch: x (B, 3, H, W) -> (B, num_classes), row-major.
    pub fn forward(&self, x: &[f32], shape: [usize; 4]) -> Result<Vec<f32>> {
        let head = self.classifier()?;
        self.check_input(x, shape)?;
        Ok(self.run(|| {
            self.per_image(x, shape, |x, shape| {
                let pooled = self.pooled(head, x, shape);
                head.fc.forward(&pooled, shape[0])
            })
            .concat()
        }))
    }

    /// Pooled embeddings (the classifier's input, "pre-logits"): x (B, 3, H, W) ->
    /// (B, C) with C the last stage's width, row-major. For retrieval and similarity.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
    /// let model = vmamba_rt::VMamba::load(path)?;
    /// assert_eq!(model.embed(&vec![0.0; 3 * 64 * 64], [1, 3, 64, 64])?.len(), 128);
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn embed(&self, x: &[f32], shape: [usize; 4]) -> Result<Vec<f32>> {
        let head = self.classifier()?;
        self.check_input(x, shape)?;
        Ok(self.run(|| {
            self.per_image(x, shape, |x, shape| self.pooled(head, x, shape))
                .concat()
        }))
    }

    fn classifier(&self) -> Result<&Head> {
        self.head.as_ref().ok_or_else(|| {
            Error::Usage("this is a backbone model (out_indices set, no classifier head): use features() instead".into())
        })
    }

    /// The trunk, then the head's LayerNorm and the average over H, W: (B, C).
    fn pooled(&self, head: &Head, x: &[f32], shape: [usize; 4]) -> Vec<f32> {
        let map = self.trunk(x, shape, |_, _| {});
        let normed = head.norm.apply(&map.data);
        let hw = map.h * map.w;
        let mut pooled = vec![0.0f32; map.b * map.c];
        for (img, out) in normed.chunks(hw * map.c).zip(pooled.chunks_mut(map.c)) {
            for px in img.chunks(map.c) {
                out.iter_mut().zip(px).for_each(|(a, v)| *a += v);
            }
            out.iter_mut().for_each(|v| *v /= hw as f32);
        }
        pooled
    }

    /// Feature maps (NCHW). Backbones: one per `out_indices` stage, after its
    /// `outnorm`. Classifiers: every stage's output before its downsample.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
    /// let model = vmamba_rt::VMamba::load(path)?;
    /// let maps = model.features(&vec![0.0; 3 * 64 * 64], [1, 3, 64, 64])?;
    /// let shapes: Vec<[usize; 4]> = maps.iter().map(|m| m.shape).collect();
    /// assert_eq!(shapes, [[1, 16, 16, 16], [1, 32, 8, 8], [1, 64, 4, 4], [1, 128, 2, 2]]);
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn features(&self, x: &[f32], shape: [usize; 4]) -> Result<Vec<FeatureMap>> {
        self.check_input(x, shape)?;
        let per_image =
            self.run(|| self.per_image(x, shape, |x, shape| self.stage_features(x, shape)));
        // Stack the images' maps back into batches.
        let mut maps = per_image.into_iter();
        let mut out = maps.next().expect("batch is not empty");
        for img in maps {
            for (acc, m) in out.iter_mut().zip(img) {
                acc.data.extend_from_slice(&m.data);
                acc.shape[0] += m.shape[0];
            }
        }
        Ok(out)
    }

    fn stage_features(&self, x: &[f32], shape: [usize; 4]) -> Vec<FeatureMap> {
        let mut out = Vec::new();
        self.trunk(x, shape, |i, map| {
            let data = match (&self.config.out_indices, &self.stages[i].outnorm) {
                (Some(_), Some(norm)) => norm.apply(&map.data),
                (Some(_), None) => return,
                (None, _) => map.data.clone(),
            };
            out.push(FeatureMap {
                data: transpose_images(&data, map.b, map.h * map.w, map.c),
                shape: [map.b, map.c, map.h, map.w],
            });
        });
        out
    }
}

/// Transpose each of `b` images from (rows, cols) to (cols, rows):
/// NCHW -> NHWC with (rows, cols) = (C, H*W), and back with (H*W, C).
fn transpose_images(x: &[f32], b: usize, rows: usize, cols: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(rows * cols)
        .zip(x.par_chunks(rows * cols))
        .take(b)
        .for_each(|(o, i)| {
            for r in 0..rows {
                for c in 0..cols {
                    o[c * rows + r] = i[r * cols + c];
                }
            }
        });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DownsampleVersion;

    #[test]
    fn min_size_is_exact_for_every_stem_and_downsample() {
        let mut configs: Vec<Config> = Config::PRESETS
            .iter()
            .map(|n| Config::preset(n).unwrap())
            .collect();
        // Eight stages of v2 downsampling: the smallest input is far above 64.
        let mut deep = Config::preset("vmamba-tiny-s1l8").unwrap();
        (deep.dims, deep.depths, deep.downsample_version) = (2, vec![0; 8], DownsampleVersion::V2);
        configs.push(deep);
        for mut cfg in configs {
            cfg.dims = cfg.dims.min(8);
            cfg.depths.iter_mut().for_each(|d| *d = 0);
            let model = VMamba::random(cfg.clone(), 0).unwrap();
            let m = model.min_size();
            assert!(model.fits(m, m), "{cfg:?}: {m} does not fit");
            assert!(
                m == 1 || !model.fits(m - 1, m - 1),
                "{cfg:?}: {} fits",
                m - 1
            );
        }
    }
}
