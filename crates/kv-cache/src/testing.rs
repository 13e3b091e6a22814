//! Conformance kit for [`KvCache`] implementations (feature `testing`).
//!
//! The kit knows no model: a backend wraps its model and cache in a [`CacheHarness`]
//! (make a cache, feed tokens, read the last position's logits) and runs
//! [`run_all`] — or the single checks — from its own tests. Every check compares
//! logits against a *fresh prefill* of the same tokens, the ground truth a correct
//! cache must reproduce:
//!
//! | check | property |
//! |---|---|
//! | [`check_truncate_refeed`] | truncate to `t`, refeed `tokens[t..]` ≡ fresh prefill of `tokens`, also after a *different* tail was fed and dropped |
//! | [`check_fork_independent`] | a fork and its parent diverge without affecting each other |
//! | [`check_clear_resets`] | `clear` then feed ≡ fresh prefill; `seq_len() == 0` after clear |
//! | [`check_capacity_error`] | appending past `capacity()` is [`CacheError::CapacityExceeded`] and leaves the cache as it was |
//! | [`check_truncate_beyond_len_errors`] | `truncate(len + 1)` is [`CacheError::TruncateBeyondLength`], never a clamp |
//!
//! Logit agreement is `max_i |a_i − b_i| <= tolerance`; the tolerance is a parameter
//! because batched prefill and one-token decode take different kernel paths
//! (quantized backends typically need `1e-3`..`1e-2`, an exact fake `0.0`).
//!
//! ```
//! use perpetua_kv_cache::{CacheError, ForkableCache, KvCache};
//! use perpetua_kv_cache::testing::{run_all, CacheHarness, ConformanceConfig};
//!
//! /// A cache that stores the tokens themselves; logits are a function of all of them.
//! #[derive(Clone)]
//! struct TokenCache { tokens: Vec<u32>, cap: usize }
//! impl KvCache for TokenCache {
//!     fn seq_len(&self) -> usize { self.tokens.len() }
//!     fn capacity(&self) -> usize { self.cap }
//!     fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
//!         if len > self.tokens.len() {
//!             return Err(CacheError::TruncateBeyondLength { requested: len, len: self.tokens.len() });
//!         }
//!         self.tokens.truncate(len);
//!         Ok(())
//!     }
//! }
//! impl ForkableCache for TokenCache {
//!     fn fork(&self) -> Result<Self, CacheError> { Ok(self.clone()) }
//! }
//!
//! struct Toy;
//! impl CacheHarness for Toy {
//!     type Cache = TokenCache;
//!     type Error = CacheError;
//!     fn new_cache(&mut self) -> Result<TokenCache, CacheError> {
//!         Ok(TokenCache { tokens: Vec::new(), cap: 64 })
//!     }
//!     fn feed(&mut self, c: &mut TokenCache, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), CacheError> {
//!         if c.tokens.len() + tokens.len() > c.cap {
//!             return Err(CacheError::CapacityExceeded { needed: c.tokens.len() + tokens.len(), capacity: c.cap });
//!         }
//!         c.tokens.extend_from_slice(tokens);
//!         let h = c.tokens.iter().fold(7u64, |h, &t| h.wrapping_mul(31).wrapping_add(u64::from(t)));
//!         out.clear();
//!         out.extend((0..8u64).map(|i| ((h ^ i).wrapping_mul(0x9E37_79B9) % 1000) as f32 / 100.0));
//!         Ok(())
//!     }
//! }
//!
//! let report = run_all(&mut Toy, &ConformanceConfig::default())?;
//! assert_eq!(report.checks.len(), 5);
//! assert_eq!(report.max_abs_diff(), 0.0);
//! # Ok::<(), perpetua_kv_cache::testing::ConformanceError>(())
//! ```

use std::fmt;

use thiserror::Error;

use crate::{CacheError, ForkableCache, KvCache};

/// A backend's model and cache, as the kit drives them.
///
/// `feed` has the semantics of `LanguageModel::forward`: feed `tokens` at positions
/// `cache.seq_len()..`, append them to the cache, write the logits of the last fed
/// position into `out` (cleared first). On error the cache must be left at its length
/// before the call.
pub trait CacheHarness {
    /// The cache under test.
    type Cache: KvCache;
    /// The backend's error. Capacity errors must be (or wrap, via
    /// [`std::error::Error::source`]) a [`CacheError::CapacityExceeded`], or the
    /// harness overrides [`cache_error`](Self::cache_error).
    type Error: std::error::Error + Send + Sync + 'static;

    /// A new, empty cache of the backend's default capacity.
    fn new_cache(&mut self) -> Result<Self::Cache, Self::Error>;

    /// A new, empty cache that holds at most `capacity` positions. Used by
    /// [`check_capacity_error`] so the capacity test does not have to fill a full
    /// context. The default ignores `capacity` and calls
    /// [`new_cache`](Self::new_cache); the check then uses whatever
    /// [`KvCache::capacity`] reports.
    fn new_cache_with_capacity(&mut self, capacity: usize) -> Result<Self::Cache, Self::Error> {
        let _ = capacity;
        self.new_cache()
    }

    /// Feed `tokens` (non-empty) and write the last position's logits into `out`.
    fn feed(
        &mut self,
        cache: &mut Self::Cache,
        tokens: &[u32],
        out: &mut Vec<f32>,
    ) -> Result<(), Self::Error>;

    /// A context shift: drop positions `start..start + n` of `cache` and move the later
    /// ones down by `n` (the backend's `LanguageModel::shift_cache`). `Ok(false)`: not
    /// supported (the default), and [`check_context_shift`] is skipped.
    fn shift(&mut self, cache: &mut Self::Cache, start: usize, n: usize) -> Result<bool, Self::Error> {
        let _ = (cache, start, n);
        Ok(false)
    }

    /// The [`CacheError`] inside a feed error, if any. The default walks
    /// `err` and its [`source`](std::error::Error::source) chain with
    /// [`find_cache_error`].
    fn cache_error<'e>(&self, err: &'e Self::Error) -> Option<&'e CacheError> {
        find_cache_error(err)
    }
}

/// The first [`CacheError`] in `err`'s [`source`](std::error::Error::source) chain
/// (`err` itself included), or `None`.
pub fn find_cache_error<'e>(err: &'e (dyn std::error::Error + 'static)) -> Option<&'e CacheError> {
    let mut cur: Option<&'e (dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = cur {
        if let Some(c) = e.downcast_ref::<CacheError>() {
            return Some(c);
        }
        cur = e.source();
    }
    None
}

/// The properties the kit checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Property {
    /// Truncate then refeed equals a fresh prefill.
    TruncateRefeed,
    /// A fork is independent of its parent.
    ForkIndependent,
    /// `clear` resets the cache.
    ClearResets,
    /// Appending past capacity is a clear error.
    CapacityError,
    /// Truncating past `seq_len` is an error, not a clamp.
    TruncateBeyondLength,
    /// A context shift keeps the length contract (checked where the harness shifts).
    ContextShift,
}

impl Property {
    /// A stable snake-case name (`"truncate_refeed"`).
    pub fn name(self) -> &'static str {
        match self {
            Self::TruncateRefeed => "truncate_refeed",
            Self::ForkIndependent => "fork_independent",
            Self::ClearResets => "clear_resets",
            Self::CapacityError => "capacity_error",
            Self::TruncateBeyondLength => "truncate_beyond_length",
            Self::ContextShift => "context_shift",
        }
    }
}

impl fmt::Display for Property {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A failed conformance check: which property, and how it failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConformanceError {
    /// Logits disagreed with a fresh prefill by more than the tolerance.
    #[error(
        "{property}: logits differ from a fresh prefill by max |Δ| = {max_abs_diff} at token {argmax} (tolerance {tolerance}) — {situation}"
    )]
    LogitsMismatch {
        /// The violated property.
        property: Property,
        /// `max_i |a_i − b_i|` (`+inf` when lengths differ or a value is NaN).
        max_abs_diff: f32,
        /// The index where the difference is largest.
        argmax: usize,
        /// The tolerance that was exceeded.
        tolerance: f32,
        /// What was compared.
        situation: String,
    },
    /// A cache invariant (length, error kind) was violated.
    #[error("{property}: {what}")]
    Violated {
        /// The violated property.
        property: Property,
        /// What went wrong, with the observed values.
        what: String,
    },
    /// The harness itself failed (model error) while checking `property`.
    #[error("{property}: the harness failed: {source}")]
    Harness {
        /// The property being checked.
        property: Property,
        /// The harness's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// The kit was called with parameters that cannot test anything.
    #[error("invalid conformance parameter `{name}` = {value}: {reason}")]
    InvalidConfig {
        /// Parameter name.
        name: &'static str,
        /// The rejected value.
        value: String,
        /// The valid domain.
        reason: &'static str,
    },
}

impl ConformanceError {
    /// The property that failed (`None` for [`InvalidConfig`](Self::InvalidConfig)).
    pub fn property(&self) -> Option<Property> {
        match self {
            Self::LogitsMismatch { property, .. }
            | Self::Violated { property, .. }
            | Self::Harness { property, .. } => Some(*property),
            Self::InvalidConfig { .. } => None,
        }
    }

    /// The max abs logit difference, for a [`LogitsMismatch`](Self::LogitsMismatch).
    pub fn max_abs_diff(&self) -> Option<f32> {
        match self {
            Self::LogitsMismatch { max_abs_diff, .. } => Some(*max_abs_diff),
            _ => None,
        }
    }
}

/// One passed check and the largest logit difference it saw (0 for checks that
/// compare no logits).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckOutcome {
    /// The property checked.
    pub property: Property,
    /// `max |Δ|` over every logit comparison of the check.
    pub max_abs_diff: f32,
}

/// The outcome of [`run_all`]: every check passed.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConformanceReport {
    /// One entry per check, in run order.
    pub checks: Vec<CheckOutcome>,
}

impl ConformanceReport {
    /// The largest logit difference over all checks (0 when none compared logits).
    pub fn max_abs_diff(&self) -> f32 {
        self.checks.iter().map(|c| c.max_abs_diff).fold(0.0, f32::max)
    }
}

impl fmt::Display for ConformanceReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, c) in self.checks.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{} ok (max |Δ| {:e})", c.property, c.max_abs_diff)?;
        }
        Ok(())
    }
}

/// Parameters of [`run_all`].
#[derive(Debug, Clone, PartialEq)]
pub struct ConformanceConfig {
    /// Token ids fed to the model (at least 2, all inside the vocabulary).
    pub tokens: Vec<u32>,
    /// Truncation point for the truncate/fork checks: `1..tokens.len()`.
    pub truncate_to: usize,
    /// Max abs logit difference accepted (`>= 0`, finite).
    pub tolerance: f32,
    /// Capacity requested from [`CacheHarness::new_cache_with_capacity`] for the
    /// capacity check (must exceed `truncate_to`).
    pub small_capacity: usize,
}

impl Default for ConformanceConfig {
    /// Twelve small ids (valid in any vocabulary of ≥ 8 tokens), truncation at 5,
    /// tolerance 0 (exact; real backends raise it), small capacity 16.
    fn default() -> Self {
        Self {
            tokens: vec![1, 5, 2, 7, 3, 3, 0, 6, 4, 1, 2, 5],
            truncate_to: 5,
            tolerance: 0.0,
            small_capacity: 16,
        }
    }
}

/// Run every check; the first failure is returned as the error.
///
/// Errors: see [`ConformanceError`]; each names the failed property and, for logit
/// checks, the max abs difference.
pub fn run_all<H>(harness: &mut H, config: &ConformanceConfig) -> Result<ConformanceReport, ConformanceError>
where
    H: CacheHarness,
    H::Cache: ForkableCache,
{
    let mut report = ConformanceReport::default();
    let t = &config.tokens;
    let tol = config.tolerance;
    report.checks.push(check_truncate_refeed(harness, t, config.truncate_to, tol)?);
    report.checks.push(check_fork_independent(harness, t, config.truncate_to, tol)?);
    report.checks.push(check_clear_resets(harness, t, tol)?);
    report.checks.push(check_capacity_error(harness, t, config.small_capacity)?);
    report.checks.push(check_truncate_beyond_len_errors(harness, t)?);
    report.checks.extend(check_context_shift(harness, t, config.truncate_to, tol)?);
    Ok(report)
}

/// The most positions [`check_capacity_error`] feeds to fill a cache to capacity.
pub const MAX_FILL: usize = 256;

/// `max_i |a_i − b_i|` and its index; `+inf` when the lengths differ or a NaN shows.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> (f32, usize) {
    if a.len() != b.len() {
        return (f32::INFINITY, a.len().min(b.len()));
    }
    let mut best = (0.0_f32, 0);
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        let d = if x == y { 0.0 } else { (x - y).abs() };
        if d.is_nan() {
            return (f32::INFINITY, i);
        }
        if d > best.0 {
            best = (d, i);
        }
    }
    best
}

fn validate_tokens(tokens: &[u32], truncate_to: usize) -> Result<(), ConformanceError> {
    if tokens.len() < 2 {
        return Err(ConformanceError::InvalidConfig {
            name: "tokens",
            value: format!("{} tokens", tokens.len()),
            reason: "need at least 2 tokens",
        });
    }
    if truncate_to == 0 || truncate_to >= tokens.len() {
        return Err(ConformanceError::InvalidConfig {
            name: "truncate_to",
            value: truncate_to.to_string(),
            reason: "must be in 1..tokens.len()",
        });
    }
    Ok(())
}

fn validate_tolerance(tolerance: f32) -> Result<(), ConformanceError> {
    if !(tolerance >= 0.0 && tolerance.is_finite()) {
        return Err(ConformanceError::InvalidConfig {
            name: "tolerance",
            value: tolerance.to_string(),
            reason: "must be finite and >= 0",
        });
    }
    Ok(())
}

/// Shared plumbing of the checks: error mapping, fresh prefills, comparisons.
struct Run<'h, H: CacheHarness> {
    harness: &'h mut H,
    property: Property,
    tolerance: f32,
    worst: f32,
}

impl<'h, H: CacheHarness> Run<'h, H> {
    fn new(harness: &'h mut H, property: Property, tolerance: f32) -> Self {
        Self { harness, property, tolerance, worst: 0.0 }
    }

    fn harness_err(&self, e: H::Error) -> ConformanceError {
        ConformanceError::Harness { property: self.property, source: Box::new(e) }
    }

    fn cache_err(&self, e: CacheError) -> ConformanceError {
        ConformanceError::Harness { property: self.property, source: Box::new(e) }
    }

    fn violated(&self, what: String) -> ConformanceError {
        ConformanceError::Violated { property: self.property, what }
    }

    fn new_cache(&mut self) -> Result<H::Cache, ConformanceError> {
        let c = self.harness.new_cache().map_err(|e| self.harness_err(e))?;
        if c.seq_len() != 0 {
            return Err(self.violated(format!("a new cache holds {} positions, expected 0", c.seq_len())));
        }
        Ok(c)
    }

    /// Feed and check that `seq_len` grew by exactly `tokens.len()`.
    fn feed(&mut self, cache: &mut H::Cache, tokens: &[u32]) -> Result<Vec<f32>, ConformanceError> {
        let before = cache.seq_len();
        let mut out = Vec::new();
        self.harness.feed(cache, tokens, &mut out).map_err(|e| self.harness_err(e))?;
        if cache.seq_len() != before + tokens.len() {
            return Err(self.violated(format!(
                "feeding {} tokens at seq_len {before} left seq_len {}, expected {}",
                tokens.len(),
                cache.seq_len(),
                before + tokens.len()
            )));
        }
        Ok(out)
    }

    /// Logits of a fresh prefill of `tokens` (one feed call).
    fn fresh(&mut self, tokens: &[u32]) -> Result<Vec<f32>, ConformanceError> {
        let mut c = self.new_cache()?;
        self.feed(&mut c, tokens)
    }

    fn truncate(&mut self, cache: &mut H::Cache, len: usize) -> Result<(), ConformanceError> {
        cache.truncate(len).map_err(|e| self.cache_err(e))?;
        if cache.seq_len() != len {
            return Err(self.violated(format!("truncate({len}) left seq_len {}", cache.seq_len())));
        }
        Ok(())
    }

    fn compare(&mut self, got: &[f32], want: &[f32], situation: &str) -> Result<(), ConformanceError> {
        let (d, at) = max_abs_diff(got, want);
        self.worst = self.worst.max(d);
        if d > self.tolerance {
            return Err(ConformanceError::LogitsMismatch {
                property: self.property,
                max_abs_diff: d,
                argmax: at,
                tolerance: self.tolerance,
                situation: situation.to_owned(),
            });
        }
        Ok(())
    }

    fn outcome(&self) -> CheckOutcome {
        CheckOutcome { property: self.property, max_abs_diff: self.worst }
    }
}

/// `tokens[..t]` followed by the reversed tail: the same ids, a different sequence, so
/// stale cache entries would change the logits.
fn with_reversed_tail(tokens: &[u32], t: usize) -> Vec<u32> {
    let mut v = tokens.to_vec();
    v[t..].reverse();
    // A palindromic tail reverses to itself; rotate the ids then so the tail differs
    // whenever it holds two distinct ids.
    if v[t..] == tokens[t..] && v.len() - t > 1 {
        v[t..].rotate_left(1);
    }
    v
}

/// Truncate-then-refeed equals a fresh prefill.
///
/// 1. Feed all of `tokens`, truncate to `truncate_to`, refeed `tokens[truncate_to..]`:
///    the logits must match a fresh prefill of `tokens` within `tolerance`.
/// 2. Feed `tokens[..truncate_to]` + a *different* tail, truncate, feed the real
///    tail, one token at a time (the decode path a back step uses): the logits must
///    match again — a cache that keeps stale keys fails here.
///
/// Errors: [`ConformanceError::InvalidConfig`] unless `tokens.len() >= 2`,
/// `1 <= truncate_to < tokens.len()`, `tolerance` finite and `>= 0`.
pub fn check_truncate_refeed<H: CacheHarness>(
    harness: &mut H,
    tokens: &[u32],
    truncate_to: usize,
    tolerance: f32,
) -> Result<CheckOutcome, ConformanceError> {
    validate_tokens(tokens, truncate_to)?;
    validate_tolerance(tolerance)?;
    let mut run = Run::new(harness, Property::TruncateRefeed, tolerance);
    let want = run.fresh(tokens)?;

    let mut c = run.new_cache()?;
    run.feed(&mut c, tokens)?;
    run.truncate(&mut c, truncate_to)?;
    let got = run.feed(&mut c, &tokens[truncate_to..])?;
    run.compare(&got, &want, "feed all, truncate, refeed the same tail in one call")?;

    let other = with_reversed_tail(tokens, truncate_to);
    let mut c = run.new_cache()?;
    run.feed(&mut c, &other)?;
    run.truncate(&mut c, truncate_to)?;
    let mut got = Vec::new();
    for &tok in &tokens[truncate_to..] {
        got = run.feed(&mut c, &[tok])?;
    }
    run.compare(&got, &want, "feed a different tail, truncate, refeed the tail token by token")?;
    Ok(run.outcome())
}

/// A fork is independent of its parent: after forking at `truncate_to` tokens, the
/// fork continues with `tokens[truncate_to..]` and the parent with a different tail;
/// each must match a fresh prefill of its own sequence, the parent's `seq_len` must
/// not move while the fork is fed, and truncating the fork must not touch the parent.
///
/// Errors: as [`check_truncate_refeed`].
pub fn check_fork_independent<H>(
    harness: &mut H,
    tokens: &[u32],
    truncate_to: usize,
    tolerance: f32,
) -> Result<CheckOutcome, ConformanceError>
where
    H: CacheHarness,
    H::Cache: ForkableCache,
{
    validate_tokens(tokens, truncate_to)?;
    validate_tolerance(tolerance)?;
    let mut run = Run::new(harness, Property::ForkIndependent, tolerance);
    let other = with_reversed_tail(tokens, truncate_to);
    let want_fork = run.fresh(tokens)?;
    let want_parent = run.fresh(&other)?;

    let mut parent = run.new_cache()?;
    run.feed(&mut parent, &tokens[..truncate_to])?;
    let mut fork = parent.fork().map_err(|e| run.cache_err(e))?;
    if fork.seq_len() != truncate_to {
        return Err(
            run.violated(format!("a fork of a {truncate_to}-position cache holds {}", fork.seq_len()))
        );
    }
    let got_fork = run.feed(&mut fork, &tokens[truncate_to..])?;
    if parent.seq_len() != truncate_to {
        return Err(run.violated(format!(
            "feeding the fork moved the parent's seq_len from {truncate_to} to {}",
            parent.seq_len()
        )));
    }
    run.compare(&got_fork, &want_fork, "fork continued with the tail")?;
    let got_parent = run.feed(&mut parent, &other[truncate_to..])?;
    run.compare(&got_parent, &want_parent, "parent continued with a different tail after the fork was fed")?;

    // Truncating the fork to 0 must leave the parent whole: refeeding the fork's tail
    // onto a fresh fork of the parent's prefix still gives the parent's logits.
    run.truncate(&mut fork, 0)?;
    if parent.seq_len() != tokens.len() {
        return Err(run.violated(format!(
            "truncating the fork changed the parent's seq_len to {}, expected {}",
            parent.seq_len(),
            tokens.len()
        )));
    }
    run.truncate(&mut parent, truncate_to)?;
    let mut fork2 = parent.fork().map_err(|e| run.cache_err(e))?;
    let got_parent = run.feed(&mut parent, &other[truncate_to..])?;
    run.compare(&got_parent, &want_parent, "parent refed after its fork was truncated")?;
    let got_fork2 = run.feed(&mut fork2, &tokens[truncate_to..])?;
    run.compare(&got_fork2, &want_fork, "second fork fed after the parent moved on")?;
    Ok(run.outcome())
}

/// `clear` resets: after feeding `tokens` and clearing, `seq_len() == 0` and feeding
/// `tokens` again matches a fresh prefill.
///
/// Errors: [`ConformanceError::InvalidConfig`] for fewer than 2 tokens or a bad
/// tolerance.
pub fn check_clear_resets<H: CacheHarness>(
    harness: &mut H,
    tokens: &[u32],
    tolerance: f32,
) -> Result<CheckOutcome, ConformanceError> {
    validate_tokens(tokens, 1)?;
    validate_tolerance(tolerance)?;
    let mut run = Run::new(harness, Property::ClearResets, tolerance);
    let want = run.fresh(tokens)?;
    let mut c = run.new_cache()?;
    let other = with_reversed_tail(tokens, 0);
    run.feed(&mut c, &other)?;
    c.clear();
    if c.seq_len() != 0 {
        return Err(run.violated(format!("clear() left seq_len {}", c.seq_len())));
    }
    let got = run.feed(&mut c, tokens)?;
    run.compare(&got, &want, "clear then feed")?;
    Ok(run.outcome())
}

/// Capacity is honoured with a clear error: on a cache from
/// [`CacheHarness::new_cache_with_capacity`]`(small_capacity)`, after feeding a prefix,
/// appending `remaining() + 1` tokens is [`CacheError::CapacityExceeded`] (found in the
/// error's source chain), the cache keeps its length, and it stays usable: filling it
/// exactly to capacity succeeds (checked when at most [`MAX_FILL`] positions remain, so
/// a harness that ignores `small_capacity` never prefills a whole context).
///
/// The over-capacity feed repeats `tokens` cyclically; a backend should reject it
/// before computing anything.
///
/// Errors: [`ConformanceError::InvalidConfig`] for fewer than 2 tokens.
pub fn check_capacity_error<H: CacheHarness>(
    harness: &mut H,
    tokens: &[u32],
    small_capacity: usize,
) -> Result<CheckOutcome, ConformanceError> {
    validate_tokens(tokens, 1)?;
    let mut run = Run::new(harness, Property::CapacityError, 0.0);
    let mut c = run.harness.new_cache_with_capacity(small_capacity).map_err(|e| run.harness_err(e))?;
    let cap = c.capacity();
    let prefix = (cap / 2).min(tokens.len()).min(cap.saturating_sub(1));
    if prefix > 0 {
        run.feed(&mut c, &tokens[..prefix])?;
    }
    if c.remaining() != cap - prefix {
        return Err(run
            .violated(format!("remaining() is {} with capacity {cap} and seq_len {prefix}", c.remaining())));
    }
    let over: Vec<u32> = tokens.iter().copied().cycle().take(c.remaining() + 1).collect();
    let mut out = Vec::new();
    match run.harness.feed(&mut c, &over, &mut out) {
        Ok(()) => {
            return Err(run.violated(format!(
                "feeding {} tokens onto {prefix} with capacity {cap} succeeded (seq_len now {})",
                over.len(),
                c.seq_len()
            )));
        }
        Err(e) => match run.harness.cache_error(&e) {
            Some(CacheError::CapacityExceeded { .. }) => {}
            other => {
                let what = format!(
                    "appending past capacity {cap} gave `{e}` (cache error: {other:?}), expected CacheError::CapacityExceeded"
                );
                return Err(run.violated(what));
            }
        },
    }
    if c.seq_len() != prefix {
        return Err(run.violated(format!(
            "a failed over-capacity feed left seq_len {}, expected {prefix}",
            c.seq_len()
        )));
    }
    // Filling to the brim proves the error was not off by one; skipped when the
    // harness ignored `small_capacity` (a real model would prefill a whole context).
    if c.remaining() <= MAX_FILL {
        let fill: Vec<u32> = tokens.iter().copied().cycle().take(c.remaining()).collect();
        if !fill.is_empty() {
            run.feed(&mut c, &fill)?;
        }
        if c.seq_len() != cap || c.remaining() != 0 {
            return Err(run.violated(format!("filled to capacity {cap} but seq_len is {}", c.seq_len())));
        }
    }
    Ok(run.outcome())
}

/// Truncating past `seq_len` is an error, never a clamp: after feeding `tokens`,
/// `truncate(len + 1)` is [`CacheError::TruncateBeyondLength`] `{ requested: len + 1,
/// len }` and leaves `seq_len` unchanged; `truncate(len)` is an `Ok` no-op.
///
/// Errors: [`ConformanceError::InvalidConfig`] for fewer than 2 tokens.
pub fn check_truncate_beyond_len_errors<H: CacheHarness>(
    harness: &mut H,
    tokens: &[u32],
) -> Result<CheckOutcome, ConformanceError> {
    validate_tokens(tokens, 1)?;
    let mut run = Run::new(harness, Property::TruncateBeyondLength, 0.0);
    let mut c = run.new_cache()?;
    run.feed(&mut c, tokens)?;
    let len = tokens.len();
    match c.truncate(len + 1) {
        Err(CacheError::TruncateBeyondLength { requested, len: held })
            if requested == len + 1 && held == len => {}
        other => {
            return Err(run.violated(format!(
                "truncate({}) on {len} positions gave {other:?}, expected TruncateBeyondLength {{ requested: {}, len: {len} }}",
                len + 1,
                len + 1
            )));
        }
    }
    if c.seq_len() != len {
        return Err(run.violated(format!("a failed truncate changed seq_len to {}", c.seq_len())));
    }
    run.truncate(&mut c, len)?;
    Ok(run.outcome())
}

/// A context shift ([`CacheHarness::shift`]) keeps the parts of its contract that hold
/// for every model (what a shift does to the logits of kept positions is model-specific:
/// each backend measures it): after feeding `tokens`,
/// - a shift reaching past `seq_len` is [`CacheError::ShiftBeyondLength`] and leaves
///   `seq_len` unchanged;
/// - a shift of 0 positions is a no-op;
/// - dropping the whole tail from `truncate_to` is a truncation: `seq_len` becomes
///   `truncate_to`, and refeeding the tail matches a fresh prefill within `tolerance`.
///
/// Returns `Ok(None)` when the harness does not shift.
///
/// Errors: [`ConformanceError::InvalidConfig`] as [`check_truncate_refeed`].
pub fn check_context_shift<H: CacheHarness>(
    harness: &mut H,
    tokens: &[u32],
    truncate_to: usize,
    tolerance: f32,
) -> Result<Option<CheckOutcome>, ConformanceError> {
    validate_tokens(tokens, truncate_to)?;
    validate_tolerance(tolerance)?;
    let mut run = Run::new(harness, Property::ContextShift, tolerance);
    let want = run.fresh(tokens)?;
    let mut c = run.new_cache()?;
    run.feed(&mut c, tokens)?;
    let len = tokens.len();
    match run.harness.shift(&mut c, 1, len) {
        Ok(false) => return Ok(None),
        Ok(true) => {
            return Err(run.violated(format!("shift(1, {len}) on {len} positions succeeded")));
        }
        Err(e) => match run.harness.cache_error(&e) {
            Some(CacheError::ShiftBeyondLength { start: 1, n, len: held }) if *n == len && *held == len => {}
            other => {
                let what = format!(
                    "shift(1, {len}) on {len} positions gave `{e}` (cache error: {other:?}), expected ShiftBeyondLength"
                );
                return Err(run.violated(what));
            }
        },
    }
    if c.seq_len() != len {
        return Err(run.violated(format!("a refused shift changed seq_len to {}", c.seq_len())));
    }
    let shift =
        |run: &mut Run<'_, H>, c: &mut H::Cache, start: usize, n: usize| match run.harness.shift(c, start, n)
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(run.violated(format!("shift({start}, {n}) unsupported after an earlier shift"))),
            Err(e) => Err(run.harness_err(e)),
        };
    shift(&mut run, &mut c, 1, 0)?;
    if c.seq_len() != len {
        return Err(run.violated(format!("shift(1, 0) changed seq_len to {}", c.seq_len())));
    }
    shift(&mut run, &mut c, truncate_to, len - truncate_to)?;
    if c.seq_len() != truncate_to {
        return Err(run.violated(format!(
            "shift({truncate_to}, {}) left seq_len {}, expected {truncate_to}",
            len - truncate_to,
            c.seq_len()
        )));
    }
    let got = run.feed(&mut c, &tokens[truncate_to..])?;
    run.compare(&got, &want, "tail dropped by a shift, then refed")?;
    Ok(Some(run.outcome()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stores tokens; logits hash the whole sequence (exact ground truth).
    #[derive(Clone)]
    struct TokenCache {
        tokens: Vec<u32>,
        cap: usize,
        /// Bug switches for the kit's own negative tests.
        truncate_keeps_tail: bool,
    }

    impl KvCache for TokenCache {
        fn seq_len(&self) -> usize {
            self.tokens.len()
        }
        fn capacity(&self) -> usize {
            self.cap
        }
        fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
            if len > self.tokens.len() {
                return Err(CacheError::TruncateBeyondLength { requested: len, len: self.tokens.len() });
            }
            if self.truncate_keeps_tail {
                // Bug: drops the *oldest* entries (the reference code's slicing).
                let n = self.tokens.len() - len;
                self.tokens.drain(..n);
            } else {
                self.tokens.truncate(len);
            }
            Ok(())
        }
    }

    impl ForkableCache for TokenCache {
        fn fork(&self) -> Result<Self, CacheError> {
            Ok(self.clone())
        }
    }

    #[derive(Default)]
    struct Toy {
        buggy_truncate: bool,
        clamp_capacity: bool,
    }

    impl CacheHarness for Toy {
        type Cache = TokenCache;
        type Error = CacheError;
        fn new_cache(&mut self) -> Result<TokenCache, CacheError> {
            Ok(TokenCache { tokens: Vec::new(), cap: 64, truncate_keeps_tail: self.buggy_truncate })
        }
        fn new_cache_with_capacity(&mut self, capacity: usize) -> Result<TokenCache, CacheError> {
            let mut c = self.new_cache()?;
            c.cap = capacity;
            Ok(c)
        }
        fn shift(&mut self, c: &mut TokenCache, start: usize, n: usize) -> Result<bool, CacheError> {
            let len = c.tokens.len();
            if start + n > len {
                return Err(CacheError::ShiftBeyondLength { start, n, len });
            }
            c.tokens.drain(start..start + n);
            Ok(true)
        }
        fn feed(&mut self, c: &mut TokenCache, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), CacheError> {
            let needed = c.tokens.len() + tokens.len();
            if needed > c.cap {
                if self.clamp_capacity {
                    c.tokens.extend_from_slice(tokens);
                    c.tokens.truncate(c.cap);
                } else {
                    return Err(CacheError::CapacityExceeded { needed, capacity: c.cap });
                }
            } else {
                c.tokens.extend_from_slice(tokens);
            }
            let h = c.tokens.iter().fold(7u64, |h, &t| h.wrapping_mul(31).wrapping_add(u64::from(t)));
            out.clear();
            out.extend((0..8u64).map(|i| ((h ^ i).wrapping_mul(0x9E37_79B9) % 1000) as f32 / 100.0));
            Ok(())
        }
    }

    #[test]
    fn a_correct_cache_passes_every_check() {
        let report = run_all(&mut Toy::default(), &ConformanceConfig::default()).unwrap();
        assert_eq!(report.checks.len(), 6);
        assert_eq!(report.max_abs_diff(), 0.0);
    }

    #[test]
    fn a_cache_that_drops_the_oldest_entries_fails_truncate_refeed() {
        let err = run_all(&mut Toy { buggy_truncate: true, ..Toy::default() }, &ConformanceConfig::default())
            .unwrap_err();
        assert_eq!(err.property(), Some(Property::TruncateRefeed));
        assert!(err.max_abs_diff().unwrap() > 0.0, "{err}");
    }

    #[test]
    fn a_cache_that_silently_clamps_fails_the_capacity_check() {
        let err = check_capacity_error(&mut Toy { clamp_capacity: true, ..Toy::default() }, &[1, 2, 3], 8)
            .unwrap_err();
        assert_eq!(err.property(), Some(Property::CapacityError));
    }

    #[test]
    fn invalid_parameters_are_named() {
        let err = check_truncate_refeed(&mut Toy::default(), &[1, 2, 3], 3, 0.0).unwrap_err();
        assert!(matches!(err, ConformanceError::InvalidConfig { name: "truncate_to", .. }));
        let err = check_truncate_refeed(&mut Toy::default(), &[1, 2, 3], 1, f32::NAN).unwrap_err();
        assert!(matches!(err, ConformanceError::InvalidConfig { name: "tolerance", .. }));
    }

    #[test]
    fn max_abs_diff_flags_length_mismatch_and_nan() {
        assert_eq!(max_abs_diff(&[1.0, 2.0], &[1.0, 2.5]), (0.5, 1));
        assert_eq!(max_abs_diff(&[1.0], &[1.0, 2.0]).0, f32::INFINITY);
        assert_eq!(max_abs_diff(&[f32::NAN], &[1.0]).0, f32::INFINITY);
        assert_eq!(max_abs_diff(&[f32::NEG_INFINITY], &[f32::NEG_INFINITY]).0, 0.0);
    }
}
