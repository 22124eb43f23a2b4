//! The VMamba network (docs/model.md §1), top to bottom:
//! stem -> stages of VSS blocks with downsampling -> classifier head, or, for
//! detection / segmentation backbones, the normed outputs of selected stages.

mod block;
mod downsample;
mod layers;
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
use crate::preprocess::Preprocess;
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

impl std::fmt::Debug for VMamba {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut keys: Vec<&String> = self.metadata.keys().collect();
        keys.sort();
        f.debug_struct("VMamba")
            .field("config", &self.config)
            .field("metadata", &keys)
            .field("threads", &self.num_threads())
            .finish()
    }
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
        let bytes = config.param_count() * 4.0 * 2.0;
        crate::memory::ensure(bytes.min(u64::MAX as f64) as u64, || {
            format!("a random model of {:.0} weights", config.param_count())
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

    /// Class names from the weights' metadata (`vmamba_rt.labels`), else "0", "1", ...
    pub fn labels(&self) -> Vec<String> {
        let n = self.config.num_classes;
        self.metadata
            .get(META_LABELS)
            .and_then(|t| serde_json::from_str::<Vec<String>>(t).ok())
            .filter(|l| l.len() == n)
            .unwrap_or_else(|| (0..n).map(|i| i.to_string()).collect())
    }

    /// The model's preprocessing settings (from metadata; ImageNet defaults when absent).
    pub fn preprocess(&self) -> Result<Preprocess> {
        Preprocess::from_metadata(&self.metadata)
    }

    /// The `k` most probable classes of one row of logits, as (label, probability), best first.
    pub fn top_k(&self, logits: &[f32], k: usize) -> Vec<(String, f32)> {
        let labels = self.labels();
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        let exps: Vec<f64> = logits.iter().map(|&v| ((v - max) as f64).exp()).collect();
        let total: f64 = exps.iter().sum();
        let mut idx: Vec<usize> = (0..logits.len()).collect();
        idx.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]));
        idx.into_iter()
            .take(k)
            .map(|i| {
                (
                    labels.get(i).cloned().unwrap_or_else(|| i.to_string()),
                    (exps[i] / total) as f32,
                )
            })
            .collect()
    }

    /// Decode, preprocess and classify one image file: the `k` best (label, probability).
    ///
    /// ```
    /// let model = vmamba_rt::VMamba::load(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors"))?;
    /// let image = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/digit_3.png");
    /// let top = model.classify_file(image, 3)?; // e.g. [("3", 0.92), ("1", 0.01), ("8", 0.01)]
    /// assert_eq!(top.len(), 3);
    /// assert!(top[0].1 >= top[1].1 && top[1].1 >= top[2].1);
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    #[cfg(feature = "image")]
    pub fn classify_file(&self, path: impl AsRef<Path>, k: usize) -> Result<Vec<(String, f32)>> {
        let pre = self.preprocess()?;
        let x = pre.apply(&crate::preprocess::load_rgb(path)?)?;
        let s = pre.input_size;
        let logits = self.forward(&x, [1, 3, s, s])?;
        Ok(self.top_k(&logits, k))
    }

    /// Run on `n` worker threads (0: rayon's global pool, all cores; at most 1024).
    pub fn set_num_threads(&mut self, n: usize) -> Result<()> {
        if n > Self::MAX_THREADS {
            return Err(Error::Usage(format!(
                "num_threads must be 0 (all cores) to {}, got {n}",
                Self::MAX_THREADS
            )));
        }
        self.pool = if n == 0 {
            None
        } else {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .thread_name(|i| format!("vmamba-rt-{i}"))
                .build()
                .map_err(|e| Error::Usage(format!("cannot start {n} threads: {e}")))?;
            Some(Arc::new(pool))
        };
        Ok(())
    }

    /// Most worker threads a model may be given.
    pub const MAX_THREADS: usize = 1024;

    fn num_threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Bytes one image of `h` x `w` holds at the peak of a forward pass (the
    /// buffers of the widest step, all counted as live at once: an upper estimate),
    /// and the bytes of its stage outputs (what `features` returns, stacked).
    fn image_bytes(&self, h: usize, w: usize) -> (f64, f64) {
        let cfg = &self.config;
        let (hw, c0) = (h as f64 * w as f64, cfg.dims as f64);
        // The input in channel-last order, the stem's im2col buffers and outputs.
        let mut peak = hw * (13.0 + c0);
        let mut outputs = 0.0;
        let mut size = self.stem.out_hw(h, w);
        for (i, st) in self.stages.iter().enumerate() {
            let Some((sh, sw)) = size else { break };
            let rows = sh as f64 * sw as f64;
            let c = cfg.stage_dim(i);
            let (di, n, r) = (cfg.d_inner(c), cfg.ssm_d_state, cfg.dt_rank(c));
            // SS2D: projections, conv output, x_dbl, deltas, the scan's own
            // channel-first copies and its output.
            let ssm = if cfg.ssm_ratio > 0.0 {
                15 * di + 4 * r + 16 * n
            } else {
                0
            };
            let mlp = c + cfg.mlp_hidden(c);
            peak = peak.max(rows * (2 * c + ssm.max(mlp)) as f64);
            outputs += 2.0 * rows * c as f64;
            if let Some(ds) = &st.downsample {
                size = ds.out_hw(sh, sw);
                if let Some((oh, ow)) = size {
                    peak = peak.max(rows * c as f64 + oh as f64 * ow as f64 * (13 * c) as f64);
                }
            }
        }
        (peak * 4.0 * 1.25, outputs * 4.0)
    }

    /// Refuse an input whose forward pass would need more memory than there is.
    fn check_memory(&self, shape: [usize; 4]) -> Result<()> {
        let [b, _, h, w] = shape;
        let workers = self.num_threads().min(b);
        let at_once = if workers <= 1 { b } else { workers };
        let (work, out) = self.image_bytes(h, w);
        let need = at_once as f64 * work + b as f64 * out;
        crate::memory::ensure(need.min(u64::MAX as f64) as u64, || {
            format!("a forward pass on input {shape:?}")
        })
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

    fn check_input(&self, x: &[f32], shape: [usize; 4]) -> Result<()> {
        let [b, c, h, w] = shape;
        if b == 0 {
            return Err(Error::Input("empty batch (B = 0)".into()));
        }
        if c != self.config.in_chans {
            return Err(Error::Input(format!(
                "expected {} input channels, got {c} (input shape {shape:?})",
                self.config.in_chans
            )));
        }
        let want = b
            .checked_mul(c)
            .and_then(|v| v.checked_mul(h))
            .and_then(|v| v.checked_mul(w));
        if want != Some(x.len()) {
            return Err(Error::Input(format!(
                "input holds {} values but shape {shape:?} needs {want:?}",
                x.len()
            )));
        }
        if !self.fits(h, w) {
            let m = self.min_size();
            return Err(Error::Input(format!(
                "input of {h}x{w} pixels is too small for this model (needs at least {m}x{m})"
            )));
        }
        self.check_memory(shape)
    }

    fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
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

    /// Run `f` on each image of the batch. One image uses every thread; a batch
    /// gives each worker thread whole images, each run single-threaded: no
    /// synchronisation inside the network and a working set that stays in cache.
    fn per_image<T: Send>(
        &self,
        x: &[f32],
        shape: [usize; 4],
        f: impl Fn(&[f32], [usize; 4]) -> T + Sync,
    ) -> Vec<T> {
        let [b, c, h, w] = shape;
        let workers = rayon::current_num_threads().min(b);
        if workers <= 1 {
            return vec![f(x, shape)];
        }
        let img = c * h * w;
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<Option<T>> = (0..b).map(|_| None).collect();
        let slots = std::sync::Mutex::new(&mut results);
        // Plain OS threads that block while their one-thread pool works: a rayon
        // worker would spin-steal meanwhile and compete for the cores.
        std::thread::scope(|s| {
            for _ in 0..workers {
                s.spawn(|| {
                    let solo = rayon::ThreadPoolBuilder::new()
                        .num_threads(1)
                        .build()
                        .expect("one thread");
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= b {
                            break;
                        }
                        let out = solo.install(|| f(&x[i * img..(i + 1) * img], [1, c, h, w]));
                        slots.lock().expect("results lock")[i] = Some(out);
                    }
                });
            }
        });
        results
            .into_iter()
            .map(|r| r.expect("every image ran"))
            .collect()
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
