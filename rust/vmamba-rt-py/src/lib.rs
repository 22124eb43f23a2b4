//! Python bindings of vmamba-rt: a thin layer over the Rust core. Arrays cross
//! without copies on the way in; every forward pass runs with the GIL released.
//! The friendly API (`vmamba_rt.load`, `Model`) is plain Python on top of this.

use numpy::{
    IntoPyArray, PyArray2, PyArray4, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods,
};
use pyo3::create_exception;
use pyo3::exceptions::{PyMemoryError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use vmamba_rt::{Error, VMamba};

mod ops;
mod pickle_scan;

create_exception!(
    vmamba_rt._native,
    VMambaError,
    PyValueError,
    "Any error raised by vmamba-rt; the message says what and where."
);

fn to_py(e: Error) -> PyErr {
    match e.root() {
        Error::OutOfMemory(_) => PyMemoryError::new_err(e.to_string()),
        _ => VMambaError::new_err(e.to_string()),
    }
}

/// Run `f`, turning a panic (a bug: inputs are validated first) into a
/// VMambaError: no PanicException ever reaches Python.
fn guarded<T>(f: impl FnOnce() -> PyResult<T>) -> PyResult<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or_else(|p| {
        let what = p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
        Err(VMambaError::new_err(format!(
            "internal error (please report): {}",
            what.unwrap_or_default()
        )))
    })
}

/// Run `f` with the GIL released, guarded against panics.
fn detached<T: Send>(py: Python<'_>, f: impl FnOnce() -> Result<T, Error> + Send) -> PyResult<T> {
    py.detach(|| guarded(|| f().map_err(to_py)))
}

/// A loaded model (see `vmamba_rt.Model` for the documented API).
#[pyclass(module = "vmamba_rt._native")]
struct Model {
    inner: VMamba,
}

/// A weight type by its NumPy-style name.
pub(crate) fn weight_type(dtype: &str) -> PyResult<vmamba_rt::kernels::gemm::WeightType> {
    vmamba_rt::kernels::gemm::WeightType::from_name(dtype).ok_or_else(|| {
        VMambaError::new_err(format!(
            "dtype must be 'float32' or 'bfloat16' on the CPU, got {dtype:?}"
        ))
    })
}

/// How a model keeps its linear weights: `weights` "float32" or "bfloat16"
/// (the CPU engine's layouts), or "dense" (for another engine: the CUDA engine
/// reads and uploads them; such a model plans but does not run on the CPU).
fn load_options(weights: &str, mmap: bool) -> PyResult<vmamba_rt::model::LoadOptions> {
    let dense = weights == "dense";
    Ok(vmamba_rt::model::LoadOptions {
        mmap,
        weight_type: if dense {
            Default::default()
        } else {
            weight_type(weights)?
        },
        dense,
    })
}

fn shape4(x: &PyReadonlyArray4<f32>) -> PyResult<[usize; 4]> {
    if !x.is_c_contiguous() {
        return Err(VMambaError::new_err(
            "input must be C-contiguous (use numpy.ascontiguousarray)",
        ));
    }
    let s = x.shape();
    Ok([s[0], s[1], s[2], s[3]])
}

/// Run `f` on a batch with the GIL released; its output, one row per image, as (B, N).
fn per_image_rows<'py>(
    py: Python<'py>,
    x: PyReadonlyArray4<'py, f32>,
    f: impl FnOnce(&[f32], [usize; 4]) -> Result<Vec<f32>, Error> + Send,
) -> PyResult<Bound<'py, PyArray2<f32>>> {
    let shape = shape4(&x)?;
    let data = x.as_slice()?;
    let rows = detached(py, || f(data, shape))?;
    let width = rows.len() / shape[0];
    rows.into_pyarray(py).reshape([shape[0], width])
}

#[pymethods]
impl Model {
    /// `mmap=True` maps the file instead of reading it (see `Weights::open_mmap`);
    /// `weights` ("float32" or "bfloat16") is how the linear weights are stored.
    #[new]
    #[pyo3(signature = (path, num_threads=None, mmap=false, weights="float32"))]
    fn new(
        py: Python<'_>,
        path: std::path::PathBuf,
        num_threads: Option<usize>,
        mmap: bool,
        weights: &str,
    ) -> PyResult<Self> {
        let options = load_options(weights, mmap)?;
        detached(py, || {
            let mut inner = VMamba::load_with(&path, options)?;
            if let Some(n) = num_threads {
                inner.set_num_threads(n)?;
            }
            Ok(Model { inner })
        })
    }

    /// A model with random weights in the shapes of `config_json` (benchmarks).
    #[staticmethod]
    #[pyo3(signature = (config_json, seed=0, num_threads=None, weights="float32"))]
    fn random(
        py: Python<'_>,
        config_json: &str,
        seed: u64,
        num_threads: Option<usize>,
        weights: &str,
    ) -> PyResult<Self> {
        let options = load_options(weights, false)?;
        detached(py, || {
            let cfg = vmamba_rt::Config::from_json(config_json)?;
            let mut inner = VMamba::random_with(cfg, seed, options)?;
            if let Some(n) = num_threads {
                inner.set_num_threads(n)?;
            }
            Ok(Model { inner })
        })
    }

    /// The config of a released preset as JSON.
    #[staticmethod]
    fn preset_json(name: &str) -> PyResult<String> {
        vmamba_rt::Config::preset(name)
            .map(|c| c.to_json())
            .ok_or_else(|| {
                VMambaError::new_err(format!(
                    "unknown preset '{name}'; known: {}",
                    vmamba_rt::Config::PRESETS.join(", ")
                ))
            })
    }

    /// The architecture as JSON.
    #[getter]
    fn config_json(&self) -> String {
        self.inner.config().to_json()
    }

    /// Header metadata of the weights file.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.inner.metadata() {
            d.set_item(k, v)?;
        }
        Ok(d)
    }

    /// Smallest square input side the model accepts.
    #[getter]
    fn min_size(&self) -> usize {
        self.inner.min_size()
    }

    /// Logits (B, num_classes) for x (B, C, H, W) float32.
    fn forward<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        per_image_rows(py, x, |data, shape| self.inner.forward(data, shape))
    }

    /// Pooled embeddings (pre-logits), (B, C).
    fn embed<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
    ) -> PyResult<Bound<'py, PyArray2<f32>>> {
        per_image_rows(py, x, |data, shape| self.inner.embed(data, shape))
    }

    /// The execution plan for an input of `shape` (B, C, H, W) as JSON; `outputs`
    /// is "logits", "embeddings" or "features". Shape errors as for `forward`.
    fn plan_json(&self, shape: (usize, usize, usize, usize), outputs: &str) -> PyResult<String> {
        let outputs: vmamba_rt::plan::Outputs = serde_json::from_value(outputs.into())
            .map_err(|_| VMambaError::new_err(format!("unknown plan outputs {outputs:?}")))?;
        let (b, c, h, w) = shape;
        guarded(|| {
            let plan = self.inner.plan([b, c, h, w], outputs).map_err(to_py)?;
            serde_json::to_string(&plan).map_err(|e| VMambaError::new_err(e.to_string()))
        })
    }

    /// Let the weights go once another engine holds its own copy (the CUDA
    /// engine, after uploading): plans still build; the CPU paths refuse.
    fn release_weights(&mut self) {
        self.inner.release_weights();
    }

    /// (name, dtype, shape) of every parameter the plans name, by id.
    fn param_table(&self) -> Vec<(String, String, Vec<usize>)> {
        self.inner
            .params()
            .table()
            .into_iter()
            .map(|(name, dtype, shape)| {
                (
                    name.to_string(),
                    format!("{dtype:?}").to_lowercase(),
                    shape.to_vec(),
                )
            })
            .collect()
    }

    /// One parameter (a copy), in the layout its ops read; a linear weight (which
    /// the CPU keeps packed) as its (N, K) rows.
    fn param<'py>(
        &self,
        py: Python<'py>,
        id: usize,
    ) -> PyResult<Bound<'py, numpy::PyArrayDyn<f32>>> {
        let ps = self.inner.params();
        if id >= ps.len() {
            return Err(VMambaError::new_err(format!(
                "no parameter {id} (there are {})",
                ps.len()
            )));
        }
        let shape = ps.table()[id].2.to_vec();
        ps.dense(id).into_owned().into_pyarray(py).reshape(shape)
    }

    /// Seconds per kind of op of one forward pass (see `VMamba::profile`).
    fn profile(
        &self,
        py: Python<'_>,
        x: PyReadonlyArray4<'_, f32>,
    ) -> PyResult<Vec<(String, f64)>> {
        let shape = shape4(&x)?;
        let data = x.as_slice()?;
        let times = detached(py, || self.inner.profile(data, shape))?;
        Ok(times.into_iter().map(|(k, s)| (k.to_string(), s)).collect())
    }

    /// Feature maps, each (B, C, H, W).
    fn features<'py>(
        &self,
        py: Python<'py>,
        x: PyReadonlyArray4<'py, f32>,
    ) -> PyResult<Vec<Bound<'py, PyArray4<f32>>>> {
        let shape = shape4(&x)?;
        let data = x.as_slice()?;
        let maps = detached(py, || self.inner.features(data, shape))?;
        maps.into_iter()
            .map(|m| m.data.into_pyarray(py).reshape(m.shape))
            .collect()
    }
}

/// Decode and preprocess an image file in Rust: float32 (3, S, S). For parity tests.
#[pyfunction]
fn preprocess_file<'py>(
    py: Python<'py>,
    path: std::path::PathBuf,
    preprocess_json: &str,
) -> PyResult<Bound<'py, numpy::PyArray3<f32>>> {
    let meta = std::collections::HashMap::from([(
        vmamba_rt::preprocess::META_PREPROCESS.to_string(),
        preprocess_json.to_string(),
    )]);
    let (pixels, s) = detached(py, || {
        let pre = vmamba_rt::preprocess::Preprocess::from_metadata(&meta)?;
        let img = vmamba_rt::preprocess::load_rgb(&path)?;
        Ok((pre.apply(&img)?, pre.input_size))
    })?;
    pixels.into_pyarray(py).reshape([3, s, s])
}

/// Refuse a pickle that nests deeper than `max_depth`, has more than `max_ops`
/// opcodes, misuses its memo or holds bytes after STOP (see `pickle_scan`).
/// Returns the number of opcodes.
#[pyfunction]
fn scan_pickle(py: Python<'_>, data: &[u8], max_depth: u32, max_ops: usize) -> PyResult<usize> {
    py.detach(|| {
        guarded(|| {
            pickle_scan::scan(data, max_depth, max_ops)
                .map_err(|r| VMambaError::new_err(format!("{} at byte {}", r.why, r.pos)))
        })
    })
}

/// Names and shapes of every tensor of an architecture (config as JSON).
#[pyfunction]
fn parameter_shapes(py: Python<'_>, config_json: &str) -> PyResult<Vec<(String, Vec<usize>)>> {
    detached(py, || {
        VMamba::parameter_shapes(&vmamba_rt::Config::from_json(config_json)?)
    })
}

/// The architecture (config JSON, before validation) of weights with these
/// (name, shape) pairs, from the names and shapes alone; `VMambaError` says why
/// it cannot be told.
#[pyfunction]
fn infer_config(tensors: Vec<(String, Vec<usize>)>) -> PyResult<String> {
    guarded(|| {
        vmamba_rt::model::infer_config(&tensors)
            .map(|cfg| cfg.to_string())
            .map_err(VMambaError::new_err)
    })
}

/// Refuse metadata entries over their size bounds, as a load does (the fixed
/// entries; the labels against `num_classes` when it is given), by name and
/// size: the Python readers check what they parse with the core's one rule.
#[pyfunction]
#[pyo3(signature = (entries, num_classes=None))]
fn check_metadata_sizes(
    entries: std::collections::HashMap<String, String>,
    num_classes: Option<usize>,
) -> PyResult<()> {
    vmamba_rt::format::check_entry_sizes(&entries).map_err(to_py)?;
    if let Some(n) = num_classes {
        vmamba_rt::format::check_labels_size(&entries, n).map_err(to_py)?;
    }
    Ok(())
}

/// A config (JSON) checked against every range the runtime enforces, in canonical form.
#[pyfunction]
fn normalize_config(config_json: &str) -> PyResult<String> {
    guarded(|| {
        vmamba_rt::Config::from_json(config_json)
            .map(|c| c.to_json())
            .map_err(to_py)
    })
}

/// What the CPU engine runs on this CPU: {"kernels": str, "bf16_instructions": [str]}.
#[pyfunction]
fn cpu_info(py: Python<'_>) -> PyResult<Bound<'_, PyDict>> {
    let info = vmamba_rt::cpu_info();
    let d = PyDict::new(py);
    d.set_item("kernels", info.kernels)?;
    d.set_item("bf16_instructions", info.bf16_instructions)?;
    d.set_item("bf16_kernel", info.bf16_kernel)?;
    Ok(d)
}

/// Load a weights file and build the model, raising VMambaError on any mismatch.
#[pyfunction]
fn check_weights(py: Python<'_>, path: std::path::PathBuf) -> PyResult<()> {
    detached(py, || VMamba::load(&path)).map(|_| ())
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_function(wrap_pyfunction!(check_weights, m)?)?;
    m.add_function(wrap_pyfunction!(cpu_info, m)?)?;
    m.add_function(wrap_pyfunction!(parameter_shapes, m)?)?;
    m.add_function(wrap_pyfunction!(infer_config, m)?)?;
    m.add_function(wrap_pyfunction!(preprocess_file, m)?)?;
    m.add_function(wrap_pyfunction!(scan_pickle, m)?)?;
    m.add_function(wrap_pyfunction!(normalize_config, m)?)?;
    m.add_function(wrap_pyfunction!(check_metadata_sizes, m)?)?;
    m.add("VMambaError", m.py().get_type::<VMambaError>())?;
    let format = PyDict::new(m.py());
    format.set_item("version", vmamba_rt::format::FORMAT_VERSION)?;
    for (short, key) in vmamba_rt::format::ENTRIES {
        format.set_item(short, key)?;
    }
    m.add("FORMAT", format)?;
    // The core's limits, for the Python checks that come before it.
    let limits = PyDict::new(m.py());
    use vmamba_rt::Config;
    limits.set_item("dims", Config::MAX_DIMS)?;
    limits.set_item("blocks", Config::MAX_DEPTH)?;
    limits.set_item("classes", Config::MAX_CLASSES)?;
    limits.set_item("stages", Config::MAX_STAGES)?;
    limits.set_item("d_state", Config::MAX_D_STATE)?;
    limits.set_item("conv", Config::MAX_CONV)?;
    limits.set_item("ratio", Config::MAX_RATIO)?;
    limits.set_item("in_chans", Config::MAX_IN_CHANS)?;
    limits.set_item("imgsize", Config::MAX_IMGSIZE)?;
    limits.set_item("input_size", vmamba_rt::preprocess::MAX_INPUT_SIZE)?;
    limits.set_item("max_pixels", vmamba_rt::preprocess::DEFAULT_MAX_PIXELS)?;
    limits.set_item("max_pixels_env", vmamba_rt::preprocess::MAX_PIXELS_ENV)?;
    m.add("LIMITS", limits)?;
    m.add(
        "IMAGE_FORMATS",
        vmamba_rt::preprocess::IMAGE_FORMATS.to_vec(),
    )?;
    // The plan's op schema: kind -> its fields (what an engine outside Rust implements).
    let kinds = PyDict::new(m.py());
    for (kind, fields) in vmamba_rt::plan::OP_KINDS {
        kinds.set_item(kind, fields.to_vec())?;
    }
    m.add("OP_KINDS", kinds)?;
    ops::register(m)?;
    Ok(())
}
