//! The converted-weights file: a safetensors file whose header metadata holds
//! the entries below. This is their one definition; the Python package reads
//! the same names from the native module (`vmamba_rt._native.FORMAT`).

use std::collections::HashMap;

use crate::error::{Error, Result};

/// Version of the metadata layout that this runtime writes and reads.
pub const FORMAT_VERSION: u32 = 1;

/// The layout version (a decimal string).
pub const META_FORMAT: &str = "vmamba_rt.format";
/// The architecture, as the JSON form of [`crate::Config`].
pub const META_CONFIG: &str = "vmamba_rt.config";
/// Where the architecture came from: `embedded`, `given`, `preset NAME` or `inferred` (a guess).
pub const META_CONFIG_SOURCE: &str = "vmamba_rt.config_source";
/// Class names, a JSON list.
pub const META_LABELS: &str = "vmamba_rt.labels";
/// Preprocessing settings, a JSON object (see [`crate::preprocess::Preprocess`]).
pub const META_PREPROCESS: &str = "vmamba_rt.preprocess";
/// The checkpoint converted, `FILE:PART`.
pub const META_SOURCE: &str = "vmamba_rt.source";
/// The registry name, for downloaded models.
pub const META_NAME: &str = "vmamba_rt.name";

/// Every entry, by its short name (what the Python package reads).
pub const ENTRIES: [(&str, &str); 7] = [
    ("format", META_FORMAT),
    ("config", META_CONFIG),
    ("config_source", META_CONFIG_SOURCE),
    ("labels", META_LABELS),
    ("preprocess", META_PREPROCESS),
    ("source", META_SOURCE),
    ("name", META_NAME),
];

/// Refuse a file written in a layout this runtime does not know. Files without
/// the entry predate it and are read as version 1.
pub fn check_version(meta: &HashMap<String, String>) -> Result<()> {
    let Some(text) = meta.get(META_FORMAT) else {
        return Ok(());
    };
    match text.trim().parse::<u32>() {
        Ok(v) if (1..=FORMAT_VERSION).contains(&v) => Ok(()),
        Ok(v) if v > FORMAT_VERSION => Err(Error::Config(format!(
            "written in format {v} by a newer vmamba-rt; this one reads format {FORMAT_VERSION}: upgrade vmamba-rt"
        ))),
        _ => Err(Error::Config(format!(
            "'{META_FORMAT}' is {text:?}, not a format version"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        let meta = |v: &str| HashMap::from([(META_FORMAT.to_string(), v.to_string())]);
        assert!(check_version(&HashMap::new()).is_ok());
        assert!(check_version(&meta("1")).is_ok());
        let err = check_version(&meta("7")).unwrap_err().to_string();
        assert!(
            err.contains("newer vmamba-rt") && err.contains("format 7"),
            "{err}"
        );
        assert!(check_version(&meta("one")).is_err());
    }
}
