//! The VMamba network (docs/model.md §1), top to bottom:
//! stem -> stages of VSS blocks with downsampling -> classifier head, or, for
//! detection / segmentation backbones, the normed outputs of selected stages.

mod block;
mod downsample;
mod infer;
mod layers;
mod runtime;
mod ss2d;
mod stem;

use std::path::Path;

use block::VssBlock;
use downsample::Downsample;
use layers::{Linear, Map, Norm};
use stem::Stem;

use crate::config::Config;
use crate::error::{Error, Result};
use crate::exec::CpuEngine;
use crate::kernels::gemm::WeightType;
use crate::plan::{Builder, DType, Op, Outputs, ParamId, Params, Plan};
use crate::weights::Param;
use crate::weights::{Weights, META_CONFIG};

pub use crate::format::META_LABELS;
pub use infer::infer_config;

/// Return the memory loading freed to the system. Each tensor is read into a
/// buffer of its own, packed, and (as bf16) copied and freed; glibc's allocator
/// keeps such freed blocks in its heap once its threshold for mapping blocks of
/// their own has risen (it rises as large blocks are freed): about a tenth of
/// the model (bf16, vmamba-tiny-s1l8) stayed with the process.
fn give_back_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// How [`VMamba::load_with`] reads a file.
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Map the file instead of reading it tensor by tensor (see [`Weights::open_mmap`]).
    pub mmap: bool,
    /// How the linear layers' weights are stored (see [`VMamba::set_weight_type`]).
    pub weight_type: WeightType,
    /// Keep the linear weights dense, for another engine (the CUDA engine
    /// reads and uploads them): the model then plans but does not run on the CPU.
    pub dense: bool,
}

impl LoadOptions {
    /// Empty parameters that keep linear weights as these options say.
    fn params(&self) -> Params {
        if self.dense {
            Params::new()
        } else {
            Params::with_linear(CpuEngine::prepare(self.weight_type))
        }
    }
}

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
    params: Params,
    /// Runs the plans on the CPU (its threads and arenas).
    cpu: CpuEngine,
    stem: Stem,
    /// The position embedding (H, W, C0) added after the stem, with its H and W.
    pos_embed: Option<(ParamId, usize, usize)>,
    stages: Vec<Stage>,
    head: Option<Head>,
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
        Self::load_with(path, LoadOptions::default())
    }

    /// Like [`VMamba::load`], but the file is memory-mapped while the model copies
    /// its weights out (instead of reading it tensor by tensor); it must not be
    /// truncated meanwhile (see [`Weights::open_mmap`]). The model keeps no map.
    pub fn load_mmap(path: impl AsRef<Path>) -> Result<Self> {
        let options = LoadOptions {
            mmap: true,
            ..LoadOptions::default()
        };
        Self::load_with(path, options)
    }

    /// [`VMamba::load`] with options: the file mapped, the linear weights stored
    /// as bf16 as they are read.
    ///
    /// ```
    /// use vmamba_rt::{kernels::gemm::WeightType, model::LoadOptions, VMamba};
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
    /// let options = LoadOptions { weight_type: WeightType::Bf16, ..LoadOptions::default() };
    /// let bf16 = VMamba::load_with(path, options)?;
    /// let mut converted = VMamba::load(path)?;
    /// converted.set_weight_type(WeightType::Bf16);
    /// let x = vec![0.5; 3 * 64 * 64];
    /// assert_eq!(bf16.forward(&x, [1, 3, 64, 64])?, converted.forward(&x, [1, 3, 64, 64])?);
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn load_with(path: impl AsRef<Path>, options: LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let ws = if options.mmap {
            Weights::open_mmap(path)?
        } else {
            Weights::open(path)?
        };
        let build = || {
            crate::format::check_entry_sizes(ws.metadata())?;
            crate::format::check_version(ws.metadata())?;
            let text = ws.metadata().get(META_CONFIG).ok_or_else(|| {
                Error::Config(format!(
                    "no '{META_CONFIG}' entry in the header metadata; convert the checkpoint with `vmamba-rt convert`"
                ))
            })?;
            let config = Config::from_json(text)?;
            crate::format::check_labels_size(ws.metadata(), config.num_classes)?;
            Self::build(config, &ws, options.params())
        };
        let model = build().map_err(|e| e.in_file(path));
        drop(ws);
        give_back_freed_memory();
        model
    }

    /// Build the model from a config and weights, checking every tensor by name and
    /// shape and refusing tensors the architecture does not use.
    pub fn from_weights(config: Config, ws: &Weights) -> Result<Self> {
        Self::from_weights_as(config, ws, WeightType::F32)
    }

    /// [`VMamba::from_weights`], the linear weights stored as `weight_type`
    /// as they are read (see [`VMamba::set_weight_type`]).
    pub fn from_weights_as(config: Config, ws: &Weights, weight_type: WeightType) -> Result<Self> {
        Self::build(
            config,
            ws,
            Params::with_linear(CpuEngine::prepare(weight_type)),
        )
    }

    /// The network read from `ws` into `params` (empty: its linear weights kept
    /// as it says), with the CPU engine beside it.
    fn build(config: Config, ws: &Weights, mut params: Params) -> Result<Self> {
        config.validate()?;
        let ps = &mut params;
        let stem = Stem::load(&config, ws, ps)?;
        let pos_embed = if config.posembed {
            let (c0, side) = (config.dims, config.imgsize / config.patch_size);
            let pos = ws.get("pos_embed", &[1, c0, side, side])?;
            // (1, C0, H, W) -> channel-last (H, W, C0)
            let mut hwc = vec![0.0f32; pos.data().len()];
            for (ch, plane) in pos.data().chunks(side * side).enumerate() {
                for (p, v) in plane.iter().enumerate() {
                    hwc[p * c0 + ch] = *v;
                }
            }
            let pos = Param::owned(hwc, vec![side, side, c0]);
            Some((ps.add("pos_embed", pos, DType::F32), side, side))
        } else {
            None
        };
        let n = config.depths.len();
        let mut stages = Vec::with_capacity(n);
        for (i, &depth) in config.depths.iter().enumerate() {
            let c = config.stage_dim(i);
            let blocks = (0..depth)
                .map(|j| VssBlock::load(&config, ws, ps, &format!("layers.{i}.blocks.{j}"), c))
                .collect::<Result<Vec<_>>>()?;
            let downsample = if i + 1 < n {
                Some(Downsample::load(
                    config.downsample_version,
                    ws,
                    ps,
                    &format!("layers.{i}.downsample"),
                    c,
                )?)
            } else {
                None
            };
            let outnorm = match &config.out_indices {
                Some(idx) if idx.contains(&i) => {
                    Some(Norm::load(ws, ps, &format!("outnorm{i}"), c)?)
                }
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
                norm: Norm::load(ws, ps, "classifier.norm", c)?,
                fc: Linear::load(ws, ps, "classifier.head", config.num_classes, c, true)?,
            })
        };
        ws.check_all_used()?;
        let mut model = VMamba {
            config,
            metadata: ws.metadata().clone(),
            params,
            cpu: CpuEngine::default(),
            stem,
            pos_embed,
            stages,
            head,
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
        Self::random_with(config, seed, LoadOptions::default())
    }

    /// [`VMamba::random`] with the weights kept as `options` say (its `mmap` aside).
    pub fn random_with(config: Config, seed: u64, options: LoadOptions) -> Result<Self> {
        config.validate()?;
        // Every weight is made up, and some are re-laid out: twice the model's size.
        let weights = config.param_count();
        crate::memory::ensure((weights * 4.0 * 2.0) as u64, || {
            format!("a random model of {weights:.0} weights")
        })?;
        Self::build(config, &Weights::synthetic(seed), options.params())
    }

    /// Every tensor the architecture reads, by checkpoint name, with its shape.
    pub fn parameter_shapes(config: &Config) -> Result<Vec<(String, Vec<usize>)>> {
        let ws = Weights::synthetic(0);
        Self::build(config.clone(), &ws, Params::new())?;
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
    /// stage, traced back through every downsample and the stem. A model with a
    /// position embedding takes only the side it was made for.
    pub fn min_size(&self) -> usize {
        if self.pos_embed.is_some() {
            return self.config.imgsize; // the one size its position embedding fits
        }
        let need = self
            .stages
            .iter()
            .rev()
            .filter_map(|st| st.downsample.as_ref())
            .fold(1, |need, ds| ds.min_in(need));
        self.stem.min_in(need)
    }

    /// The execution plan for an input of `shape` (docs/code.md, "The plan"):
    /// the network as ops over [`VMamba::params`], for any backend to run.
    ///
    /// ```
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
    /// use vmamba_rt::plan::Outputs;
    /// let model = vmamba_rt::VMamba::load(path)?;
    /// let plan = model.plan([1, 3, 64, 64], Outputs::Logits)?;
    /// assert_eq!(plan.buffers[plan.output_ids()[0]].shape, [1, 10]);
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn plan(&self, shape: [usize; 4], outputs: Outputs) -> Result<Plan> {
        self.check_shape(shape)?;
        if outputs != Outputs::Features {
            self.classifier()?;
        }
        Ok(self.emit(shape, outputs))
    }

    /// The parameters the plans name, in the layout their ops read.
    pub fn params(&self) -> &Params {
        &self.params
    }

    /// Store the linear layers' weights as f32 (the default) or bf16: half the
    /// memory, rounded to 8 bits of mantissa; products still sum in f32 over f32
    /// activations. Going back to f32 keeps the bf16 values.
    ///
    /// ```
    /// use vmamba_rt::kernels::gemm::WeightType;
    /// # let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/v0_small.safetensors");
    /// let mut model = vmamba_rt::VMamba::load(path)?;
    /// let fp32 = model.forward(&vec![0.5; 3 * 64 * 64], [1, 3, 64, 64])?;
    /// model.set_weight_type(WeightType::Bf16);
    /// let bf16 = model.forward(&vec![0.5; 3 * 64 * 64], [1, 3, 64, 64])?;
    /// assert!(fp32.iter().zip(&bf16).all(|(a, b)| (a - b).abs() < 0.1));
    /// # Ok::<(), vmamba_rt::Error>(())
    /// ```
    pub fn set_weight_type(&mut self, to: WeightType) {
        if CpuEngine::runs(&self.params) {
            CpuEngine::set_weight_type(&mut self.params, to);
        }
    }

    /// Let the weights go (another engine has its own copy, e.g. on a GPU): the
    /// model still plans, but runs no more on the CPU (a typed error says so).
    pub fn release_weights(&mut self) {
        self.params.release();
        give_back_freed_memory();
    }

    fn holds_weights(&self) -> Result<()> {
        if self.params.released() {
            return Err(Error::Usage(
                "this model's weights were handed to another engine (the GPU): it runs there, not on the CPU"
                    .into(),
            ));
        }
        if !CpuEngine::runs(&self.params) {
            return Err(Error::Usage(
                "this model was loaded for another engine (its linear weights kept dense): it plans, but does not \
                 run on the CPU"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The network, top to bottom, as ops into a new plan (shape already checked).
    fn emit(&self, [b, c, h, w]: [usize; 4], outputs: Outputs) -> Plan {
        let mut builder = Builder::new([b, c, h, w]);
        let g = &mut builder;
        let x = Map {
            buf: g.work(b * h * w * c, DType::Act),
            b,
            h,
            w,
            c,
        };
        g.push(Op::ToChannelsLast {
            src: 0,
            dst: x.buf,
            b,
            c,
            h,
            w,
        });
        let mut x = self.stem.emit(g, x);
        if let Some((param, ..)) = self.pos_embed {
            g.push(Op::AddParam {
                buf: x.buf,
                b,
                len: x.h * x.w * x.c,
                param,
            });
        }
        for st in &self.stages {
            for blk in &st.blocks {
                blk.emit(g, x);
            }
            if outputs == Outputs::Features {
                // Backbones: the outnorm'd out_indices stages; classifiers: every stage.
                let map = match (&self.config.out_indices, &st.outnorm) {
                    (Some(_), Some(norm)) => Some(norm.emit_map(g, x)),
                    (Some(_), None) => None,
                    (None, _) => Some(x),
                };
                if let Some(m) = map {
                    let dst = g.output(vec![m.b, m.c, m.h, m.w]);
                    g.push(Op::ToChannelsFirst {
                        src: m.buf,
                        dst,
                        b: m.b,
                        h: m.h,
                        w: m.w,
                        c: m.c,
                    });
                }
            }
            if let Some(ds) = &st.downsample {
                x = ds.emit(g, x);
            }
        }
        if let (Some(head), Outputs::Logits | Outputs::Embeddings) = (&self.head, outputs) {
            // LayerNorm, the mean over H, W, then the classifier.
            let normed = head.norm.emit_map(g, x);
            let pooled = if outputs == Outputs::Embeddings {
                g.output(vec![b, x.c])
            } else {
                g.work(b * x.c, DType::Act)
            };
            g.push(Op::MeanPool {
                src: normed.buf,
                dst: pooled,
                b,
                hw: x.h * x.w,
                c: x.c,
            });
            if outputs == Outputs::Logits {
                let logits = g.output(vec![b, self.config.num_classes]);
                head.fc.emit_into(g, pooled, b, logits, false);
            }
        }
        builder.finish(outputs)
    }

    /// Run the plan for `shape` on the CPU, image by image across worker threads
    /// for a batch (see `per_image`); outputs stacked back into the batch.
    fn execute(&self, x: &[f32], shape: [usize; 4], outputs: Outputs) -> Result<Vec<Vec<f32>>> {
        self.holds_weights()?;
        if outputs != Outputs::Features {
            self.classifier()?;
        }
        self.check_input(x, shape, outputs)?;
        let per_image = self.run(|| {
            self.per_image(x, shape, |x, shape| {
                let plan = self.emit(shape, outputs);
                self.cpu.run(&plan, &self.params, x, None)
            })
        });
        let mut parts = per_image.into_iter();
        let mut out = parts.next().expect("batch is not empty");
        for img in parts {
            out.iter_mut().zip(img).for_each(|(acc, v)| acc.extend(v));
        }
        Ok(out)
    }

    /// Where the time of one forward pass goes: seconds per kind of op, the
    /// whole batch as one plan on the model's threads (for benchmarks; timing
    /// each op costs a little itself).
    pub fn profile(&self, x: &[f32], shape: [usize; 4]) -> Result<crate::exec::OpTimes> {
        let outputs = if self.head.is_some() {
            Outputs::Logits
        } else {
            Outputs::Features
        };
        self.holds_weights()?;
        self.check_input(x, shape, outputs)?;
        let plan = self.emit(shape, outputs);
        let mut times = crate::exec::OpTimes::new();
        self.run(|| self.cpu.run(&plan, &self.params, x, Some(&mut times)));
        Ok(times)
    }

    /// Class logits for an NCHW batch: x (B, 3, H, W) -> (B, num_classes), row-major.
    pub fn forward(&self, x: &[f32], shape: [usize; 4]) -> Result<Vec<f32>> {
        Ok(self.execute(x, shape, Outputs::Logits)?.remove(0))
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
        Ok(self.execute(x, shape, Outputs::Embeddings)?.remove(0))
    }

    fn classifier(&self) -> Result<&Head> {
        self.head.as_ref().ok_or_else(|| {
            Error::Usage("this is a backbone model (out_indices set, no classifier head): use features() instead".into())
        })
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
        let maps = self.execute(x, shape, Outputs::Features)?;
        let plan = self.emit([1, shape[1], shape[2], shape[3]], Outputs::Features);
        Ok(maps
            .into_iter()
            .zip(plan.output_ids())
            .map(|(data, id)| {
                let s = &plan.buffers[id].shape;
                FeatureMap {
                    data,
                    shape: [shape[0], s[1], s[2], s[3]],
                }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DownsampleVersion;

    /// Released weights: the plans and the parameter table stand (another
    /// engine needs those), the CPU paths refuse with a typed error, not a panic.
    /// Weights kept dense for another engine: the same plans and parameter
    /// values as the CPU's layout gives back, and no CPU run.
    #[test]
    fn a_model_loaded_dense_plans_and_reads_as_the_cpu_one_but_does_not_run() {
        let mut cfg = Config::preset("vmamba-tiny-s1l8").unwrap();
        (cfg.dims, cfg.depths) = (8, vec![1, 1]);
        let cpu = VMamba::random(cfg.clone(), 3).unwrap();
        let dense_options = LoadOptions {
            dense: true,
            ..LoadOptions::default()
        };
        let dense = VMamba::random_with(cfg, 3, dense_options).unwrap();
        let shape = [1, 3, 32, 32];
        let plan = |m: &VMamba| serde_json::to_string(&m.plan(shape, Outputs::Logits).unwrap());
        assert_eq!(plan(&dense).unwrap(), plan(&cpu).unwrap());
        assert!(CpuEngine::runs(cpu.params()) && !CpuEngine::runs(dense.params()));
        for id in 0..cpu.params().len() {
            assert_eq!(
                dense.params().dense(id),
                cpu.params().dense(id),
                "parameter {id}"
            );
        }
        let linear = dense.params().linear_weights().next().unwrap();
        assert!(linear.as_any().is::<crate::plan::DenseLinear>());
        let err = dense
            .forward(&vec![0.5; 3 * 32 * 32], shape)
            .unwrap_err()
            .to_string();
        assert!(err.contains("loaded for another engine"), "{err}");
    }

    #[test]
    fn a_model_whose_weights_are_released_plans_but_does_not_run() {
        let mut cfg = Config::preset("vmamba-tiny-s1l8").unwrap();
        (cfg.dims, cfg.depths) = (8, vec![1, 1]);
        let mut model = VMamba::random(cfg, 0).unwrap();
        let x = vec![0.5; 3 * 32 * 32];
        let shapes = |m: &VMamba| -> Vec<Vec<usize>> {
            m.params().table().iter().map(|t| t.2.to_vec()).collect()
        };
        let table = shapes(&model);
        let plan =
            serde_json::to_string(&model.plan([1, 3, 32, 32], Outputs::Logits).unwrap()).unwrap();
        assert!(model.forward(&x, [1, 3, 32, 32]).is_ok());
        model.release_weights();
        assert_eq!(shapes(&model), table);
        let again =
            serde_json::to_string(&model.plan([1, 3, 32, 32], Outputs::Logits).unwrap()).unwrap();
        assert_eq!(again, plan);
        let err = model.forward(&x, [1, 3, 32, 32]).unwrap_err().to_string();
        assert!(err.contains("handed to another engine"), "{err}");
        assert!(model.profile(&x, [1, 3, 32, 32]).is_err());
        assert!(model.features(&x, [1, 3, 32, 32]).is_err());
    }

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
