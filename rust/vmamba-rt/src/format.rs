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

/// Most bytes each fixed entry may hold: real ones hold a few hundred, and a
/// header of up to 100 MB must not turn into gigabytes of parsed values or into
/// an error message that quotes it.
pub const MAX_ENTRY_BYTES: [(&str, usize); 5] = [
    (META_FORMAT, 16),
    (META_CONFIG, 1 << 16),
    (META_PREPROCESS, 4096),
    (META_SOURCE, 4096),
    (META_NAME, 256),
];
/// Most bytes the labels entry may hold per class (a JSON string and its comma).
pub const MAX_LABEL_BYTES: usize = 1024;

/// Refuse an entry larger than its bound, by name and size (its value is never quoted).
pub fn check_entry_sizes(meta: &HashMap<String, String>) -> Result<()> {
    for (key, max) in MAX_ENTRY_BYTES {
        check_size(meta, key, max)?;
    }
    Ok(())
}

/// Refuse a labels entry larger than `num_classes` names can need.
pub fn check_labels_size(meta: &HashMap<String, String>, num_classes: usize) -> Result<()> {
    check_size(
        meta,
        META_LABELS,
        num_classes
            .saturating_mul(MAX_LABEL_BYTES)
            .saturating_add(64),
    )
}

fn check_size(meta: &HashMap<String, String>, key: &str, max: usize) -> Result<()> {
    match meta.get(key) {
        Some(text) if text.len() > max => Err(Error::Config(format!(
            "metadata entry '{key}' holds {} bytes, over its limit of {max}",
            text.len()
        ))),
        _ => Ok(()),
    }
}

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
            "'{META_FORMAT}' is {:?}, not a format version",
            text.chars().take(16).collect::<String>()
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

    #[test]
    fn oversized_entries_are_refused_without_quoting_them() {
        let big = "7".repeat(5000);
        let meta = HashMap::from([(META_PREPROCESS.to_string(), big.clone())]);
        let err = check_entry_sizes(&meta).unwrap_err().to_string();
        assert!(
            err.contains("'vmamba_rt.preprocess' holds 5000 bytes"),
            "{err}"
        );
        assert!(!err.contains("7777"), "{err}");
        let labels = HashMap::from([(META_LABELS.to_string(), big)]);
        assert!(check_labels_size(&labels, 5).is_ok());
        assert!(check_labels_size(&labels, 4).is_err());
        assert!(check_entry_sizes(&labels).is_ok());
    }
}
