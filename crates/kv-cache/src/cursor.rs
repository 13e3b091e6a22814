//! [`CacheCursor`]: the length bookkeeping of a preallocated cache, and
//! [`with_rollback`]: the one place the rule "an error leaves the cache untouched" is
//! kept. Both backends' caches hold a cursor; their forward passes run under
//! `with_rollback`.

use std::ops::Range;

use crate::{CacheError, KvCache};

/// Positions a cache that grows on demand allocates first (both backends' caches): a
/// prompt and a few hundred tokens fit before the first growth.
pub const INITIAL_POSITIONS: usize = 256;

/// How many positions a preallocated cache holds (`len`) out of how many it can
/// (`capacity`). Positions `len..capacity` may hold stale rows; nothing reads them.
///
/// Appending is two steps, so a failing write never moves the length:
/// [`reserve`](Self::reserve) the positions (checked against the capacity, never
/// wrapping around), write them, then [`commit`](Self::commit).
///
/// ```
/// use perpetua_kv_cache::{CacheCursor, CacheError};
///
/// let mut cursor = CacheCursor::new(8);
/// let at = cursor.reserve(3)?;
/// assert_eq!(at, 0..3);
/// cursor.commit(3)?;
/// assert_eq!(cursor.len(), 3);
/// assert!(matches!(cursor.reserve(6), Err(CacheError::CapacityExceeded { needed: 9, capacity: 8 })));
/// assert!(cursor.reserve(usize::MAX).is_err()); // no wrap-around
/// cursor.truncate(1)?;
/// assert_eq!(cursor.len(), 1);
/// # Ok::<(), CacheError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheCursor {
    len: usize,
    capacity: usize,
}

impl CacheCursor {
    /// An empty cursor over `capacity` positions.
    pub fn new(capacity: usize) -> Self {
        Self { len: 0, capacity }
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions the cache can hold.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The positions a cache that grows on demand allocates first:
    /// [`INITIAL_POSITIONS`], at most the capacity.
    pub fn initial_allocation(&self) -> usize {
        INITIAL_POSITIONS.min(self.capacity)
    }

    /// The size buffers of `allocated` positions take for an append ending at position
    /// `needed`: unchanged when they hold it, else twice the size, at least `needed`,
    /// at most the capacity (so growth copies cost O(length) amortised).
    ///
    /// ```
    /// use perpetua_kv_cache::CacheCursor;
    ///
    /// let cursor = CacheCursor::new(1000);
    /// assert_eq!(cursor.initial_allocation(), 256);
    /// assert_eq!(cursor.grown_allocation(256, 200), 256);
    /// assert_eq!(cursor.grown_allocation(256, 257), 512);
    /// assert_eq!(cursor.grown_allocation(256, 600), 600);
    /// assert_eq!(cursor.grown_allocation(512, 513), 1000);
    /// ```
    pub fn grown_allocation(&self, allocated: usize, needed: usize) -> usize {
        if needed <= allocated {
            allocated
        } else {
            allocated.saturating_mul(2).max(needed).min(self.capacity)
        }
    }

    /// The positions `n` new entries go to, `len..len + n`, or
    /// [`CacheError::CapacityExceeded`] (with the saturated need: no `n` wraps around).
    pub fn reserve(&self, n: usize) -> Result<Range<usize>, CacheError> {
        let needed = self.len.saturating_add(n);
        if needed > self.capacity {
            return Err(CacheError::CapacityExceeded { needed, capacity: self.capacity });
        }
        Ok(self.len..needed)
    }

    /// Make `n` written positions part of the cache. Errors as
    /// [`reserve`](Self::reserve) (the length is then unchanged).
    pub fn commit(&mut self, n: usize) -> Result<(), CacheError> {
        self.len = self.reserve(n)?.end;
        Ok(())
    }

    /// Keep positions `0..len` ([`KvCache::truncate`]'s contract: `len > self.len()` is
    /// [`CacheError::TruncateBeyondLength`], never a clamp).
    pub fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
        if len > self.len {
            return Err(CacheError::TruncateBeyondLength { requested: len, len: self.len });
        }
        self.len = len;
        Ok(())
    }

    /// Check a context shift dropping positions `start..start + n`; returns how many
    /// positions follow the dropped ones (they move down by `n`). Errors:
    /// [`CacheError::ShiftBeyondLength`]. The caller moves the rows, then
    /// [`truncate`](Self::truncate)s to `start + kept`.
    pub fn shift(&self, start: usize, n: usize) -> Result<usize, CacheError> {
        match start.checked_add(n) {
            Some(end) if end <= self.len => Ok(self.len - end),
            _ => Err(CacheError::ShiftBeyondLength { start, n, len: self.len }),
        }
    }
}

/// A cache whose length is a [`CacheCursor`]: it gets [`KvCache`] from it (`seq_len`,
/// `capacity`, `truncate`), so a backend writes only how its buffers are laid out.
/// Both backends' `LlamaCache`s are cursor caches.
pub trait CursorCache {
    /// The cache's length and capacity.
    fn cursor(&self) -> &CacheCursor;
    /// The same, to move.
    fn cursor_mut(&mut self) -> &mut CacheCursor;
}

impl<T: CursorCache> KvCache for T {
    fn seq_len(&self) -> usize {
        self.cursor().len()
    }

    fn capacity(&self) -> usize {
        self.cursor().capacity()
    }

    fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
        self.cursor_mut().truncate(len)
    }
}

/// Run `f` on `cache`; when it fails, the cache goes back to the length it had (the
/// rows `f` wrote past that length are never read). Backends run every forward pass
/// through it, including the copy of the logits to the caller, so "an error leaves the
/// cache untouched" holds whichever step fails.
///
/// ```
/// use perpetua_kv_cache::{CacheCursor, CacheError, KvCache, with_rollback};
///
/// struct Cache(CacheCursor);
/// impl KvCache for Cache {
///     fn seq_len(&self) -> usize { self.0.len() }
///     fn capacity(&self) -> usize { self.0.capacity() }
///     fn truncate(&mut self, len: usize) -> Result<(), CacheError> { self.0.truncate(len) }
/// }
///
/// let mut cache = Cache(CacheCursor::new(16));
/// let failed: Result<(), CacheError> = with_rollback(&mut cache, |c| {
///     c.0.commit(4)?; // a first chunk went in...
///     Err(CacheError::Backend("device lost".into())) // ...then the second failed
/// });
/// assert!(failed.is_err());
/// assert_eq!(cache.seq_len(), 0);
/// ```
pub fn with_rollback<C: KvCache + ?Sized, T, E>(
    cache: &mut C,
    f: impl FnOnce(&mut C) -> Result<T, E>,
) -> Result<T, E> {
    let len = cache.seq_len();
    f(cache).inspect_err(|_| {
        // `len` was held before `f`: truncating back to it cannot fail unless `f`
        // shortened the cache, and then there is nothing more to undo.
        if cache.seq_len() > len {
            let _ = cache.truncate(len);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    struct Cache(CacheCursor);
    impl KvCache for Cache {
        fn seq_len(&self) -> usize {
            self.0.len()
        }
        fn capacity(&self) -> usize {
            self.0.capacity()
        }
        fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
            self.0.truncate(len)
        }
    }

    proptest! {
        /// Any sequence of commits, truncations and failing or succeeding rolled-back
        /// runs keeps `len <= capacity`; a failing run leaves the length as it was, a
        /// succeeding one keeps what it committed.
        #[test]
        fn cursor_and_rollback_keep_the_contract(
            capacity in 1usize..64,
            ops in proptest::collection::vec((0usize..4, 0usize..80, any::<bool>()), 1..40),
        ) {
            let mut cache = Cache(CacheCursor::new(capacity));
            for (op, n, fail) in ops {
                let before = cache.seq_len();
                match op {
                    0 => {
                        let ok = cache.0.commit(n).is_ok();
                        prop_assert_eq!(ok, before + n <= capacity);
                        prop_assert_eq!(cache.seq_len(), if ok { before + n } else { before });
                    }
                    1 => {
                        let ok = cache.truncate(n).is_ok();
                        prop_assert_eq!(ok, n <= before);
                        prop_assert_eq!(cache.seq_len(), if ok { n } else { before });
                    }
                    2 => {
                        let kept = cache.0.shift(n / 2, n / 3);
                        prop_assert_eq!(kept.is_ok(), n / 2 + n / 3 <= before);
                    }
                    _ => {
                        let r: Result<(), CacheError> = with_rollback(&mut cache, |c| {
                            let _ = c.0.commit(n);
                            if fail { Err(CacheError::Backend("x".into())) } else { Ok(()) }
                        });
                        prop_assert_eq!(r.is_err(), fail);
                        let committed = if before + n <= capacity { before + n } else { before };
                        prop_assert_eq!(cache.seq_len(), if fail { before } else { committed });
                    }
                }
                prop_assert!(cache.seq_len() <= capacity);
            }
        }
    }

    #[test]
    fn reserve_saturates_instead_of_wrapping() {
        let mut c = CacheCursor::new(4);
        c.commit(2).unwrap();
        assert_eq!(
            c.reserve(usize::MAX),
            Err(CacheError::CapacityExceeded { needed: usize::MAX, capacity: 4 })
        );
        assert_eq!(
            c.commit(usize::MAX - 1),
            Err(CacheError::CapacityExceeded { needed: usize::MAX, capacity: 4 })
        );
        assert_eq!(c.len(), 2);
    }
}
