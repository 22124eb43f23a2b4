//! The CPU engine: executes a [`Plan`] op by op with the kernels of `kernels/`.
//! It keeps the linear weights packed for its GEMM ([`CpuEngine::prepare`],
//! f32 or bf16), its work buffers in one arena per run, taken from a pool of
//! workspaces so that repeated calls do not allocate, and its threads.
//!
//! **Not part of the stable API**: [`run_op`] is public for the op-level tests
//! that hold other backends to this one. Applications use [`crate::VMamba`].

use std::any::Any;
use std::sync::{Arc, Mutex};

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::gemm::{Epilogue, PackedWeight, WeightType};
use crate::kernels::{act, conv, layout, norm, pool, scan};
use crate::plan::{BufId, DType, LinearWeight, Op, Params, Plan, PrepareLinear, Role};

/// The CPU engine beside the plan and the parameters: its threads and the
/// arenas its runs reuse. Linear weights are kept in its layout by the
/// [`Params`] it made ([`CpuEngine::prepare`]).
#[derive(Debug, Default)]
pub struct CpuEngine {
    workspaces: Workspaces,
    pool: Option<Arc<rayon::ThreadPool>>,
}

impl LinearWeight for PackedWeight {
    fn shape(&self) -> (usize, usize) {
        PackedWeight::shape(self)
    }
    fn dense(&self) -> Vec<f32> {
        self.unpack()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

impl CpuEngine {
    /// Most worker threads an engine may be given.
    pub const MAX_THREADS: usize = 1024;

    /// How this engine keeps a linear weight: packed for its GEMM, stored as
    /// `weight_type`, one weight at a time as the model loads.
    pub fn prepare(weight_type: WeightType) -> PrepareLinear {
        Box::new(move |w, n, k| Box::new(PackedWeight::from_vec(w, n, k).to_type(weight_type)))
    }

    /// Store the linear weights of `params` (made by [`CpuEngine::prepare`]) as
    /// `to`: re-rounds them to bf16, or widens them back to f32 (which does not
    /// restore what bf16 dropped).
    pub fn set_weight_type(params: &mut Params, to: WeightType) {
        params.map_linear(|w| match w.into_any().downcast::<PackedWeight>() {
            Ok(p) => Box::new(p.to_type(to)),
            Err(_) => panic!("a linear weight not in the CPU engine's layout"),
        });
    }

    /// True when `params` holds its values and every linear weight is in this
    /// engine's layout (not kept dense for another engine, not released).
    pub fn runs(params: &Params) -> bool {
        !params.released()
            && params
                .linear_weights()
                .all(|w| w.as_any().is::<PackedWeight>())
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

    /// The threads a run uses.
    pub fn num_threads(&self) -> usize {
        match &self.pool {
            Some(p) => p.current_num_threads(),
            None => rayon::current_num_threads(),
        }
    }

    /// Run `f` on this engine's threads.
    pub fn install<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match &self.pool {
            Some(p) => p.install(f),
            None => f(),
        }
    }

    /// Run `plan` on `input` (its NCHW batch) with `params`; returns the outputs
    /// in plan order. With `times`, each op is timed into it.
    pub fn run(
        &self,
        plan: &Plan,
        params: &Params,
        input: &[f32],
        times: Option<&mut OpTimes>,
    ) -> Vec<Vec<f32>> {
        run(plan, params, input, &self.workspaces, times)
    }
}

/// Workspaces larger than this (elements) are freed after the call, not kept.
const KEEP_WORKSPACE: usize = 64 << 20;

/// Reusable arenas, one taken per running plan.
#[derive(Debug, Default)]
pub(crate) struct Workspaces(Mutex<Vec<Vec<f32>>>);

impl Workspaces {
    fn take(&self, len: usize) -> Vec<f32> {
        let mut ws = self
            .0
            .lock()
            .map(|mut p| p.pop())
            .unwrap_or(None)
            .unwrap_or_default();
        if ws.len() < len {
            ws.resize(len, 0.0);
        }
        ws
    }

    fn give(&self, ws: Vec<f32>) {
        if ws.len() <= KEEP_WORKSPACE {
            if let Ok(mut pool) = self.0.lock() {
                pool.push(ws);
            }
        }
    }
}

/// Elements one run of `plan` takes from a workspace: its arenas, nothing else.
pub(crate) fn workspace_len(plan: &Plan) -> usize {
    plan.arena[0] + plan.arena[1]
}

/// The plan's buffers as slices over the input, the outputs and the arena.
struct Buffers {
    at: Vec<(*mut f32, usize)>,
}

impl Buffers {
    fn get(&self, id: BufId) -> &[f32] {
        let (p, n) = self.at[id];
        // SAFETY: each entry points into memory that outlives the run (see `run`).
        unsafe { std::slice::from_raw_parts(p, n) }
    }

    #[allow(clippy::mut_from_ref)]
    fn get_mut(&self, id: BufId) -> &mut [f32] {
        let (p, n) = self.at[id];
        // SAFETY: as in `get`. Buffers that are live at the same op never overlap
        // (plan::Builder::finish), an op never reads the buffer it writes
        // (`Op::aliases`), and the input is never written, so this slice aliases
        // no other in use.
        unsafe { std::slice::from_raw_parts_mut(p, n) }
    }
}

/// Seconds spent per kind of op ([`Op::kind`]; an activation the GEMM applies
/// counts as part of its linear op).
pub type OpTimes = std::collections::BTreeMap<&'static str, f64>;

/// Run `plan` on `input` (its NCHW batch); returns the outputs in plan order.
/// With `times`, each op is timed into it.
fn run(
    plan: &Plan,
    ps: &Params,
    input: &[f32],
    pool: &Workspaces,
    mut times: Option<&mut OpTimes>,
) -> Vec<Vec<f32>> {
    assert_eq!(input.len(), plan.buffers[0].len, "input length");
    let mut outputs: Vec<Vec<f32>> = plan
        .output_ids()
        .iter()
        .map(|&i| vec![0.0; plan.buffers[i].len])
        .collect();
    let mut ws = pool.take(workspace_len(plan));
    let mut outs = outputs.iter_mut();
    let at = plan
        .buffers
        .iter()
        .map(|b| match b.role {
            Role::Input => (input.as_ptr() as *mut f32, b.len),
            Role::Output => {
                let o = outs.next().expect("one vector per output");
                (o.as_mut_ptr(), b.len)
            }
            Role::Work => {
                let base = if b.dtype == DType::F32 {
                    plan.arena[0]
                } else {
                    0
                };
                (ws[base + b.offset..][..b.len].as_mut_ptr(), b.len)
            }
        })
        .collect();
    let bufs = Buffers { at };
    for op in &plan.ops {
        let start = times.as_ref().map(|_| std::time::Instant::now());
        step(op, ps, &bufs);
        if let (Some(times), Some(start)) = (times.as_deref_mut(), start) {
            *times.entry(op.kind()).or_default() += start.elapsed().as_secs_f64();
        }
    }
    pool.give(ws);
    outputs
}

/// Run one op on buffers of its own (indexed by the op's buffer ids), for
/// op-level tests. Refuses buffer ids out of range, an op that reads the buffer
/// it writes, buffers shorter than the op's sizes need and parameters that are
/// missing or not what the op reads, each by a typed error; the op sees each
/// buffer cut to what it needs, as in a plan.
pub fn run_op(op: &Op, ps: &Params, buffers: &mut [Vec<f32>]) -> Result<()> {
    if !CpuEngine::runs(ps) {
        return Err(Error::Usage(
            "parameters not in the CPU engine's layout (make them with Params::with_linear(CpuEngine::prepare(..)))"
                .into(),
        ));
    }
    if let Some(bad) = op.buffers().into_iter().find(|&id| id >= buffers.len()) {
        return Err(Error::Usage(format!("op names buffer {bad}, out of range")));
    }
    if op.aliases() {
        return Err(Error::Usage("op reads the buffer it writes".into()));
    }
    let kind = op.kind();
    let mut used = vec![0; buffers.len()];
    for (id, need) in op.needs().map_err(Error::Usage)? {
        let has = buffers[id].len();
        if has < need {
            return Err(Error::Usage(format!(
                "{kind} op needs {need} values in buffer {id}, which holds {has}"
            )));
        }
        used[id] = used[id].max(need);
    }
    for (id, need) in op.param_needs().map_err(Error::Usage)? {
        ps.check(id, need)
            .map_err(|e| Error::Usage(format!("{kind} op: {e}")))?;
    }
    let at = buffers
        .iter_mut()
        .zip(used)
        .map(|(b, n)| (b.as_mut_ptr(), n))
        .collect();
    step(op, ps, &Buffers { at });
    Ok(())
}

/// A linear weight in this engine's layout.
fn packed(ps: &Params, id: usize) -> &PackedWeight {
    ps.linear(id)
        .as_any()
        .downcast_ref::<PackedWeight>()
        .expect("linear weights in the CPU engine's layout (checked before a run)")
}

/// dst (rows, c) = LayerNorm(src); without weight and bias (the cascade scan's
/// plain norms) weight 1, bias 0.
fn layer_norm(
    ps: &Params,
    src: &[f32],
    rows: usize,
    c: usize,
    weight: Option<usize>,
    bias: Option<usize>,
    dst: &mut [f32],
) {
    let plain;
    let (w, b) = match (weight, bias) {
        (Some(w), Some(b)) => (ps.data(w), ps.data(b)),
        _ => {
            plain = (vec![1.0; c], vec![0.0; c]);
            (&plain.0[..], &plain.1[..])
        }
    };
    norm::layer_norm(src, c, dst, c, rows, w, b)
}

/// Run one op (a fused op as the fusion made it: a linear op's `act` in the
/// GEMM's epilogue, applied to each tile; its norm and a norm's gate after).
fn step(op: &Op, ps: &Params, bufs: &Buffers) {
    let (get, put) = (|i| bufs.get(i), |i| bufs.get_mut(i));
    match *op {
        Op::ToChannelsLast {
            src,
            dst,
            b,
            c,
            h,
            w,
        } => layout::transpose_images(get(src), b, c, h * w, put(dst)),
        Op::ToChannelsFirst {
            src,
            dst,
            b,
            h,
            w,
            c,
        } => layout::transpose_images(get(src), b, h * w, c, put(dst)),
        Op::Im2col {
            src,
            dst,
            b,
            h,
            w,
            c,
            k,
            stride,
            pad,
            ..
        } => conv::im2col(get(src), b, h, w, c, k, stride, pad, put(dst)),
        Op::Linear {
            src,
            dst,
            rows,
            inp,
            out,
            weight,
            bias,
            accumulate,
            act,
            norm_dst,
            norm_weight,
            norm_bias,
        } => {
            let w = packed(ps, weight);
            assert_eq!(w.shape(), (out, inp), "linear weight shape");
            let x = &get(src)[..rows * inp];
            let ep = Epilogue {
                bias: bias.map(|b| ps.data(b)),
                act,
            };
            w.apply(x, rows, ep, put(dst), accumulate);
            if let Some(n) = norm_dst {
                // `param_needs` holds a fused norm to its weights.
                layer_norm(ps, get(dst), rows, out, norm_weight, norm_bias, put(n));
            }
        }
        Op::Act { buf, len, act } => act::act_inplace(&mut put(buf)[..len], act),
        Op::AddParam { buf, b, len, param } => {
            let p = ps.data(param);
            put(buf)[..b * len]
                .par_chunks_mut(len)
                .for_each(|img| img.iter_mut().zip(p).for_each(|(x, v)| *x += v));
        }
        Op::LayerNorm {
            src,
            dst,
            rows,
            c,
            weight,
            bias,
            gate,
            gate_stride,
            gate_offset,
            gate_act,
        } => {
            layer_norm(ps, get(src), rows, c, weight, bias, put(dst));
            if let Some(z) = gate {
                act::gate_rows(
                    &mut put(dst)[..rows * c],
                    c,
                    get(z),
                    gate_stride,
                    gate_offset,
                    gate_act,
                );
            }
        }
        Op::Pointwise {
            src,
            src_stride,
            src_offset,
            dst,
            rows,
            c,
            act,
            gate,
            gate_stride,
            gate_offset,
            gate_act,
        } => {
            let (x, y) = (get(src), &mut put(dst)[..rows * c]);
            y.par_chunks_mut(c).enumerate().for_each(|(i, yr)| {
                let xr = &x[i * src_stride + src_offset..][..c];
                yr.iter_mut()
                    .zip(xr)
                    .for_each(|(o, v)| *o = act::apply(act, *v));
            });
            if let Some(z) = gate {
                act::gate_rows(y, c, get(z), gate_stride, gate_offset, gate_act);
            }
        }
        Op::DwConvAct {
            src,
            src_stride,
            dst,
            b,
            h,
            w,
            c,
            k,
            weight,
            bias,
            act,
        } => conv::dwconv_act(
            get(src),
            src_stride,
            b,
            h,
            w,
            c,
            k,
            ps.data(weight),
            bias.map(|i| ps.data(i)),
            act,
            put(dst),
        ),
        Op::CrossScan {
            u,
            xdbl,
            dst,
            b,
            h,
            w,
            di,
            n,
            r,
            ref paths,
            dt_weight,
            dt_bias,
            a,
            d,
        } => {
            let y = put(dst);
            y.fill(0.0); // the scan adds the directions into y
            let s = scan::CrossScan {
                paths,
                batch: b,
                h,
                w,
                di,
                n,
                r,
                u: get(u),
                xdbl: get(xdbl),
                dt_weight: ps.data(dt_weight),
                a: ps.data(a),
                d: ps.data(d),
                bias: ps.data(dt_bias),
            };
            scan::cross_selective_scan(&s, y);
        }
        Op::SpatialSoftmax { src, dst, b, hw, c } => {
            pool::spatial_softmax(get(src), b, hw, c, put(dst))
        }
        Op::TransposeHw {
            src,
            dst,
            b,
            h,
            w,
            c,
        } => layout::transpose_hw(get(src), b, h, w, c, put(dst)),
        Op::PatchMerge {
            src,
            dst,
            b,
            h,
            w,
            c,
        } => layout::patch_merge(get(src), b, h, w, c, put(dst)),
        Op::MeanPool { src, dst, b, hw, c } => pool::mean_pool(get(src), b, hw, c, put(dst)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Outputs;
    use crate::plan::ParamNeed;

    fn small_model(forward: &str) -> crate::VMamba {
        let mut cfg = crate::Config::preset("vmamba-tiny-s1l8").unwrap();
        (cfg.dims, cfg.depths) = (16, vec![1, 1, 1, 1]);
        cfg.forward_type = forward.into();
        crate::VMamba::random(cfg, 0).unwrap()
    }

    /// Every op of a plan, given buffers longer than it needs, runs as it does in
    /// the plan (its kernels see the lengths they expect) and fills what it writes.
    #[test]
    fn run_op_takes_buffers_longer_than_needed() {
        for forward in ["v05_noz", "v052dc", "v05_onsoftmax"] {
            let model = small_model(forward);
            let plan = model.plan([1, 3, 64, 48], Outputs::Logits).unwrap();
            for op in &plan.ops {
                let need = op.needs().unwrap();
                let mut bufs = vec![Vec::new(); plan.buffers.len()];
                for &(id, n) in &need {
                    bufs[id] = vec![0.5; n + 7];
                }
                // NaN where the op must not write, and where it must (unless it
                // reads its output: the first buffer an in-place op writes).
                let wrote: Vec<(usize, usize)> = op
                    .written()
                    .iter()
                    .map(|w| *need.iter().find(|(id, _)| id == w).unwrap())
                    .collect();
                let in_place = matches!(
                    op,
                    Op::Act { .. }
                        | Op::AddParam { .. }
                        | Op::Linear {
                            accumulate: true,
                            ..
                        }
                );
                for (k, &(w, n)) in wrote.iter().enumerate() {
                    let from = if in_place && k == 0 { n } else { 0 };
                    bufs[w][from..].fill(f32::NAN);
                }
                run_op(op, model.params(), &mut bufs).unwrap();
                for &(w, n) in &wrote {
                    assert!(bufs[w][..n].iter().all(|v| v.is_finite()), "{op:?}");
                    assert!(
                        bufs[w][n..].iter().all(|v| v.is_nan()),
                        "{op:?} wrote past its size"
                    );
                }
            }
        }
    }

    /// A parameter that is missing, of the wrong length or of the wrong kind is a
    /// typed error naming it, before any kernel runs.
    #[test]
    fn run_op_refuses_parameters_that_do_not_fit() {
        let model = small_model("v05_noz");
        let ps = model.params();
        let plan = model.plan([1, 3, 64, 64], Outputs::Logits).unwrap();
        let linear = plan
            .ops
            .iter()
            .find(|op| matches!(op, Op::Linear { bias: Some(_), .. }))
            .unwrap();
        let Op::Linear { weight, bias, .. } = linear.clone() else {
            unreachable!()
        };
        let bias = bias.unwrap();
        // A plain parameter of another length than this op's bias.
        let table = ps.table();
        let len = |i: usize| table[i].2.iter().product::<usize>();
        let other = (0..table.len())
            .find(|&i| ps.check(i, ParamNeed::Values(len(i))).is_ok() && len(i) != len(bias))
            .unwrap();
        let with = |w, b| {
            let mut op = linear.clone();
            if let Op::Linear { weight, bias, .. } = &mut op {
                (*weight, *bias) = (w, Some(b));
            }
            op
        };
        let missing = table.len();
        for (op, says) in [
            (with(weight, other), "values, not"),
            (with(weight, weight), "is a linear weight"),
            (with(other, bias), "is not a linear weight"),
            (
                with(missing, bias),
                &format!("parameter {missing} does not exist")[..],
            ),
        ] {
            let mut bufs = vec![Vec::new(); plan.buffers.len()];
            for (id, need) in op.needs().unwrap() {
                bufs[id] = vec![0.0; need];
            }
            let err = run_op(&op, ps, &mut bufs).unwrap_err().to_string();
            assert!(err.contains("linear op: ") && err.contains(says), "{err}");
        }
    }
}
