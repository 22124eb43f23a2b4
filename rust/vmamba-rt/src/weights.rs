//! Converted weights: a safetensors file whose header metadata carries the
//! architecture. The header is read at open, each tensor from the file when it
//! is asked for, into memory of its own (so a model being built never holds the
//! file's bytes besides its own copy); on request the file is memory-mapped
//! instead, each tensor copied out and its pages let go. Bytes already in
//! memory (`from_bytes`) lend their tensors in place when they allow it (F32,
//! 4-byte aligned). Every lookup checks the name and the shape.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result};

pub use crate::format::META_CONFIG;

/// Where a weights file's tensors are read from.
enum Storage {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
    /// The open file: each tensor is read when asked for.
    File {
        file: Mutex<std::fs::File>,
        path: PathBuf,
    },
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Storage::Mapped(m) => write!(f, "<{} bytes mapped>", m.len()),
            Storage::Owned(v) => write!(f, "<{} bytes in memory>", v.len()),
            Storage::File { path, .. } => write!(f, "<{}, read by tensor>", path.display()),
        }
    }
}

impl Storage {
    /// The file's bytes, where they are in memory.
    fn bytes(&self) -> &[u8] {
        match self {
            Storage::Mapped(m) => m,
            Storage::Owned(v) => v,
            Storage::File { .. } => &[],
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
    /// Open a safetensors file and read its header; each tensor is read from
    /// the file when asked for, into memory of its own. A model built from it
    /// owns its weights: later changes to the file cannot affect it, and at no
    /// time does it hold the file's bytes besides its own copy. A file cut short
    /// after the header was read fails the read of a tensor with a typed error.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        use std::io::Read;
        let path = path.as_ref();
        let mut file = open_regular(path)?;
        let file_len = file.metadata().map_err(|e| io_error(path, e))?.len();
        let format = |reason: &str| Error::Format {
            path: path.display().to_string(),
            reason: reason.to_string(),
        };
        let mut n = [0u8; 8];
        file.read_exact(&mut n)
            .map_err(|_| format("shorter than a safetensors header"))?;
        // The header's size is checked against the file's before it is allocated.
        let n = u64::from_le_bytes(n);
        // (Saturating: the file may have grown since its size was read.)
        if n > MAX_HEADER || n > file_len.saturating_sub(8) {
            return Err(format(&format!(
                "header of {n} bytes in a file of {file_len}"
            )));
        }
        let mut header = vec![0u8; n as usize];
        file.read_exact(&mut header)
            .map_err(|e| io_error(path, e))?;
        // Parsing validates the offsets: in order, contiguous, each the size of its tensor.
        let meta: safetensors::tensor::Metadata =
            serde_json::from_slice(&header).map_err(|e| format(&e.to_string()))?;
        let data_start = 8 + n as usize;
        if (data_start as u64).checked_add(meta.data_len() as u64) != Some(file_len) {
            return Err(format(&format!(
                "the header describes {} bytes of tensors, the file holds {}",
                meta.data_len(),
                file_len.saturating_sub(data_start as u64)
            )));
        }
        let entries = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let entry = Entry {
                    dtype: info.dtype,
                    shape: info.shape.clone(),
                    start: data_start + info.data_offsets.0,
                };
                (name, entry)
            })
            .collect();
        let storage = Storage::File {
            file: Mutex::new(file),
            path: path.to_path_buf(),
        };
        Ok(Weights {
            synthetic: None,
            file: Arc::new(storage),
            entries,
            metadata: meta.metadata().clone().unwrap_or_default(),
            used: Mutex::new(BTreeMap::new()),
        })
    }

    /// Memory-map a safetensors file: pages are read only when a tensor is
    /// asked for, copied into memory of its own, and let go (on Unix).
    ///
    /// Whoever changes the file meanwhile changes the tensors read after, and
    /// truncating it makes the next read die with SIGBUS: use this only for
    /// files nobody rewrites. (A model copies what it keeps, so the risk ends
    /// when its load does.)
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
        let Some(size) = element_size(e.dtype) else {
            return Err(Error::Dtype {
                name: name.into(),
                dtype: format!("{:?}", e.dtype),
            });
        };
        let len: usize = shape.iter().product();
        let owned = |data: Vec<f32>| ParamData::Owned(Arc::new(data));
        let data = match &*self.file {
            Storage::File { file, path } => owned(read_tensor(file, path, name, e, len)?),
            Storage::Mapped(map) => {
                // A model copies what it keeps: copied here, the tensor's pages can
                // go at once, and a mapped load does not hold the file besides the
                // model. (Let go a megabyte at a time instead, the load peaked
                // higher: 120 MB against 105 for a 92 MB file.)
                let bytes = &map[e.start..][..len * size];
                let data = widened(e.dtype, bytes).collect();
                release(map, e.start, bytes.len());
                owned(data)
            }
            // Bytes in memory already: f32 lent in place where aligned.
            Storage::Owned(all) => {
                let bytes = &all[e.start..][..len * size];
                if e.dtype == Dtype::F32
                    && cfg!(target_endian = "little")
                    && (bytes.as_ptr() as usize).is_multiple_of(4)
                {
                    ParamData::InFile {
                        file: self.file.clone(),
                        start: e.start,
                        len,
                    }
                } else {
                    owned(widened(e.dtype, bytes).collect())
                }
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

/// Let the pages of `map` that hold `start..start + len` go from this process's
/// memory (a hint: where it is refused, they stay).
fn release(map: &memmap2::Mmap, start: usize, len: usize) {
    #[cfg(unix)]
    // SAFETY: the map is a read-only shared mapping of a file: pages dropped from
    // it are read again from the file if touched, so whatever still borrows
    // them sees the same bytes (for a file nobody rewrites, as open_mmap asks).
    let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, len) };
    #[cfg(not(unix))]
    let _ = (map, start, len);
}

/// The largest header read, as the safetensors crate allows.
const MAX_HEADER: u64 = 100_000_000;

/// Bytes per element of the types a model reads; None for any other.
fn element_size(dtype: Dtype) -> Option<usize> {
    match dtype {
        Dtype::F32 => Some(4),
        Dtype::F16 | Dtype::BF16 => Some(2),
        _ => None,
    }
}

/// The little-endian elements in `bytes` of a tensor of `dtype` (one
/// [`element_size`] knows), as f32.
fn widened(dtype: Dtype, bytes: &[u8]) -> impl Iterator<Item = f32> + '_ {
    let size = element_size(dtype).expect("a type the model reads");
    bytes.chunks_exact(size).map(move |b| match dtype {
        Dtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        Dtype::F16 => f16_to_f32(u16::from_le_bytes([b[0], b[1]])),
        _ => f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16),
    })
}

/// Tensor `name` (`len` elements of a type [`element_size`] knows, at `e`)
/// read from the file and widened to f32.
fn read_tensor(
    file: &Mutex<std::fs::File>,
    path: &Path,
    name: &str,
    e: &Entry,
    len: usize,
) -> Result<Vec<f32>> {
    use std::io::{Read, Seek, SeekFrom};
    let what = || format!("tensor '{name}' of {}", path.display());
    let mut file = file.lock().unwrap_or_else(|p| p.into_inner());
    file.seek(SeekFrom::Start(e.start as u64))
        .map_err(|err| io_error(path, err))?;
    let mut read = |bytes: &mut [u8]| file.read_exact(bytes).map_err(|err| io_error(path, err));
    // The header's offsets were checked against the file's size: len fits in it.
    let mut data = crate::memory::reserve::<f32>(len, what)?;
    if e.dtype == Dtype::F32 && cfg!(target_endian = "little") {
        // Straight into place: no second copy.
        data.resize(len, 0.0);
        read(bytemuck::cast_slice_mut(&mut data))?;
    } else {
        let size = element_size(e.dtype).expect("checked by the caller");
        let mut raw = crate::memory::reserve::<u8>(len * size, what)?;
        raw.resize(len * size, 0);
        read(&mut raw)?;
        data.extend(widened(e.dtype, &raw));
    }
    Ok(data)
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

    /// A safetensors file in this test's own temporary folder.
    fn write_file(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("vmamba-rt-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn sample() -> Vec<u8> {
        use safetensors::tensor::TensorView;
        let a: Vec<u8> = [1.5f32, -2.0, 3.25, 0.0, 1e-3, -7.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let b: Vec<u8> = [0x3c00u16, 0xc000, 0x0001, 0x7bff]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let c: Vec<u8> = [0x3fc0u16, 0xbf80]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let tensors = [
            ("a", TensorView::new(Dtype::F32, vec![2, 3], &a).unwrap()),
            ("b", TensorView::new(Dtype::F16, vec![4], &b).unwrap()),
            ("c", TensorView::new(Dtype::BF16, vec![2], &c).unwrap()),
        ];
        let meta = HashMap::from([("k".to_string(), "v".to_string())]);
        safetensors::serialize(tensors, Some(meta)).unwrap()
    }

    /// Tensors read one by one from the file, or from its map, are those the
    /// whole file in memory gives, each in memory of its own; read again from
    /// the map (whose pages were let go), the same.
    #[test]
    fn reads_each_tensor_from_the_file() {
        let bytes = sample();
        let path = write_file("sample.safetensors", &bytes);
        let memory = Weights::from_bytes(bytes).unwrap();
        for file in [Weights::open(&path), Weights::open_mmap(&path)] {
            let file = file.unwrap();
            assert_eq!(file.metadata()["k"], "v");
            for (name, shape) in [("a", vec![2, 3]), ("b", vec![4]), ("c", vec![2])] {
                let want = memory.get(name, &shape).unwrap();
                for _ in 0..2 {
                    let got = file.get(name, &shape).unwrap();
                    assert!(!got.is_in_file());
                    assert_eq!(got.data(), want.data(), "{name}");
                }
            }
            assert_eq!(file.get("c", &[2]).unwrap().data(), [1.5, -1.0]);
            assert!(matches!(
                file.get("a", &[3, 2]),
                Err(Error::ShapeMismatch { .. })
            ));
            file.check_all_used().unwrap();
        }
        std::fs::remove_file(path).unwrap();
    }

    /// Files that are not what their header says are refused by name, before
    /// anything of their size is allocated; a file cut short after its header
    /// was read fails the read of the tensor it lost.
    #[test]
    fn refuses_files_that_do_not_hold_what_their_header_says() {
        let bytes = sample();
        let n = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let mut huge = bytes.clone();
        huge[..8].copy_from_slice(&(1u64 << 62).to_le_bytes());
        for (name, content) in [
            ("short.safetensors", &bytes[..5]),
            ("huge.safetensors", &huge[..]),
            ("cut.safetensors", &bytes[..bytes.len() - 1]),
            ("header.safetensors", &bytes[..n - 1]),
        ] {
            let path = write_file(name, content);
            match Weights::open(&path) {
                Err(Error::Format { path: p, .. }) => assert!(p.ends_with(name)),
                other => panic!("{name}: {other:?}"),
            }
            std::fs::remove_file(path).unwrap();
        }
        let path = write_file("shrinks.safetensors", &bytes);
        let w = Weights::open(&path).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(n as u64 + 4)
            .unwrap();
        match w.get("c", &[2]) {
            Err(Error::Io { path: p, .. }) => assert_eq!(p, path),
            other => panic!("{other:?}"),
        }
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn half_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
