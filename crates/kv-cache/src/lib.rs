//! The truncatable KV-cache contract of perpetua.
//!
//! Perpetual generation backs up: when a strategy evicts the last `n` tokens, the
//! cache must drop exactly their keys and values, in O(1) and without copying, so a
//! back step costs only the regenerated forward passes — never a re-prefill. Beam
//! search and speculative decoding additionally need cheap independent copies
//! ([`ForkableCache`]).
//!
//! This crate knows nothing of tensors: backends implement [`KvCache`] for their own
//! storage and run the conformance kit (feature `testing`) against their real model.
//!
//! ```
//! use perpetua_kv_cache::{CacheError, KvCache};
//!
//! /// A cache that only counts positions (a backend stores tensors instead).
//! struct Counting { len: usize, cap: usize }
//!
//! impl KvCache for Counting {
//!     fn seq_len(&self) -> usize { self.len }
//!     fn capacity(&self) -> usize { self.cap }
//!     fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
//!         if len > self.len {
//!             return Err(CacheError::TruncateBeyondLength { requested: len, len: self.len });
//!         }
//!         self.len = len;
//!         Ok(())
//!     }
//! }
//!
//! let mut c = Counting { len: 10, cap: 16 };
//! c.truncate(4)?;
//! assert_eq!(c.seq_len(), 4);
//! assert!(c.truncate(5).is_err()); // never a silent clamp
//! c.clear();
//! assert_eq!(c.seq_len(), 0);
//! # Ok::<(), CacheError>(())
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use thiserror::Error;

mod cursor;
pub use cursor::{CacheCursor, CursorCache, INITIAL_POSITIONS, with_rollback};

#[cfg(feature = "testing")]
pub mod testing;

/// Errors of cache operations.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CacheError {
    /// `truncate(len)` with `len` greater than the positions held. Never clamped.
    #[error("cannot truncate cache to {requested} positions: it holds only {len}")]
    TruncateBeyondLength {
        /// The requested length.
        requested: usize,
        /// Positions currently held.
        len: usize,
    },
    /// Appending would exceed the preallocated capacity.
    #[error("cache capacity exceeded: {needed} positions needed, capacity is {capacity}")]
    CapacityExceeded {
        /// Positions the append would need.
        needed: usize,
        /// The cache's capacity.
        capacity: usize,
    },
    /// A context shift (dropping positions `start..start + n`) reaching past the
    /// positions held.
    #[error("cannot drop {n} cache positions from position {start}: it holds only {len}")]
    ShiftBeyondLength {
        /// First dropped position.
        start: usize,
        /// Positions to drop.
        n: usize,
        /// Positions currently held.
        len: usize,
    },
    /// A backend-specific failure (device error, shape mismatch).
    #[error("cache backend error: {0}")]
    Backend(String),
}

/// A key/value cache whose tail can be dropped cheaply.
pub trait KvCache {
    /// Positions currently held (the next token is fed at this position).
    fn seq_len(&self) -> usize;

    /// Positions the cache can hold without reallocating; appending past it is
    /// [`CacheError::CapacityExceeded`].
    fn capacity(&self) -> usize;

    /// Drop every position `>= len`, keeping `0..len`. O(1), no copy.
    ///
    /// Errors: `len > seq_len()` is [`CacheError::TruncateBeyondLength`] (never a clamp).
    fn truncate(&mut self, len: usize) -> Result<(), CacheError>;

    /// Drop everything.
    fn clear(&mut self) {
        // truncate(0) cannot fail: 0 <= seq_len() always.
        let _ = self.truncate(0);
    }

    /// Positions that can still be appended.
    fn remaining(&self) -> usize {
        self.capacity().saturating_sub(self.seq_len())
    }
}

/// A cache that can be copied into an independent one (beam search, speculative
/// decoding, `n` samples from one prefilled prompt). Appending to or truncating the
/// fork never affects the parent, and vice versa.
pub trait ForkableCache: KvCache + Sized {
    /// An independent cache holding the same positions.
    fn fork(&self) -> Result<Self, CacheError>;
}
