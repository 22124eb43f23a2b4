//! Reference kernels exposed for kernel-level tests against the official op
//! vectors, and single plan ops run by the CPU engine for op-level tests of
//! the other backends.

use numpy::{
    IntoPyArray, PyArray1, PyArray3, PyArrayMethods, PyReadonlyArray1, PyReadonlyArray2,
    PyReadonlyArray3, PyReadonlyArray4, PyReadonlyArray5, PyUntypedArrayMethods,
};
use pyo3::prelude::*;

use vmamba_rt::kernels::{cross_scan, scan};

use crate::{guarded, VMambaError};

fn nonempty(name: &str, shape: &[usize]) -> PyResult<()> {
    if shape.contains(&0) {
        return Err(VMambaError::new_err(format!(
            "{name} has an empty dimension: shape {shape:?}"
        )));
    }
    Ok(())
}

/// Selective scan in the official layout: u, delta (B, K*Di, L); A (K*Di, N);
/// B, C (B, K, N, L); D, delta_bias (K*Di); softplus applied to delta + delta_bias.
#[pyfunction]
#[allow(clippy::too_many_arguments)]
#[pyo3(name = "selective_scan_ref")]
fn selective_scan<'py>(
    py: Python<'py>,
    u: PyReadonlyArray3<'py, f32>,
    delta: PyReadonlyArray3<'py, f32>,
    a: PyReadonlyArray2<'py, f32>,
    b: PyReadonlyArray4<'py, f32>,
    c: PyReadonlyArray4<'py, f32>,
    d: PyReadonlyArray1<'py, f32>,
    delta_bias: PyReadonlyArray1<'py, f32>,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    guarded(|| {
        let (bs, kd, l) = (u.shape()[0], u.shape()[1], u.shape()[2]);
        let (k, n) = (b.shape()[1], b.shape()[2]);
        let expect = [
            ("delta", delta.shape(), vec![bs, kd, l]),
            ("A", a.shape(), vec![kd, n]),
            ("B", b.shape(), vec![bs, k, n, l]),
            ("C", c.shape(), vec![bs, k, n, l]),
            ("D", d.shape(), vec![kd]),
            ("delta_bias", delta_bias.shape(), vec![kd]),
        ];
        if k == 0 || !kd.is_multiple_of(k) {
            return Err(VMambaError::new_err(format!(
                "u has K*Di = {kd} channels, not a multiple of B's K = {k}"
            )));
        }
        for (name, got, want) in expect {
            if got != want.as_slice() {
                return Err(VMambaError::new_err(format!(
                    "{name} has shape {got:?}, expected {want:?} (from u {:?} and B {:?})",
                    [bs, kd, l],
                    [bs, k, n, l]
                )));
            }
        }
        let (u, delta, a, b, c, d, bias) = (
            u.as_slice()?,
            delta.as_slice()?,
            a.as_slice()?,
            b.as_slice()?,
            c.as_slice()?,
            d.as_slice()?,
            delta_bias.as_slice()?,
        );
        let mut y = Vec::with_capacity(bs * kd * l);
        for i in 0..bs {
            let (s, g) = (kd * l, k * n * l);
            y.extend(scan::selective_scan_ref(
                &u[i * s..][..s],
                &delta[i * s..][..s],
                a,
                &b[i * g..][..g],
                &c[i * g..][..g],
                d,
                bias,
                k,
                n,
                l,
            ));
        }
        y.into_pyarray(py).reshape([bs, kd, l])
    })
}

/// Cross-scan: x (B, C, H, W) -> (B, 4, C, H*W).
#[pyfunction]
fn cross_scan_ref<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f32>,
) -> PyResult<Bound<'py, numpy::PyArray4<f32>>> {
    guarded(|| {
        let &[b, c, h, w] = x.shape() else {
            unreachable!()
        };
        nonempty("x", x.shape())?;
        let x = x.as_slice()?;
        let out: Vec<f32> = x
            .chunks(c * h * w)
            .flat_map(|img| cross_scan::cross_scan_ref(img, c, h, w))
            .collect();
        out.into_pyarray(py).reshape([b, 4, c, h * w])
    })
}

/// Cross-merge: ys (B, 4, C, H, W) -> (B, C, H*W).
#[pyfunction]
fn cross_merge_ref<'py>(
    py: Python<'py>,
    ys: PyReadonlyArray5<'py, f32>,
) -> PyResult<Bound<'py, PyArray3<f32>>> {
    guarded(|| {
        let &[b, k, c, h, w] = ys.shape() else {
            unreachable!()
        };
        nonempty("ys", ys.shape())?;
        if k != 4 {
            return Err(VMambaError::new_err(format!(
                "ys must hold 4 directions (B, 4, C, H, W), got shape {:?}",
                [b, k, c, h, w]
            )));
        }
        let ys = ys.as_slice()?;
        let out: Vec<f32> = ys
            .chunks(4 * c * h * w)
            .flat_map(|img| cross_scan::cross_merge_ref(img, c, h, w))
            .collect();
        out.into_pyarray(py).reshape([b, c, h * w])
    })
}

/// Two index arrays (see `scan_order`).
type IndexPair<'py> = (Bound<'py, PyArray1<i64>>, Bound<'py, PyArray1<i64>>);

/// The order a scan path walks an h x w map: for each step, the pixel it reads
/// and the pixel its output is added to (row-major indices). The one definition
/// of the paths, for engines written outside Rust (the ONNX exporter).
#[pyfunction]
fn scan_order<'py>(py: Python<'py>, path: &str, h: usize, w: usize) -> PyResult<IndexPair<'py>> {
    let path: vmamba_rt::variant::ScanPath = serde_json::from_value(path.into())
        .map_err(|_| VMambaError::new_err(format!("unknown scan path {path:?}")))?;
    let steps = h
        .checked_mul(w)
        .filter(|&n| n > 0 && n <= 1 << 24)
        .ok_or_else(|| {
            VMambaError::new_err(format!("scan_order: a {h} x {w} map is out of range"))
        })?;
    let (read, lands): (Vec<i64>, Vec<i64>) = (0..steps)
        .map(|l| {
            (
                path.position(l, h, w) as i64,
                path.out_position(l, h, w) as i64,
            )
        })
        .unzip();
    Ok((read.into_pyarray(py), lands.into_pyarray(py)))
}

/// Run one plan op (JSON, as in a plan) with the CPU engine on `buffers` (f32,
/// flat, indexed by the op's buffer ids) and `params` (by id; `act` dtype).
/// Returns the buffers after the op. For op-level tests of other backends.
#[pyfunction]
fn run_op<'py>(
    py: Python<'py>,
    op_json: &str,
    buffers: Vec<PyReadonlyArray1<'py, f32>>,
    params: Vec<PyReadonlyArray1<'py, f32>>,
) -> PyResult<Vec<Bound<'py, numpy::PyArray1<f32>>>> {
    let op: vmamba_rt::plan::Op =
        serde_json::from_str(op_json).map_err(|e| VMambaError::new_err(format!("bad op: {e}")))?;
    // The op's sizes first: packing a linear weight trusts its out and inp.
    op.needs().map_err(VMambaError::new_err)?;
    let mut bufs: Vec<Vec<f32>> = buffers.iter().map(|b| b.as_array().to_vec()).collect();
    // A linear op's weight is packed for the GEMM, as the model does at load.
    let linear = match op {
        vmamba_rt::plan::Op::Linear {
            weight, out, inp, ..
        } => Some((weight, out, inp)),
        _ => None,
    };
    let mut ps = vmamba_rt::plan::Params::with_linear(vmamba_rt::exec::CpuEngine::prepare(
        vmamba_rt::kernels::gemm::WeightType::F32,
    ));
    for (i, p) in params.iter().enumerate() {
        let data = p.as_array().to_vec();
        let n = data.len();
        let param = vmamba_rt::weights::Param::owned(data, vec![n]);
        match linear {
            Some((w, out, inp)) if w == i => {
                if vmamba_rt::memory::elements(&[out, inp]) != Some(n) {
                    return Err(VMambaError::new_err(format!(
                        "linear weight {i} holds {n} values, not {out}x{inp}"
                    )));
                }
                ps.add_linear(&i.to_string(), param, out, inp);
            }
            _ => {
                ps.add(&i.to_string(), param, vmamba_rt::plan::DType::F32);
            }
        }
    }
    py.detach(|| guarded(|| vmamba_rt::exec::run_op(&op, &ps, &mut bufs).map_err(crate::to_py)))?;
    Ok(bufs.into_iter().map(|b| b.into_pyarray(py)).collect())
}

/// Our GEMM's rate on one shape, for the CPU benchmark's per-shape table: the
/// best of `reps` products x (m, k) times w (n, k)^T on `threads` threads, in
/// GFLOP/s (operands allocated once, outside the timing).
#[pyfunction]
#[pyo3(signature = (m, k, n, threads, reps, dtype="float32"))]
#[allow(clippy::too_many_arguments)]
fn gemm_gflops(
    py: Python<'_>,
    m: usize,
    k: usize,
    n: usize,
    threads: usize,
    reps: usize,
    dtype: &str,
) -> PyResult<f64> {
    // Each operand at most 2^28 elements (counted without wrapping around), and
    // a bounded number of repeats: a call is a benchmark, not a way to hang.
    let too_big = [[m, k], [n, k], [m, n]]
        .iter()
        .any(|dims| vmamba_rt::memory::elements(dims).is_none_or(|e| e > 1 << 28));
    if [m, k, n, threads, reps].contains(&0) || too_big || threads > 1024 || reps > 1000 {
        return Err(VMambaError::new_err(format!(
            "gemm_gflops: shape ({m}, {k}, {n}) x {reps} on {threads} threads is out of range"
        )));
    }
    py.detach(|| {
        guarded(|| {
            use vmamba_rt::kernels::gemm::{Epilogue, PackedWeight};
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .map_err(|e| VMambaError::new_err(e.to_string()))?;
            let x = vec![0.5f32; m * k];
            let w = PackedWeight::new(&vec![0.25f32; n * k], n, k, crate::weight_type(dtype)?);
            let mut y = vec![0.0f32; m * n];
            let best = pool.install(|| {
                (0..reps + 1)
                    .map(|_| {
                        let t = std::time::Instant::now();
                        w.apply(&x, m, Epilogue::NONE, &mut y, false);
                        t.elapsed().as_secs_f64()
                    })
                    .skip(1) // the first call warms caches and the pool
                    .fold(f64::INFINITY, f64::min)
            });
            Ok(2.0 * (m * k * n) as f64 / best / 1e9)
        })
    })
}

/// The limit of a multiply-add instruction, `unit` "fma" (f32, the widest the
/// kernels use) or "bf16dot" (`vdpbf16ps`), on `threads` threads at once:
/// (instruction, GFLOP/s), or None where the CPU lacks it.
#[pyfunction]
fn instruction_gflops(
    py: Python<'_>,
    unit: &str,
    threads: usize,
) -> PyResult<Option<(&'static str, f64)>> {
    use vmamba_rt::kernels::limits::{gflops, Unit};
    let unit = match unit {
        "fma" => Unit::Fma,
        "bf16dot" => Unit::Bf16Dot,
        _ => {
            return Err(VMambaError::new_err(format!(
                "instruction_gflops: unit must be 'fma' or 'bf16dot', got {unit:?}"
            )))
        }
    };
    let threads = std::num::NonZeroUsize::new(threads)
        .filter(|t| t.get() <= 1024)
        .ok_or_else(|| {
            VMambaError::new_err(format!(
                "instruction_gflops: threads must be 1 to 1024, got {threads}"
            ))
        })?;
    py.detach(|| {
        guarded(|| {
            let limit = gflops(unit, threads).map_err(|e| {
                VMambaError::new_err(format!(
                    "instruction_gflops: could not start {threads} threads: {e}"
                ))
            })?;
            Ok(limit.map(|l| (l.instruction, l.gflops)))
        })
    })
}

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(selective_scan, m)?)?;
    m.add_function(wrap_pyfunction!(cross_scan_ref, m)?)?;
    m.add_function(wrap_pyfunction!(cross_merge_ref, m)?)?;
    m.add_function(wrap_pyfunction!(run_op, m)?)?;
    m.add_function(wrap_pyfunction!(scan_order, m)?)?;
    m.add_function(wrap_pyfunction!(gemm_gflops, m)?)?;
    m.add_function(wrap_pyfunction!(instruction_gflops, m)?)?;
    Ok(())
}
