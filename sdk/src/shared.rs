//! Shared data: a key-value store shared by every VM of a plugin (Envoy runs one VM per worker
//! thread), with compare-and-swap.
//!
//! Each value carries a CAS token. Writing with `Some(cas)` succeeds only if the value is still
//! the one that token was read with; otherwise the write fails with [`Error::CasMismatch`].
//! [`update`] wraps the read-modify-write loop with a bounded number of retries.
//!
//! Caveat of the ABI: a key that does not exist yet has no CAS token, and a write without a
//! token is unconditional, so two VMs creating the same key at the same instant can both
//! succeed (last write wins). Create every key a filter updates at start-up, with
//! [`create_if_absent`] (e.g. in `HttpFilter::new`): from then on every [`update`] is a
//! compare-and-swap. An existing key always has a token, even when its value is empty.

use crate::error::Error;

/// A value read from shared data, with its CAS token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedValue {
    /// The stored bytes.
    pub value: Vec<u8>,
    /// The CAS token to pass back when writing.
    pub cas: u32,
}

/// The host's shared key-value store.
pub trait SharedData {
    /// Reads `key`; `None` if absent.
    fn get_shared_data(&self, key: &str) -> Result<Option<SharedValue>, Error>;
    /// Writes `key`. With `Some(cas)`, fails with [`Error::CasMismatch`] if the value changed
    /// since it was read with that token.
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Error>;
}

/// What an [`update`] step decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    /// Write this value (conditionally on the value read), then return `T`.
    Write(Vec<u8>, T),
    /// Do not write; return `T`.
    Keep(T),
}

/// Default number of attempts for [`update`].
pub const DEFAULT_CAS_ATTEMPTS: u32 = 8;

/// Creates `key` with `initial` unless it exists; returns whether it created it. Run at start-up,
/// before traffic, for every key the filter later updates: the ABI has no "create if absent", so
/// only a key that exists gets a CAS token and makes every later write conditional.
pub fn create_if_absent<S>(store: &S, key: &str, initial: &[u8]) -> Result<bool, Error>
where
    S: SharedData + ?Sized,
{
    if store.get_shared_data(key)?.is_some() {
        return Ok(false);
    }
    store.set_shared_data(key, initial, None)?;
    Ok(true)
}

/// Read-modify-write of `key` with compare-and-swap, retried up to `attempts` times when
/// another VM wins the race. `step` sees the current bytes (or `None`) and decides.
pub fn update<S, T, F>(store: &S, key: &str, attempts: u32, mut step: F) -> Result<T, Error>
where
    S: SharedData + ?Sized,
    F: FnMut(Option<&[u8]>) -> Update<T>,
{
    for _ in 0..attempts {
        let current = store.get_shared_data(key)?;
        let (bytes, cas) = match &current {
            Some(SharedValue { value, cas }) => (Some(value.as_slice()), Some(*cas)),
            None => (None, None),
        };
        match step(bytes) {
            Update::Keep(result) => return Ok(result),
            Update::Write(value, result) => match store.set_shared_data(key, &value, cas) {
                Ok(()) => return Ok(result),
                Err(Error::CasMismatch { .. }) => continue,
                Err(other) => return Err(other),
            },
        }
    }
    Err(Error::CasContention {
        key: key.to_string(),
        attempts,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MemoryHost;
    use std::cell::Cell;

    fn increment(current: Option<&[u8]>) -> Update<u64> {
        let value = current
            .and_then(|bytes| bytes.try_into().ok())
            .map_or(0, u64::from_le_bytes)
            + 1;
        Update::Write(value.to_le_bytes().to_vec(), value)
    }

    #[test]
    fn update_creates_then_increments() {
        let host = MemoryHost::new();
        assert_eq!(update(&host, "n", 3, increment), Ok(1));
        assert_eq!(update(&host, "n", 3, increment), Ok(2));
        let stored = host.get_shared_data("n").unwrap().unwrap();
        assert_eq!(stored.value, 2u64.to_le_bytes());
    }

    #[test]
    fn stale_cas_is_a_typed_mismatch() {
        let host = MemoryHost::new();
        host.set_shared_data("k", b"a", None).unwrap();
        let read = host.get_shared_data("k").unwrap().unwrap();
        host.set_shared_data("k", b"b", Some(read.cas)).unwrap();
        assert_eq!(
            host.set_shared_data("k", b"c", Some(read.cas)),
            Err(Error::CasMismatch { key: "k".into() })
        );
        assert_eq!(host.get_shared_data("k").unwrap().unwrap().value, b"b");
    }

    #[test]
    fn update_retries_after_losing_a_race_then_gives_up() {
        let host = MemoryHost::new();
        host.set_shared_data("k", b"0", None).unwrap();
        // A competing writer changes the value between our read and our write, twice.
        let races = Cell::new(2);
        let result = update(&host, "k", 5, |current| {
            if races.get() > 0 {
                races.set(races.get() - 1);
                host.set_shared_data("k", b"other", None).unwrap();
            }
            Update::Write(b"mine".to_vec(), current.map(<[u8]>::to_vec))
        });
        assert_eq!(result, Ok(Some(b"other".to_vec())));
        assert_eq!(host.get_shared_data("k").unwrap().unwrap().value, b"mine");

        let always_racing = update(&host, "k", 3, |_| {
            host.set_shared_data("k", b"other", None).unwrap();
            Update::Write(b"mine".to_vec(), ())
        });
        assert_eq!(
            always_racing,
            Err(Error::CasContention {
                key: "k".into(),
                attempts: 3
            })
        );
    }

    #[test]
    fn create_if_absent_creates_once_and_keeps_what_exists() {
        let host = MemoryHost::new();
        assert_eq!(create_if_absent(&host, "k", b""), Ok(true));
        let created = host.get_shared_data("k").unwrap().unwrap();
        assert_eq!(created.value, b"");
        assert_ne!(created.cas, 0, "an existing empty value has a token");
        host.set_shared_data("k", b"x", Some(created.cas)).unwrap();
        assert_eq!(create_if_absent(&host, "k", b""), Ok(false));
        assert_eq!(host.get_shared_data("k").unwrap().unwrap().value, b"x");
    }

    #[test]
    fn update_of_an_existing_empty_value_is_conditional() {
        let host = MemoryHost::new();
        create_if_absent(&host, "k", b"").unwrap();
        // Another writer wins between our read and our write: we must retry, not overwrite.
        let raced = Cell::new(false);
        let seen = update(&host, "k", 3, |current| {
            if !raced.replace(true) {
                host.set_shared_data("k", b"other", None).unwrap();
            }
            Update::Write(b"mine".to_vec(), current.map(<[u8]>::to_vec))
        });
        assert_eq!(seen, Ok(Some(b"other".to_vec())));
    }

    #[test]
    fn keep_does_not_write() {
        let host = MemoryHost::new();
        assert_eq!(update(&host, "absent", 1, |_| Update::Keep(7)), Ok(7));
        assert_eq!(host.get_shared_data("absent"), Ok(None));
    }
}
