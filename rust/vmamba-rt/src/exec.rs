//! The CPU engine: executes a [`Plan`] op by op with the kernels of `kernels/`.
//! Work buffers live in one arena per run, taken from a pool of workspaces so
//! that repeated calls do not allocate.
//!
//! **Not part of the stable API**: [`run_op`] is public for the op-level tests
//! that hold other backends to this one. Applications use [`crate::VMamba`].

use std::sync::Mutex;

use rayon::prelude::*;

use crate::error::{Error, Result};
use crate::kernels::matmul::{self, Mat};
use crate::kernels::{act, conv, math, norm, scan};
use crate::plan::{BufId, DType, Op, Params, Plan, Role};

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

/// Elements of the scratch space the CPU needs beside the plan's buffers
/// (the scan's per-direction deltas).
fn scratch_len(op: &Op) -> usize {
    match *op {
        Op::CrossScan {
            b,
            h,
            w,
            di,
            ref paths,
            ..
        } => paths.len() * b * h * w * di,
        _ => 0,
    }
}

/// Elements one run of `plan` takes from a workspace.
pub(crate) fn workspace_len(plan: &Plan) -> usize {
    plan.arena[0] + plan.arena[1] + plan.ops.iter().map(scratch_len).max().unwrap_or(0)
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

/// Run `plan` on `input` (its NCHW batch); returns the outputs in plan order.
pub(crate) fn run(plan: &Plan, ps: &Params, input: &[f32], pool: &Workspaces) -> Vec<Vec<f32>> {
    assert_eq!(input.len(), plan.buffers[0].len, "input length");
    let mut outputs: Vec<Vec<f32>> = plan
        .output_ids()
        .iter()
        .map(|&i| vec![0.0; plan.buffers[i].len])
        .collect();
    let mut ws = pool.take(workspace_len(plan));
    let (arena, scratch) = ws.split_at_mut(plan.arena[0] + plan.arena[1]);
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
                (arena[base + b.offset..][..b.len].as_mut_ptr(), b.len)
            }
        })
        .collect();
    let bufs = Buffers { at };
    for op in &plan.ops {
        step(op, ps, &bufs, scratch);
    }
    pool.give(ws);
    outputs
}

/// Run one op on buffers of its own (indexed by the op's buffer ids), for
/// op-level tests. Refuses buffer ids out of range and an op that reads the
/// buffer it writes; the kernels check sizes.
pub fn run_op(op: &Op, ps: &Params, buffers: &mut [Vec<f32>]) -> Result<()> {
    if let Some(bad) = op.buffers().into_iter().find(|&id| id >= buffers.len()) {
        return Err(Error::Usage(format!("op names buffer {bad}, out of range")));
    }
    if op.aliases() {
        return Err(Error::Usage("op reads the buffer it writes".into()));
    }
    let at = buffers
        .iter_mut()
        .map(|b| (b.as_mut_ptr(), b.len()))
        .collect();
    let mut scratch = vec![0.0; scratch_len(op)];
    step(op, ps, &Buffers { at }, &mut scratch);
    Ok(())
}

fn step(op: &Op, ps: &Params, bufs: &Buffers, scratch: &mut [f32]) {
    let (get, put) = (|i| bufs.get(i), |i| bufs.get_mut(i));
    match *op {
        Op::ToChannelsLast {
            src,
            dst,
            b,
            c,
            h,
            w,
        } => transpose_images(get(src), b, c, h * w, put(dst)),
        Op::ToChannelsFirst {
            src,
            dst,
            b,
            h,
            w,
            c,
        } => transpose_images(get(src), b, h * w, c, put(dst)),
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
        } => {
            let y = put(dst);
            matmul::matmul_nt(
                Mat::new(get(src), rows, inp),
                Mat::new(ps.data(weight), out, inp),
                y,
                out,
                accumulate,
            );
            if let Some(bias) = bias {
                matmul::add_bias(y, out, ps.data(bias));
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
        } => {
            // Without an affine part: weight 1, bias 0 (only the cascade scan does this).
            let plain;
            let (w, b) = match (weight, bias) {
                (Some(w), Some(b)) => (ps.data(w), ps.data(b)),
                _ => {
                    plain = (vec![1.0; c], vec![0.0; c]);
                    (&plain.0[..], &plain.1[..])
                }
            };
            norm::layer_norm(get(src), c, put(dst), c, rows, w, b)
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
            let (x, y, z) = (get(src), put(dst), gate.map(get));
            y[..rows * c]
                .par_chunks_mut(c)
                .enumerate()
                .for_each(|(i, yr)| {
                    let xr = &x[i * src_stride + src_offset..][..c];
                    yr.iter_mut()
                        .zip(xr)
                        .for_each(|(o, v)| *o = act::apply(act, *v));
                    if let Some(z) = z {
                        let zr = &z[i * gate_stride + gate_offset..][..c];
                        yr.iter_mut()
                            .zip(zr)
                            .for_each(|(o, g)| *o *= act::apply(gate_act, *g));
                    }
                });
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
            let (rows, k) = (b * h * w, paths.len());
            let xs = k * (r + 2 * n);
            let xdbl = get(xdbl);
            // delta_in[k] = dt_k @ dt_projs_weight[k]^T: (K, rows, Di)
            let delta = &mut scratch[..k * rows * di];
            for (kk, out) in delta.chunks_mut(rows * di).enumerate() {
                let dt = Mat::strided(&xdbl[kk * (r + 2 * n)..], rows, r, xs);
                let wk = Mat::new(&ps.data(dt_weight)[kk * di * r..(kk + 1) * di * r], di, r);
                matmul::matmul_nt(dt, wk, out, di, false);
            }
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
                delta,
                xdbl,
                a: ps.data(a),
                d: ps.data(d),
                bias: ps.data(dt_bias),
            };
            scan::cross_selective_scan(&s, y);
        }
        Op::SpatialSoftmax { src, dst, b, hw, c } => {
            let (x, y) = (get(src), put(dst));
            y[..b * hw * c]
                .par_chunks_mut(hw * c)
                .zip(x.par_chunks(hw * c))
                .for_each(|(yi, xi)| {
                    for ch in 0..c {
                        let max = (0..hw).fold(f32::NEG_INFINITY, |m, p| m.max(xi[p * c + ch]));
                        let mut sum = 0.0f64;
                        for p in 0..hw {
                            let e = math::exp(xi[p * c + ch] - max);
                            yi[p * c + ch] = e;
                            sum += e as f64;
                        }
                        let inv = (1.0 / sum) as f32;
                        (0..hw).for_each(|p| yi[p * c + ch] *= inv);
                    }
                });
        }
        Op::TransposeHw {
            src,
            dst,
            b,
            h,
            w,
            c,
        } => {
            let (x, y) = (get(src), put(dst));
            // Output row `col` of image `bi` is input column `col`.
            y[..b * h * w * c]
                .par_chunks_mut(h * c)
                .enumerate()
                .for_each(|(row, out)| {
                    let (bi, col) = (row / w, row % w);
                    for r in 0..h {
                        out[r * c..(r + 1) * c]
                            .copy_from_slice(&x[((bi * h + r) * w + col) * c..][..c]);
                    }
                });
        }
        Op::PatchMerge {
            src,
            dst,
            b,
            h,
            w,
            c,
        } => patch_merge(get(src), b, h, w, c, put(dst)),
        Op::MeanPool { src, dst, b, hw, c } => {
            let (x, out) = (get(src), put(dst));
            for (img, o) in x.chunks(hw * c).zip(out.chunks_mut(c)).take(b) {
                o.fill(0.0);
                for px in img.chunks(c) {
                    o.iter_mut().zip(px).for_each(|(a, v)| *a += v);
                }
                o.iter_mut().for_each(|v| *v /= hw as f32);
            }
        }
    }
}

/// Transpose each of `b` images from (rows, cols) to (cols, rows):
/// NCHW -> NHWC with (rows, cols) = (C, H*W), and back with (H*W, C).
fn transpose_images(x: &[f32], b: usize, rows: usize, cols: usize, out: &mut [f32]) {
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
}

/// (B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 4C), zero-padding an odd last row / column.
/// Channel groups in the official order: (0,0), (1,0), (0,1), (1,1) as (row, col) offsets.
fn patch_merge(x: &[f32], b: usize, h: usize, w: usize, c: usize, out: &mut [f32]) {
    let (ho, wo) = (h.div_ceil(2), w.div_ceil(2));
    out.par_chunks_mut(wo * 4 * c)
        .take(b * ho)
        .enumerate()
        .for_each(|(row, out)| {
            let (bi, oy) = (row / ho, row % ho);
            for ox in 0..wo {
                for (g, (dy, dx)) in [(0, 0), (1, 0), (0, 1), (1, 1)].into_iter().enumerate() {
                    let (iy, ix) = (2 * oy + dy, 2 * ox + dx);
                    let dst = &mut out[(ox * 4 + g) * c..][..c];
                    if iy < h && ix < w {
                        let src = ((bi * h + iy) * w + ix) * c;
                        dst.copy_from_slice(&x[src..src + c]);
                    } else {
                        dst.fill(0.0);
                    }
                }
            }
        });
}
