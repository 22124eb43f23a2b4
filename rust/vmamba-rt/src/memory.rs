//! Memory requests that are refused instead of aborting the process.
//!
//! Rust aborts when an allocation fails, and Linux kills a process that touches
//! more memory than the machine has. So every request whose size comes from the
//! outside (a weights file, an input shape, a config) is checked here first: it
//! must fit in the memory the OS reports as available, under the optional cap
//! `VMAMBA_RT_MAX_MEMORY`, and in the address space (a reservation that is
//! released at once, so an `RLIMIT_AS` limit is honoured).

use crate::error::{Error, Result};

/// Environment variable capping any one request, in bytes (suffixes K, M, G allowed).
pub const MAX_MEMORY_ENV: &str = "VMAMBA_RT_MAX_MEMORY";

/// The cap set by [`MAX_MEMORY_ENV`], if any.
pub fn configured_cap() -> Result<Option<u64>> {
    let Ok(text) = std::env::var(MAX_MEMORY_ENV) else {
        return Ok(None);
    };
    let t = text.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&t[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&t[..i], 1 << 30),
        _ => (t, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .map(Some)
        .ok_or_else(|| {
            Error::Usage(format!(
                "{MAX_MEMORY_ENV}={text:?} is not a size in bytes (e.g. 4000000000 or 4G)"
            ))
        })
}

/// Memory the OS can hand out without swapping (Linux `MemAvailable`), if known.
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// Refuse a request of `bytes` that cannot be met; `what` says what it is for.
pub fn ensure(bytes: u64, what: impl FnOnce() -> String) -> Result<()> {
    let refuse = |limit: String, what: String| {
        Err(Error::OutOfMemory(format!(
            "{what} needs {:.1} MB, {limit}",
            bytes as f64 / 1e6
        )))
    };
    if let Some(cap) = configured_cap()? {
        if bytes > cap {
            return refuse(
                format!("over the {MAX_MEMORY_ENV} limit of {cap} bytes"),
                what(),
            );
        }
    }
    if let Some(free) = available() {
        if bytes > free {
            return refuse(
                format!("more than the {:.1} MB available", free as f64 / 1e6),
                what(),
            );
        }
    }
    let Ok(n) = usize::try_from(bytes) else {
        return refuse("more than this machine can address".into(), what());
    };
    // Reserve (untouched pages cost nothing) and release: fails under RLIMIT_AS.
    if Vec::<u8>::new().try_reserve_exact(n).is_err() {
        return refuse("more than the process may allocate".into(), what());
    }
    Ok(())
}

/// Elements in a tensor of shape `dims`; None where the count overflows usize.
pub fn elements(dims: &[usize]) -> Option<usize> {
    dims.iter().try_fold(1usize, |n, &d| n.checked_mul(d))
}

/// Elements from a buffer's start to the end of the last of `rows` rows of
/// `width` elements, the first at `offset`, `stride` apart (0 without rows);
/// None where that overflows usize.
pub fn extent(rows: usize, stride: usize, offset: usize, width: usize) -> Option<usize> {
    if rows == 0 {
        return Some(0);
    }
    (rows - 1)
        .checked_mul(stride)?
        .checked_add(offset)?
        .checked_add(width)
}

/// An empty vector with room for `len` elements, checked by [`ensure`] first;
/// [`Error::OutOfMemory`] if either refuses.
pub fn reserve<T>(len: usize, what: impl Fn() -> String) -> Result<Vec<T>> {
    let bytes = (len as u64).saturating_mul(std::mem::size_of::<T>() as u64);
    ensure(bytes, &what)?;
    let mut v = Vec::new();
    v.try_reserve_exact(len)
        .map_err(|_| Error::OutOfMemory(format!("{} could not be allocated", what())))?;
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absurd_requests_are_refused_not_aborted() {
        let err = ensure(u64::MAX / 2, || "a test buffer".into()).unwrap_err();
        assert!(matches!(err, Error::OutOfMemory(_)), "{err}");
        assert!(err.to_string().contains("a test buffer"), "{err}");
        assert!(reserve::<f32>(usize::MAX / 8, || "x".into()).is_err());
        assert!(reserve::<f32>(3, || "x".into()).unwrap().capacity() >= 3);
    }

    #[test]
    fn sizes_that_overflow_are_none() {
        assert_eq!(elements(&[2, 3, 4]), Some(24));
        assert_eq!(elements(&[]), Some(1));
        assert_eq!(elements(&[1 << 32, 1 << 32]), None);
        assert_eq!(extent(3, 10, 4, 2), Some(26));
        assert_eq!(extent(0, usize::MAX, 9, 9), Some(0));
        assert_eq!(extent((1 << 63) + 1, 2, 0, 2), None); // (rows - 1) * 2 wraps to 0
        assert_eq!(extent(2, usize::MAX - 1, 0, 2), None);
    }
}
