//! The runtime around the network: threads, input and memory checks, labels,
//! top-k and file classification. The network itself is in `mod.rs`.

use super::{VMamba, META_LABELS};
use crate::error::{Error, Result};
use crate::plan::Outputs;
use crate::preprocess::Preprocess;

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
    pub fn classify_file(
        &self,
        path: impl AsRef<std::path::Path>,
        k: usize,
    ) -> Result<Vec<(String, f32)>> {
        let pre = self.preprocess()?;
        let x = pre.apply(&crate::preprocess::load_rgb(path)?)?;
        let s = pre.input_size;
        let logits = self.forward(&x, [1, 3, s, s])?;
        Ok(self.top_k(&logits, k))
    }

    /// Run on `n` worker threads (0: rayon's global pool, all cores; at most 1024).
    pub fn set_num_threads(&mut self, n: usize) -> Result<()> {
        self.cpu.set_num_threads(n)
    }

    /// Most worker threads a model may be given.
    pub const MAX_THREADS: usize = crate::exec::CpuEngine::MAX_THREADS;

    pub(super) fn num_threads(&self) -> usize {
        self.cpu.num_threads()
    }

    /// Refuse an input whose forward pass would need more memory than there is:
    /// the plan's buffers for each image in flight at once, and the outputs.
    fn check_memory(&self, shape: [usize; 4], outputs: Outputs) -> Result<()> {
        let [b, c, h, w] = shape;
        let workers = self.num_threads().min(b);
        let (at_once, per_run) = if workers <= 1 { (1, b) } else { (workers, 1) };
        let plan = self.emit([per_run, c, h, w], outputs);
        let work = crate::exec::workspace_len(&plan) as f64 * 4.0;
        let outputs = plan.elements() as f64 - (plan.arena[0] + plan.arena[1]) as f64;
        let need = at_once as f64 * work + (b / per_run) as f64 * outputs * 4.0;
        // `as` saturates: an absurd estimate becomes u64::MAX and is refused.
        crate::memory::ensure(need as u64, || format!("a forward pass on input {shape:?}"))
    }

    /// The checks that need only the input's shape: batch, channels, size.
    pub(super) fn check_shape(&self, shape: [usize; 4]) -> Result<()> {
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
        if !self.fits(h, w) {
            let m = self.min_size();
            return Err(Error::Input(format!(
                "input of {h}x{w} pixels is too small for this model (needs at least {m}x{m})"
            )));
        }
        if let Some((_, ph, pw)) = self.pos_embed {
            // The embedding is added pixel by pixel: it fits one stem output size only.
            if self.stem.out_hw(h, w) != Some((ph, pw)) {
                let side = self.config.imgsize;
                return Err(Error::Input(format!(
                    "this model adds a position embedding made for {side}x{side} inputs; got {h}x{w}"
                )));
            }
        }
        if crate::memory::elements(&shape).is_none_or(|n| n > isize::MAX as usize / 4) {
            return Err(Error::Input(format!("input shape {shape:?} is too large")));
        }
        // A plan holds its buffer sizes in usize, up to a few thousand times the pixel
        // count: bound the pixels so that no size can overflow, on any engine.
        if b as u128 * h as u128 * w as u128 > 1 << 40 {
            return Err(Error::OutOfMemory(format!(
                "a forward pass on input {shape:?} is far beyond any machine's memory"
            )));
        }
        Ok(())
    }

    pub(super) fn check_input(&self, x: &[f32], shape: [usize; 4], outputs: Outputs) -> Result<()> {
        self.check_shape(shape)?;
        let want: usize = shape.iter().product();
        if want != x.len() {
            return Err(Error::Input(format!(
                "input holds {} values but shape {shape:?} needs {want}",
                x.len()
            )));
        }
        self.check_memory(shape, outputs)
    }

    pub(super) fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.cpu.install(f)
    }

    /// Run `f` on each image of the batch. One image uses every thread; a batch
    /// gives each worker thread whole images, each run single-threaded: no
    /// synchronisation inside the network and a working set that stays in cache.
    pub(super) fn per_image<T: Send>(
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
}
