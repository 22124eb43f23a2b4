//! Converted weights: a safetensors file whose header metadata carries the
//! architecture. The file is read into memory once (or, on request, memory-mapped);
//! tensors are borrowed in place when the bytes allow (F32, 4-byte aligned), and
//! every lookup checks the name and the shape.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::{Arc, Mutex};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

pub use crate::format::META_CONFIG;

/// Backing bytes of a weights file.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self {
            Storage::Mapped(_) => "mapped",
            Storage::Owned(_) => "in memory",
        };
        write!(f, "<{} bytes {kind}>", self.bytes().len())
    }
}

impl Storage {
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
        }
    }
}

/// A read-only f32 tensor, either a view into the file's bytes or an owned copy.
#[derive(Clone)]
pub struct Param {
    data: ParamData,
    shape: Vec<usize>,
}

#[derive(Clone)]
enum ParamData {
    InFile {
        file: Arc<Storage>,
        start: usize,
        len: usize,
    },
    Owned(Arc<Vec<f32>>),
}

impl std::fmt::Debug for Param {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.is_in_file() {
            "in file"
        } else {
            "owned"
        };
        write!(f, "Param({:?}, {place})", self.shape)
    }
}

impl Param {
    /// An owned tensor (used for weights the model re-lays out at load time).
    pub fn owned(data: Vec<f32>, shape: Vec<usize>) -> Self {
        debug_assert_eq!(data.len(), shape.iter().product::<usize>());
        Param {
            data: ParamData::Owned(Arc::new(data)),
            shape,
        }
    }

    /// Dimensions, outermost first.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The elements, row-major.
    pub fn data(&self) -> &[f32] {
        match &self.data {
            ParamData::InFile { file, start, len } => {
                // Checked at load time: in bounds, 4-byte aligned, F32 little-endian.
                bytemuck::cast_slice(&file.bytes()[*start..*start + *len * 4])
            }
            ParamData::Owned(v) => v,
        }
    }

    /// The same tensor, owning its elements (no longer holding the file's bytes).
    pub fn into_owned(self) -> Self {
        match self.data {
            ParamData::Owned(_) => self,
            ParamData::InFile { .. } => Param::owned(self.data().to_vec(), self.shape),
        }
    }

    /// The elements as a vector of their own: this tensor's, when nothing else holds it.
    pub fn into_vec(self) -> Vec<f32> {
        match self.data {
            ParamData::Owned(v) => Arc::try_unwrap(v).unwrap_or_else(|v| v.to_vec()),
            ParamData::InFile { .. } => self.data().to_vec(),
        }
    }

    /// True when the tensor is read in place from the file's bytes (no copy).
    pub fn is_in_file(&self) -> bool {
        matches!(self.data, ParamData::InFile { .. })
    }
}

#[derive(Debug)]
struct Entry {
    dtype: Dtype,
    shape: Vec<usize>,
    start: usize,
}

/// The tensors and metadata of one converted weights file, or a synthetic
/// source that makes up plausible random tensors of whatever shape is asked
/// (for benchmarks and tests in the released shapes without the real files).
#[derive(Debug)]
pub struct Weights {
    synthetic: Option<u64>,
    file: Arc<Storage>,
    entries: HashMap<String, Entry>,
    metadata: HashMap<String, String>,
    /// Every tensor handed out so far, with its shape.
    used: Mutex<BTreeMap<String, Vec<usize>>>,
}

impl Weights {
    /// Read a safetensors file into memory. The model then owns its weights:
    /// later changes to the file (rewritten, truncated) cannot affect it.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        use std::io::Read;
        let path = path.as_ref();
        let mut file = open_regular(path)?;
        let len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let mut bytes =
            crate::memory::reserve::<u8>(usize::try_from(len).unwrap_or(usize::MAX), || {
                format!("reading {}", path.display())
            })?;
        file.read_to_end(&mut bytes)
            .map_err(|e| io_error(path, e))?;
        Self::from_storage(Storage::Owned(bytes), &path.display().to_string())
    }

    /// Memory-map a safetensors file: no copy, and pages are read only when used.
    ///
    /// Tensors read from it borrow the map. Whoever changes the file meanwhile
    /// changes them, and truncating it makes the next read die with SIGBUS: use
    /// this only for files nobody rewrites. (A model copies what it keeps, so
    /// the risk ends when its load does.)
    pub fn open_mmap(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = open_regular(path)?;
        // SAFETY: the map is read-only; the caller promises (see above) that the file
        // is not truncated or rewritten while the model lives.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| io_error(path, e))?;
        Self::from_storage(Storage::Mapped(map), &path.display().to_string())
    }

    /// Read a safetensors file from memory (the bytes are kept).
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self> {
        Self::from_storage(Storage::Owned(bytes), "<bytes>")
    }

    fn from_storage(storage: Storage, origin: &str) -> Result<Self> {
        let bytes = storage.bytes();
        let format = |reason: String| Error::Format {
            path: origin.to_string(),
            reason,
        };
        let st = SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| format(e.to_string()))?;
        let base = bytes.as_ptr() as usize;
        let mut entries = HashMap::new();
        for (name, view) in st.tensors() {
            let start = view.data().as_ptr() as usize - base;
            entries.insert(
                name,
                Entry {
                    dtype: view.dtype(),
                    shape: view.shape().to_vec(),
                    start,
                },
            );
        }
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(Weights {
            synthetic: None,
            file: Arc::new(storage),
            entries,
            metadata,
            used: Mutex::new(BTreeMap::new()),
        })
    }

    /// A source of random weights (seeded) for any architecture: each lookup
    /// returns a fresh tensor of the requested shape, scaled like a trained model
    /// (unit norms, A_logs = log(1..N), small projections).
    pub fn synthetic(seed: u64) -> Self {
        Weights {
            synthetic: Some(seed),
            file: Arc::new(Storage::Owned(Vec::new())),
            entries: HashMap::new(),
            metadata: HashMap::new(),
            used: Mutex::new(BTreeMap::new()),
        }
    }

    fn make_up(seed: u64, name: &str, shape: &[usize]) -> Result<Param> {
        let what = || format!("tensor '{name}' of shape {shape:?}");
        let len = crate::memory::elements(shape).ok_or_else(|| Error::OutOfMemory(what()))?;
        let mut data = crate::memory::reserve::<f32>(len, what)?;
        let fan_in = shape.iter().skip(1).product::<usize>().max(1) as f32;
        let mut state = name.bytes().fold(seed ^ 0x9E37_79B9_7F4A_7C15, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        }) | 1;
        let mut uniform = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
        };
        let last = name.rsplit('.').next().unwrap_or(name);
        let is_norm = name.contains("norm");
        // The kind is decided once; the draws come in the same order as ever (seeded outputs stay put).
        let scale = (3.0 / fan_in).sqrt();
        match last {
            "A_logs" => data.extend((0..len).map(|i| ((i % shape[1]) as f32 + 1.0).ln())),
            "Ds" => data.resize(len, 1.0),
            "weight" if is_norm => data.resize(len, 1.0),
            "bias" if is_norm => data.resize(len, 0.0),
            "dt_projs_bias" => data.extend((0..len).map(|_| -4.0 + uniform())),
            _ => data.extend((0..len).map(|_| uniform() * scale)),
        }
        Ok(Param::owned(data, shape.to_vec()))
    }

    /// Header metadata (string to string).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Names of all tensors in the file.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    /// True when the file holds a tensor of that name.
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// The tensor `name` in whatever shape the file stores it.
    pub fn tensor(&self, name: &str) -> Result<Param> {
        let shape = match (&self.synthetic, self.entries.get(name)) {
            (None, Some(e)) => e.shape.clone(),
            _ => return Err(Error::MissingTensor(name.to_string())),
        };
        self.get(name, &shape)
    }

    /// The tensor `name`, which must have exactly `shape`.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Param> {
        if let Some(seed) = self.synthetic {
            self.used
                .lock()
                .expect("weights lock")
                .insert(name.to_string(), shape.to_vec());
            return Self::make_up(seed, name, shape);
        }
        let e = self
            .entries
            .get(name)
            .ok_or_else(|| Error::MissingTensor(name.to_string()))?;
        if e.shape != shape {
            return Err(Error::ShapeMismatch {
                name: name.into(),
                expected: shape.to_vec(),
                found: e.shape.clone(),
            });
        }
        self.used
            .lock()
            .expect("weights lock")
            .insert(name.to_string(), shape.to_vec());
        let len: usize = shape.iter().product();
        let bytes = &self.file.bytes()[e.start..];
        let data = match e.dtype {
            Dtype::F32
                if cfg!(target_endian = "little")
                    && (bytes.as_ptr() as usize).is_multiple_of(4) =>
            {
                ParamData::InFile {
                    file: self.file.clone(),
                    start: e.start,
                    len,
                }
            }
            Dtype::F32 => ParamData::Owned(Arc::new(
                bytes[..len * 4]
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )),
            Dtype::F16 => ParamData::Owned(Arc::new(
                bytes[..len * 2]
                    .chunks_exact(2)
                    .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                    .collect(),
            )),
            Dtype::BF16 => ParamData::Owned(Arc::new(
                bytes[..len * 2]
                    .chunks_exact(2)
                    .map(|b| f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16))
                    .collect(),
            )),
            other => {
                return Err(Error::Dtype {
                    name: name.into(),
                    dtype: format!("{other:?}"),
                })
            }
        };
        Ok(Param {
            data,
            shape: shape.to_vec(),
        })
    }

    /// Names and shapes of the tensors looked up so far, in name order.
    pub fn requested(&self) -> Vec<(String, Vec<usize>)> {
        self.used
            .lock()
            .expect("weights lock")
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Fail on the first tensor (in name order) that no lookup asked for.
    pub fn check_all_used(&self) -> Result<()> {
        let used = self.used.lock().expect("weights lock");
        let mut names: Vec<&String> = self.entries.keys().collect();
        names.sort();
        match names.into_iter().find(|n| !used.contains_key(*n)) {
            Some(n) => Err(Error::UnexpectedTensor(n.clone())),
            None => Ok(()),
        }
    }
}

fn io_error(path: &Path, source: std::io::Error) -> Error {
    Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Open a regular file for reading. Anything else is refused before it is
/// opened: a FIFO would block the open (and the read) forever.
pub(crate) fn open_regular(path: &Path) -> Result<std::fs::File> {
    let meta = std::fs::metadata(path).map_err(|e| io_error(path, e))?;
    if !meta.is_file() {
        return Err(io_error(
            path,
            std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file (a folder, FIFO or device)",
            ),
        ));
    }
    std::fs::File::open(path).map_err(|e| io_error(path, e))
}

/// IEEE half to single precision.
fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let man = (h & 0x3ff) as u32;
    let bits = match (exp, man) {
        (0, 0) => sign,
        (0, m) => {
            // Subnormal: value = m * 2^-24.
            let v = m as f32 * f32::from_bits(0x3380_0000);
            return if sign != 0 { -v } else { v };
        }
        (0x1f, m) => sign | 0x7f80_0000 | (m << 13),
        (e, m) => sign | ((e + 112) << 23) | (m << 13),
    };
    f32::from_bits(bits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
