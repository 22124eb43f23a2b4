//! The parameters a plan's ops read, by id, in the layout they read them.
//! Linear weights are kept as the engine that will run them asks
//! ([`LinearWeight`]): nothing here knows an engine's layout.

use std::any::Any;

use super::DType;
use super::ParamId;
use crate::weights::Param;

/// What an op reads of one parameter ([`Op::param_needs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamNeed {
    /// A plain parameter of this many elements.
    Values(usize),
    /// A linear op's weight, (out, inp), in its engine's layout.
    Linear {
        /// Rows of the weight: the op's output features.
        out: usize,
        /// Columns: its input features.
        inp: usize,
    },
}

/// A linear op's weight (out, inp) as an engine keeps it (the CPU engine:
/// packed for its GEMM, f32 or bf16). Made from the dense weight as each is
/// loaded ([`Params::with_linear`]), so the dense copies of all never exist at once.
pub trait LinearWeight: std::fmt::Debug + Send + Sync {
    /// (out, inp).
    fn shape(&self) -> (usize, usize);
    /// The weight, row-major (out, inp): for engines that lay it out their own way.
    fn dense(&self) -> Vec<f32>;
    /// The engine's own type, to read it back.
    fn as_any(&self) -> &dyn Any;
    /// The same, by value (to re-lay it out).
    fn into_any(self: Box<Self>) -> Box<dyn Any>;
}

/// How linear weights are kept as they are added: (row-major values, out, inp)
/// to an engine's form.
pub type PrepareLinear = Box<dyn Fn(Vec<f32>, usize, usize) -> Box<dyn LinearWeight> + Send + Sync>;

/// A linear weight kept as it was loaded, for an engine outside the process's
/// CPU (the CUDA engine reads and uploads it; then the model lets it go).
#[derive(Debug)]
pub struct DenseLinear {
    w: Vec<f32>,
    out: usize,
    inp: usize,
}

impl LinearWeight for DenseLinear {
    fn shape(&self) -> (usize, usize) {
        (self.out, self.inp)
    }
    fn dense(&self) -> Vec<f32> {
        self.w.clone()
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self
    }
}

/// The model's parameters, by id, each in the layout its op reads (conv weights
/// as (Cout, k*k*Cin) in im2col order, depthwise weights tap-major (k*k, C),
/// `A = -exp(A_logs)`, the weights of linear ops as their engine keeps them),
/// under the checkpoint name it came from. Every parameter is a copy: nothing
/// refers to the weights file once the model is built.
#[derive(Default)]
pub struct Params {
    names: Vec<String>,
    dtypes: Vec<DType>,
    slots: Vec<Slot>,
    /// How linear weights are kept as they are added (None: dense).
    prepare: Option<PrepareLinear>,
}

impl std::fmt::Debug for Params {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Params")
            .field("names", &self.names)
            .field("slots", &self.slots)
            .field("prepared", &self.prepare.is_some())
            .finish()
    }
}

#[derive(Debug)]
enum Slot {
    Dense(Param),
    /// A linear op's weight (N, K) as its engine keeps it; `shape` is the
    /// tensor's own (its rows may be split over leading dimensions).
    Linear {
        shape: Vec<usize>,
        w: Box<dyn LinearWeight>,
    },
    /// Handed to another engine ([`Params::release`]): its shape alone is kept.
    Released {
        shape: Vec<usize>,
    },
}

impl Params {
    /// No parameters yet; linear weights will be kept dense.
    pub fn new() -> Self {
        Params::default()
    }

    /// No parameters yet; linear weights will be kept as `prepare` makes them.
    pub fn with_linear(prepare: PrepareLinear) -> Self {
        Params {
            prepare: Some(prepare),
            ..Params::default()
        }
    }

    /// Register a parameter.
    pub fn add(&mut self, name: &str, param: Param, dtype: DType) -> ParamId {
        self.push(name, dtype, Slot::Dense(param.into_owned()))
    }

    /// Register the weight of a linear op, read as (n, k), in its engine's form
    /// (made from the tensor's own buffer when nothing else holds it).
    pub fn add_linear(&mut self, name: &str, param: Param, n: usize, k: usize) -> ParamId {
        let shape = param.shape().to_vec();
        let values = param.into_vec();
        let w = match &self.prepare {
            Some(prepare) => prepare(values, n, k),
            None => Box::new(DenseLinear {
                w: values,
                out: n,
                inp: k,
            }),
        };
        self.push(name, DType::Act, Slot::Linear { shape, w })
    }

    fn push(&mut self, name: &str, dtype: DType, slot: Slot) -> ParamId {
        self.names.push(name.to_string());
        self.dtypes.push(dtype);
        self.slots.push(slot);
        self.slots.len() - 1
    }

    /// Whether parameter `id` exists and is what an op needs of it; the error
    /// names the parameter.
    pub fn check(&self, id: ParamId, need: ParamNeed) -> std::result::Result<(), String> {
        let Some(slot) = self.slots.get(id) else {
            return Err(format!(
                "parameter {id} does not exist ({} are loaded)",
                self.slots.len()
            ));
        };
        let name = &self.names[id];
        match (slot, need) {
            (Slot::Linear { w, .. }, ParamNeed::Linear { out, inp }) if w.shape() != (out, inp) => {
                let (n, k) = w.shape();
                Err(format!("linear weight {name} is {n}x{k}, not {out}x{inp}"))
            }
            (Slot::Dense(p), ParamNeed::Values(n)) if p.data().len() != n => Err(format!(
                "parameter {name} holds {} values, not {n}",
                p.data().len()
            )),
            (Slot::Dense(_), ParamNeed::Linear { .. }) => {
                Err(format!("parameter {name} is not a linear weight"))
            }
            (Slot::Linear { .. }, ParamNeed::Values(_)) => Err(format!(
                "parameter {name} is a linear weight, in its engine's layout"
            )),
            (Slot::Released { .. }, _) => Err(format!("parameter {name} was released")),
            _ => Ok(()),
        }
    }

    /// The elements of a parameter that is not a linear weight.
    ///
    /// # Panics
    /// If `id` is a linear weight (read those with [`Params::linear`] or [`Params::dense`]).
    pub fn data(&self, id: ParamId) -> &[f32] {
        match &self.slots[id] {
            Slot::Dense(p) => p.data(),
            Slot::Linear { .. } => panic!("parameter {} is a linear weight", self.names[id]),
            Slot::Released { .. } => panic!("parameter {} was released", self.names[id]),
        }
    }

    /// A linear op's weight, as its engine keeps it.
    ///
    /// # Panics
    /// If `id` is not one.
    pub fn linear(&self, id: ParamId) -> &dyn LinearWeight {
        match &self.slots[id] {
            Slot::Linear { w, .. } => w.as_ref(),
            Slot::Dense(_) | Slot::Released { .. } => {
                panic!("parameter {} is not a linear weight", self.names[id])
            }
        }
    }

    /// Any parameter's elements in its own shape, row-major (linear weights in
    /// their dense form: for other engines, which lay them out their own way).
    pub fn dense(&self, id: ParamId) -> std::borrow::Cow<'_, [f32]> {
        match &self.slots[id] {
            Slot::Dense(p) => p.data().into(),
            Slot::Linear { w, .. } => w.dense().into(),
            Slot::Released { .. } => panic!("parameter {} was released", self.names[id]),
        }
    }

    /// Every linear weight, as its engine keeps it.
    pub fn linear_weights(&self) -> impl Iterator<Item = &dyn LinearWeight> {
        self.slots.iter().filter_map(|s| match s {
            Slot::Linear { w, .. } => Some(w.as_ref()),
            _ => None,
        })
    }

    /// Re-make every linear weight with `f` (an engine changing its layout).
    pub fn map_linear(&mut self, f: impl Fn(Box<dyn LinearWeight>) -> Box<dyn LinearWeight>) {
        self.slots = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|slot| match slot {
                Slot::Linear { shape, w } => Slot::Linear { shape, w: f(w) },
                other => other,
            })
            .collect();
    }

    /// Let every parameter's values go, keeping names, dtypes and shapes (the
    /// plans need those alone): for a model whose weights another engine has
    /// taken (the CUDA engine uploads them, and the host copy would double the
    /// memory). Reading a value afterwards panics; [`Params::released`] says so first.
    pub fn release(&mut self) {
        for slot in &mut self.slots {
            let shape = match slot {
                Slot::Dense(p) => p.shape().to_vec(),
                Slot::Linear { shape, .. } | Slot::Released { shape } => std::mem::take(shape),
            };
            *slot = Slot::Released { shape };
        }
    }

    /// True once [`Params::release`] has let the values go.
    pub fn released(&self) -> bool {
        self.slots
            .iter()
            .any(|s| matches!(s, Slot::Released { .. }))
    }

    /// (name, dtype, shape) of every parameter, by id.
    pub fn table(&self) -> Vec<(&str, DType, &[usize])> {
        (0..self.names.len())
            .map(|i| {
                let shape = match &self.slots[i] {
                    Slot::Dense(p) => p.shape(),
                    Slot::Linear { shape, .. } | Slot::Released { shape } => shape,
                };
                (self.names[i].as_str(), self.dtypes[i], shape)
            })
            .collect()
    }

    /// Number of parameters.
    pub fn len(&self) -> usize {
        self.slots.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}
