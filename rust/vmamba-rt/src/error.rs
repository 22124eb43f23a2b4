//! The one error type of the crate. Every message names what was wrong and where,
//! so a user can act on it without reading the source.

use std::path::PathBuf;

/// Everything that can go wrong while loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file.
    #[error("{path}: not a valid safetensors file: {reason}")]
    Format {
        /// The file (or `<bytes>`).
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The architecture description is missing or inconsistent.
    #[error("invalid model config: {0}")]
    Config(String),
    /// A tensor the architecture needs is not in the file.
    #[error("weights are missing tensor '{0}'")]
    MissingTensor(String),
    /// The file holds a tensor the architecture does not use.
    #[error("weights hold unexpected tensor '{0}' (not part of this architecture)")]
    UnexpectedTensor(String),
    /// A tensor has another shape than the architecture needs.
    #[error("tensor '{name}' has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        /// The tensor.
        name: String,
        /// The shape the architecture needs.
        expected: Vec<usize>,
        /// The shape in the file.
        found: Vec<usize>,
    },
    /// A tensor is stored in a dtype the runtime does not read.
    #[error("tensor '{name}' has dtype {dtype}; converted weights must be F32")]
    Dtype {
        /// The tensor.
        name: String,
        /// Its dtype in the file.
        dtype: String,
    },
    /// The input batch does not fit the model.
    #[error("bad input: {0}")]
    Input(String),
    /// The call needs a classifier head but the model is a backbone (or the reverse),
    /// or an argument is out of range.
    #[error("{0}")]
    Usage(String),
    /// A request needs more memory than is available (or than the set limit):
    /// refused before allocating, so the process lives on.
    #[error("not enough memory: {0}")]
    OutOfMemory(String),
    /// An error in a named file (the file's path comes first in the message).
    #[error("{path}: {source}")]
    InFile {
        /// The file.
        path: String,
        /// What was wrong with it.
        #[source]
        source: Box<Error>,
    },
}

impl Error {
    /// This error, said of `path` (unless it already names a file).
    pub fn in_file(self, path: &std::path::Path) -> Self {
        match self {
            e @ (Error::Io { .. } | Error::Format { .. } | Error::InFile { .. }) => e,
            e => Error::InFile {
                path: path.display().to_string(),
                source: Box::new(e),
            },
        }
    }

    /// The innermost error (through [`Error::InFile`]).
    pub fn root(&self) -> &Error {
        match self {
            Error::InFile { source, .. } => source.root(),
            e => e,
        }
    }
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
