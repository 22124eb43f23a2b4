//! The parameters a plan's ops read, by id, in the layout they read them.

use super::DType;
use super::ParamId;
use crate::kernels::gemm::{PackedWeight, WeightType};
use crate::weights::Param;

/// What an op reads of one parameter ([`Op::param_needs`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParamNeed {
    /// A plain parameter of this many elements.
    Values(usize),
    /// A linear op's weight, (out, inp), packed for the GEMM.
    Linear {
        /// Rows of the weight: the op's output features.
        out: usize,
        /// Columns: its input features.
        inp: usize,
    },
}

/// The model's parameters, by id, each in the layout its op reads (conv weights
/// as (Cout, k*k*Cin) in im2col order, depthwise weights tap-major (k*k, C),
/// `A = -exp(A_logs)`, the weights of linear ops packed for the CPU's GEMM),
/// under the checkpoint name it came from. Every parameter is a copy: nothing
/// refers to the weights file once the model is built.
#[derive(Debug, Default)]
pub struct Params {
    names: Vec<String>,
    dtypes: Vec<DType>,
    slots: Vec<Slot>,
    /// How linear weights are stored as they are added.
    linear_type: WeightType,
}

#[derive(Debug)]
enum Slot {
    Dense(Param),
    /// A linear op's weight (N, K), packed (`kernels::gemm`); `shape` is the
    /// tensor's own (its rows may be split over leading dimensions).
    Packed {
        shape: Vec<usize>,
        w: PackedWeight,
    },
    /// Handed to another engine ([`Params::release`]): its shape alone is kept.
    Released {
        shape: Vec<usize>,
    },
}

impl Params {
    /// No parameters yet; linear weights will be stored as `linear_type`.
    pub fn new(linear_type: WeightType) -> Self {
        Params {
            linear_type,
            ..Params::default()
        }
    }

    /// Register a parameter.
    pub fn add(&mut self, name: &str, param: Param, dtype: DType) -> ParamId {
        self.push(name, dtype, Slot::Dense(param.into_owned()))
    }

    /// Register the weight of a linear op, read as (n, k): packed for the GEMM
    /// (in the tensor's own buffer when nothing else holds it), then stored as
    /// the linear type (one weight at a time: the f32 copies of all never exist
    /// at once).
    pub fn add_linear(&mut self, name: &str, param: Param, n: usize, k: usize) -> ParamId {
        let shape = param.shape().to_vec();
        let w = PackedWeight::from_vec(param.into_vec(), n, k).to_type(self.linear_type);
        self.push(name, DType::Act, Slot::Packed { shape, w })
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
            (Slot::Packed { w, .. }, ParamNeed::Linear { out, inp }) if w.shape() != (out, inp) => {
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
            (Slot::Packed { .. }, ParamNeed::Values(_)) => Err(format!(
                "parameter {name} is a linear weight, packed for the GEMM"
            )),
            (Slot::Released { .. }, _) => Err(format!("parameter {name} was released")),
            _ => Ok(()),
        }
    }

    /// The elements of a parameter that is not a linear weight.
    ///
    /// # Panics
    /// If `id` is a linear weight (read those with [`Params::packed`] or [`Params::dense`]).
    pub fn data(&self, id: ParamId) -> &[f32] {
        match &self.slots[id] {
            Slot::Dense(p) => p.data(),
            Slot::Packed { .. } => panic!("parameter {} is packed for the GEMM", self.names[id]),
            Slot::Released { .. } => panic!("parameter {} was released", self.names[id]),
        }
    }

    /// A linear op's packed weight.
    ///
    /// # Panics
    /// If `id` is not one.
    pub fn packed(&self, id: ParamId) -> &PackedWeight {
        match &self.slots[id] {
            Slot::Packed { w, .. } => w,
            Slot::Dense(_) | Slot::Released { .. } => {
                panic!("parameter {} is not a linear weight", self.names[id])
            }
        }
    }

    /// Any parameter's elements in its own shape, row-major (linear weights unpacked:
    /// for other engines, which lay them out their own way).
    pub fn dense(&self, id: ParamId) -> std::borrow::Cow<'_, [f32]> {
        match &self.slots[id] {
            Slot::Dense(p) => p.data().into(),
            Slot::Packed { w, .. } => w.unpack().into(),
            Slot::Released { .. } => panic!("parameter {} was released", self.names[id]),
        }
    }

    /// Let every parameter's values go, keeping names, dtypes and shapes (the
    /// plans need those alone): for a model whose weights another engine has
    /// taken (the CUDA engine uploads them, and the host copy would double the
    /// memory). Reading a value afterwards panics; [`Params::released`] says so first.
    pub fn release(&mut self) {
        for slot in &mut self.slots {
            let shape = match slot {
                Slot::Dense(p) => p.shape().to_vec(),
                Slot::Packed { shape, .. } | Slot::Released { shape } => std::mem::take(shape),
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

    /// How the linear weights are stored: re-rounds them to bf16, or widens
    /// them back to f32 (which does not restore what bf16 dropped).
    pub fn set_weight_type(&mut self, to: WeightType) {
        self.linear_type = to;
        self.slots = std::mem::take(&mut self.slots)
            .into_iter()
            .map(|slot| match slot {
                Slot::Packed { shape, w } => Slot::Packed {
                    shape,
                    w: w.to_type(to),
                },
                dense => dense,
            })
            .collect();
    }

    /// (name, dtype, shape) of every parameter, by id.
    pub fn table(&self) -> Vec<(&str, DType, &[usize])> {
        (0..self.names.len())
            .map(|i| {
                let shape = match &self.slots[i] {
                    Slot::Dense(p) => p.shape(),
                    Slot::Packed { shape, .. } | Slot::Released { shape } => shape,
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
