//! Test doubles (feature `testing`): a deterministic fake model with its own
//! truncatable, forkable cache, a byte-level tokenizer, and a kv-cache conformance
//! harness for any [`LanguageModel`].
//!
//! ```
//! use perpetua_generator::testing::{ByteTokenizer, FakeModel};
//! use perpetua_kv_cache::testing::{run_all, ConformanceConfig};
//!
//! let mut model = FakeModel::new(ByteTokenizer::VOCAB_SIZE);
//! let report = run_all(&mut model, &ConformanceConfig::default())?; // exact: tolerance 0
//! assert_eq!(report.max_abs_diff(), 0.0);
//! # Ok::<(), perpetua_kv_cache::testing::ConformanceError>(())
//! ```

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use perpetua_kv_cache::testing::CacheHarness;
use thiserror::Error;

use crate::{BoxError, CacheError, ChatMessage, ForkableCache, KvCache, LanguageModel, Tokenizer};

/// The fake model's cache: the tokens themselves (the logits are a function of them),
/// so truncation and forks are exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FakeCache {
    tokens: Vec<u32>,
    capacity: usize,
}

impl FakeCache {
    /// An empty cache holding at most `capacity` positions.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { tokens: Vec::new(), capacity }
    }

    /// The tokens held, in position order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }
}

impl KvCache for FakeCache {
    fn seq_len(&self) -> usize {
        self.tokens.len()
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn truncate(&mut self, len: usize) -> Result<(), CacheError> {
        if len > self.tokens.len() {
            return Err(CacheError::TruncateBeyondLength { requested: len, len: self.tokens.len() });
        }
        self.tokens.truncate(len);
        Ok(())
    }
}

impl ForkableCache for FakeCache {
    fn fork(&self) -> Result<Self, CacheError> {
        Ok(self.clone())
    }
}

/// Errors of the fake model.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum FakeError {
    /// The failure injected with [`FakeModel::fail_at_call`].
    #[error("injected failure at forward call {call}")]
    InjectedFailure {
        /// The failing call's index (0-based).
        call: usize,
    },
    /// `forward` was called with no tokens.
    #[error("forward called with no tokens")]
    EmptyInput,
    /// A token id outside the vocabulary was fed.
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    TokenOutOfVocabulary {
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
    /// A cache error (capacity exceeded).
    #[error("cache: {0}")]
    Cache(#[source] CacheError),
}

/// A rule of the fake model's table: when the cached sequence ends with `context`,
/// add `boost` to the logit of `next`.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    context: Vec<u32>,
    next: u32,
    boost: f32,
}

/// A deterministic fake language model.
///
/// Logits of the next position are a hash of (seed, the last `order` tokens, token id)
/// mapped into `[-4, 4)` — an order-`n` "n-gram" model with pseudo-random tables —
/// plus table rules ([`with_rule`](Self::with_rule)), an EOS bias, and forced EOS
/// positions. They depend only on the cached tokens, so the cache passes the kv-cache
/// conformance kit with tolerance 0.
///
/// Counters ([`forward_calls`](Self::forward_calls), [`tokens_fed`](Self::tokens_fed))
/// let tests prove what work was done (a back step costs only regenerated passes).
#[derive(Debug)]
pub struct FakeModel {
    vocab_size: usize,
    max_context: usize,
    seed: u64,
    order: usize,
    eos: Option<u32>,
    eos_bias: f32,
    rules: Vec<Rule>,
    force_eos_at: Vec<usize>,
    fail_at_call: Option<usize>,
    shift: bool,
    delay: Option<std::time::Duration>,
    calls: AtomicUsize,
    tokens_fed: AtomicUsize,
}

/// splitmix64's finaliser: a cheap, well-mixed 64-bit hash step.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl FakeModel {
    /// A model over `vocab_size` tokens: max context 4096, seed 0, order 3, no EOS.
    pub fn new(vocab_size: usize) -> Self {
        Self {
            vocab_size,
            max_context: 4096,
            seed: 0,
            order: 3,
            eos: None,
            eos_bias: -2.0,
            rules: Vec::new(),
            force_eos_at: Vec::new(),
            fail_at_call: None,
            shift: true,
            delay: None,
            calls: AtomicUsize::new(0),
            tokens_fed: AtomicUsize::new(0),
        }
    }

    /// Sleep `delay` in every forward call: a model slow enough to keep requests
    /// running while a test looks at queues, cancellation and concurrency.
    pub fn with_forward_delay(mut self, delay: std::time::Duration) -> Self {
        self.delay = Some(delay);
        self
    }

    /// An order-1 model over [`ByteTokenizer`]'s bytes that writes a *salad*: once the
    /// text reaches `a`, `b` or `c` (a space leads to `a`), each of the three is
    /// followed by one of the other two — a collapsed vocabulary with no verbatim loop
    /// — and EOS ([`ByteTokenizer::EOS`]) is rare.
    pub fn salad(seed: u64) -> Self {
        let mut m =
            Self::new(ByteTokenizer::VOCAB_SIZE).with_seed(seed).with_order(1).with_eos(ByteTokenizer::EOS);
        for (a, b) in [(b'a', b'b'), (b'a', b'c'), (b'b', b'a'), (b'b', b'c'), (b'c', b'a'), (b'c', b'b')] {
            m = m.with_rule(&[u32::from(a)], u32::from(b), 12.0);
        }
        m.with_rule(&[u32::from(b' ')], u32::from(b'a'), 12.0)
    }

    /// Context length and the capacity of [`LanguageModel::new_cache`].
    pub fn with_max_context(mut self, positions: usize) -> Self {
        self.max_context = positions;
        self
    }

    /// Refuse [`LanguageModel::shift_cache`] (`Ok(false)`), as a backend without
    /// context shifts: the generator then re-prefills when it rolls.
    pub fn without_shift(mut self) -> Self {
        self.shift = false;
        self
    }

    /// Seed of the logit tables.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// How many trailing tokens the logits depend on (0: the same logits everywhere).
    pub fn with_order(mut self, order: usize) -> Self {
        self.order = order;
        self
    }

    /// The EOS id, whose logit gets the EOS bias (default −2, so EOS is rare).
    pub fn with_eos(mut self, id: u32) -> Self {
        self.eos = Some(id);
        self
    }

    /// Added to the EOS logit at every position.
    pub fn with_eos_bias(mut self, bias: f32) -> Self {
        self.eos_bias = bias;
        self
    }

    /// When the cached sequence ends with `context`, add `boost` to `next`'s logit
    /// (`boost = 100` makes `next` certain).
    pub fn with_rule(mut self, context: &[u32], next: u32, boost: f32) -> Self {
        self.rules.push(Rule { context: context.to_vec(), next, boost });
        self
    }

    /// Make the EOS logit 50 (EOS certain, unless masked) for the token at sequence
    /// position `position` — i.e. when the cache holds `position` tokens. For a prompt
    /// of `p` tokens, generated index `i` is position `p + i`.
    pub fn force_eos_at(mut self, position: usize) -> Self {
        self.force_eos_at.push(position);
        self
    }

    /// Fail the forward call with 0-based index `call` with
    /// [`FakeError::InjectedFailure`] (the cache is left untouched).
    pub fn fail_at_call(mut self, call: usize) -> Self {
        self.fail_at_call = Some(call);
        self
    }

    /// Forward calls so far (including failed ones).
    pub fn forward_calls(&self) -> usize {
        self.calls.load(Ordering::Relaxed)
    }

    /// Tokens fed by successful forward calls so far.
    pub fn tokens_fed(&self) -> usize {
        self.tokens_fed.load(Ordering::Relaxed)
    }

    /// Reset both counters (the injected failure then counts from 0 again).
    pub fn reset_counters(&self) {
        self.calls.store(0, Ordering::Relaxed);
        self.tokens_fed.store(0, Ordering::Relaxed);
    }

    /// The logits after the cached sequence `tokens`.
    pub fn logits_for(&self, tokens: &[u32], out: &mut Vec<f32>) {
        let context = &tokens[tokens.len().saturating_sub(self.order)..];
        let h = context.iter().fold(mix(self.seed), |h, &t| mix(h ^ u64::from(t)));
        out.clear();
        out.extend((0..self.vocab_size as u64).map(|i| {
            let x = mix(h ^ i.wrapping_mul(0xA24B_AED4_963E_E407));
            // Top 24 bits → [0, 1) → [-4, 4).
            (x >> 40) as f32 / (1u64 << 24) as f32 * 8.0 - 4.0
        }));
        for rule in &self.rules {
            if tokens.ends_with(&rule.context)
                && let Some(l) = out.get_mut(rule.next as usize)
            {
                *l += rule.boost;
            }
        }
        if let Some(eos) = self.eos
            && let Some(l) = out.get_mut(eos as usize)
        {
            *l = if self.force_eos_at.contains(&tokens.len()) { 50.0 } else { *l + self.eos_bias };
        }
    }
}

impl LanguageModel for FakeModel {
    type Cache = FakeCache;
    type Error = FakeError;

    fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    fn max_context(&self) -> usize {
        self.max_context
    }

    fn new_cache(&self) -> Result<FakeCache, FakeError> {
        Ok(FakeCache::with_capacity(self.max_context))
    }

    fn forward(&self, tokens: &[u32], cache: &mut FakeCache, out: &mut Vec<f32>) -> Result<(), FakeError> {
        if let Some(delay) = self.delay {
            std::thread::sleep(delay);
        }
        let call = self.calls.fetch_add(1, Ordering::Relaxed);
        if self.fail_at_call == Some(call) {
            return Err(FakeError::InjectedFailure { call });
        }
        if tokens.is_empty() {
            return Err(FakeError::EmptyInput);
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= self.vocab_size) {
            return Err(FakeError::TokenOutOfVocabulary { id, vocab_size: self.vocab_size });
        }
        let needed = cache.tokens.len() + tokens.len();
        if needed > cache.capacity {
            return Err(FakeError::Cache(CacheError::CapacityExceeded { needed, capacity: cache.capacity }));
        }
        cache.tokens.extend_from_slice(tokens);
        self.tokens_fed.fetch_add(tokens.len(), Ordering::Relaxed);
        self.logits_for(&cache.tokens, out);
        Ok(())
    }

    /// Exact (the logits depend only on the held tokens): the same as re-prefilling
    /// the kept tokens. Feeds nothing.
    fn shift_cache(&self, cache: &mut FakeCache, start: usize, n: usize) -> Result<bool, FakeError> {
        if !self.shift {
            return Ok(false);
        }
        let len = cache.tokens.len();
        if start.checked_add(n).is_none_or(|end| end > len) {
            return Err(FakeError::Cache(CacheError::ShiftBeyondLength { start, n, len }));
        }
        cache.tokens.drain(start..start + n);
        Ok(true)
    }
}

impl CacheHarness for FakeModel {
    type Cache = FakeCache;
    type Error = FakeError;

    fn new_cache(&mut self) -> Result<FakeCache, FakeError> {
        LanguageModel::new_cache(self)
    }

    fn new_cache_with_capacity(&mut self, capacity: usize) -> Result<FakeCache, FakeError> {
        Ok(FakeCache::with_capacity(capacity))
    }

    fn feed(&mut self, cache: &mut FakeCache, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), FakeError> {
        self.forward(tokens, cache, out)
    }

    fn shift(&mut self, cache: &mut FakeCache, start: usize, n: usize) -> Result<bool, FakeError> {
        self.shift_cache(cache, start, n)
    }
}

/// Runs the kv-cache conformance kit on any [`LanguageModel`]: `feed` is `forward`,
/// `shift` is `shift_cache`, caches come from `new_cache` and, for the capacity check,
/// [`LanguageModel::new_cache_with_capacity`] (a backend that does not size its caches
/// makes the check fill its default capacity). Both backends' conformance tests use it.
#[derive(Debug)]
pub struct ModelHarness<M>(pub M);

impl<M: LanguageModel> CacheHarness for ModelHarness<M> {
    type Cache = M::Cache;
    type Error = M::Error;

    fn new_cache(&mut self) -> Result<M::Cache, M::Error> {
        self.0.new_cache()
    }

    fn new_cache_with_capacity(&mut self, capacity: usize) -> Result<M::Cache, M::Error> {
        self.0.new_cache_with_capacity(capacity)
    }

    fn feed(&mut self, cache: &mut M::Cache, tokens: &[u32], out: &mut Vec<f32>) -> Result<(), M::Error> {
        self.0.forward(tokens, cache, out)
    }

    fn shift(&mut self, cache: &mut M::Cache, start: usize, n: usize) -> Result<bool, M::Error> {
        self.0.shift_cache(cache, start, n)
    }
}

/// Why [`check_batch_isolation`] failed.
#[derive(Debug, Error)]
pub enum BatchIsolationError {
    /// A forward pass, batched or solo, failed (or a fork or truncation did).
    #[error("{what}: {source}")]
    Model {
        /// Which call.
        what: &'static str,
        /// What failed.
        source: BoxError,
    },
    /// A sequence's logits (or cache length) in the batch differ from its solo run by
    /// more than the tolerance.
    #[error("pass {pass}, sequence {sequence}: {detail}")]
    Diverged {
        /// Which batched pass (0: the ragged prefills).
        pass: usize,
        /// Which sequence.
        sequence: usize,
        /// The difference found.
        detail: String,
    },
    /// `tokens` has fewer than 8 ids.
    #[error("batch isolation needs at least 8 token ids, got {0}")]
    TooFewTokens(usize),
}

/// The batch half of the cache contract, for any [`LanguageModel`]: several sequences in
/// one [`LanguageModel::forward_batch`] — ragged prefills, then single tokens — each
/// with its own cache, while between passes one sequence is truncated, one forked (the
/// fork joins the batch) and one rolled by a context shift (where the backend shifts):
/// every sequence's logits and cache length equal its solo run's (fed with
/// [`LanguageModel::forward`] on its own cache, which sees the same truncations, forks
/// and shifts) within `tolerance`. Returns the largest difference seen.
///
/// ```
/// use perpetua_generator::testing::{FakeModel, check_batch_isolation};
///
/// let tokens: Vec<u32> = (1..=16).collect();
/// assert_eq!(check_batch_isolation(&FakeModel::new(64), &tokens, 0.0)?, 0.0);
/// # Ok::<(), perpetua_generator::testing::BatchIsolationError>(())
/// ```
///
/// Errors: [`BatchIsolationError::Diverged`] naming the pass and sequence,
/// [`BatchIsolationError::Model`] when a call fails, fewer than 8 `tokens`.
pub fn check_batch_isolation<M: LanguageModel>(
    model: &M,
    tokens: &[u32],
    tolerance: f32,
) -> Result<f32, BatchIsolationError>
where
    M::Cache: ForkableCache,
{
    let n = tokens.len();
    if n < 8 {
        return Err(BatchIsolationError::TooFewTokens(n));
    }
    let fail = |what: &'static str| move |e: BoxError| BatchIsolationError::Model { what, source: e };
    let boxed = |e: M::Error| -> BoxError { Box::new(e) };
    // Three ragged prompts: the first half, all of it, the second half reversed.
    let mut feeds: Vec<Vec<u32>> =
        vec![tokens[..n / 2].to_vec(), tokens.to_vec(), tokens[n / 2..].iter().rev().copied().collect()];
    let mut batch: Vec<M::Cache> = Vec::new();
    let mut solo: Vec<M::Cache> = Vec::new();
    for _ in 0..feeds.len() {
        batch.push(model.new_cache().map_err(boxed).map_err(fail("new_cache"))?);
        solo.push(model.new_cache().map_err(boxed).map_err(fail("new_cache"))?);
    }
    let (mut out, mut row, mut worst) = (Vec::new(), Vec::new(), 0.0_f32);
    for pass in 0..4 {
        match pass {
            // Truncate sequence 1 by two positions.
            1 => {
                let len = batch[1].seq_len() - 2;
                batch[1].truncate(len).map_err(|e| fail("truncate")(Box::new(e)))?;
                solo[1].truncate(len).map_err(|e| fail("truncate")(Box::new(e)))?;
            }
            // Fork sequence 0; the fork joins the batch.
            2 => {
                batch.push(batch[0].fork().map_err(|e| fail("fork")(Box::new(e)))?);
                solo.push(solo[0].fork().map_err(|e| fail("fork")(Box::new(e)))?);
                feeds.push(Vec::new());
            }
            // Roll sequence 2: drop positions 1..3 (where the backend shifts).
            3 => {
                let shifted =
                    model.shift_cache(&mut batch[2], 1, 2).map_err(boxed).map_err(fail("shift_cache"))?;
                if shifted {
                    model.shift_cache(&mut solo[2], 1, 2).map_err(boxed).map_err(fail("shift_cache"))?;
                }
            }
            _ => {}
        }
        if pass > 0 {
            for (s, feed) in feeds.iter_mut().enumerate() {
                *feed = vec![tokens[(pass * 3 + s) % n]];
            }
        }
        let mut items: Vec<crate::BatchItem<'_, M::Cache>> = feeds
            .iter()
            .zip(batch.iter_mut())
            .map(|(t, cache)| crate::BatchItem { tokens: t, cache })
            .collect();
        model.forward_batch(&mut items, &mut out).map_err(|e| fail("forward_batch")(Box::new(e)))?;
        let vocab = model.vocab_size();
        for (s, feed) in feeds.iter().enumerate() {
            model.forward(feed, &mut solo[s], &mut row).map_err(boxed).map_err(fail("forward"))?;
            let got = out.get(s * vocab..(s + 1) * vocab).unwrap_or_default();
            let diverged = |detail: String| BatchIsolationError::Diverged { pass, sequence: s, detail };
            if got.len() != row.len() {
                return Err(diverged(format!("{} logits against {}", got.len(), row.len())));
            }
            let (diff, at) = perpetua_kv_cache::testing::max_abs_diff(got, &row);
            worst = worst.max(diff);
            if diff.is_nan() || diff > tolerance {
                return Err(diverged(format!("logit {at} differs by {diff} (tolerance {tolerance})")));
            }
            if batch[s].seq_len() != solo[s].seq_len() {
                return Err(diverged(format!(
                    "cache length {} against {}",
                    batch[s].seq_len(),
                    solo[s].seq_len()
                )));
            }
        }
    }
    Ok(worst)
}

/// Every byte value, so [`ByteTokenizer::token_bytes`] borrows instead of allocating.
static BYTES: [u8; 256] = {
    let mut b = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        b[i] = i as u8;
        i += 1;
    }
    b
};

/// A byte-level tokenizer: ids `0..=255` are bytes, [`BOS`](Self::BOS) is `<s>`,
/// [`EOS`](Self::EOS) is `</s>`. Multi-byte characters span several tokens, so text
/// deltas and stop strings across token boundaries are testable.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteTokenizer;

impl ByteTokenizer {
    /// Beginning of sequence, text `<s>`.
    pub const BOS: u32 = 256;
    /// End of sequence, text `</s>`.
    pub const EOS: u32 = 257;
    /// 256 bytes + BOS + EOS.
    pub const VOCAB_SIZE: usize = 258;

    /// The tokenizer.
    pub fn new() -> Self {
        Self
    }
}

impl Tokenizer for ByteTokenizer {
    /// Bytes of `text`; the literal texts `<s>` and `</s>` become BOS and EOS.
    /// `add_special` prepends BOS.
    fn encode(&self, text: &str, add_special: bool) -> Result<Vec<u32>, BoxError> {
        let b = text.as_bytes();
        let mut ids = Vec::with_capacity(b.len() + 1);
        if add_special {
            ids.push(Self::BOS);
        }
        let mut i = 0;
        while i < b.len() {
            if b[i..].starts_with(b"</s>") {
                ids.push(Self::EOS);
                i += 4;
            } else if b[i..].starts_with(b"<s>") {
                ids.push(Self::BOS);
                i += 3;
            } else {
                ids.push(u32::from(b[i]));
                i += 1;
            }
        }
        Ok(ids)
    }

    fn token_bytes(&self, id: u32) -> Option<Cow<'_, [u8]>> {
        match id {
            0..=255 => {
                let i = id as usize;
                Some(Cow::Borrowed(&BYTES[i..=i]))
            }
            Self::BOS => Some(Cow::Borrowed(b"<s>")),
            Self::EOS => Some(Cow::Borrowed(b"</s>")),
            _ => None,
        }
    }

    fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String, BoxError> {
        let mut bytes = Vec::with_capacity(ids.len());
        for &id in ids {
            if skip_special && self.is_special(id) {
                continue;
            }
            let b = self.token_bytes(id).ok_or_else(|| format!("token id {id} is outside the vocabulary"))?;
            bytes.extend_from_slice(&b);
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn is_special(&self, id: u32) -> bool {
        id == Self::BOS || id == Self::EOS
    }

    fn eos_ids(&self) -> &[u32] {
        &[Self::EOS]
    }

    /// `<s>` then `role: content\n` per message, then `assistant: ` when
    /// `add_generation_prompt`.
    fn apply_chat_template(
        &self,
        messages: &[ChatMessage],
        add_generation_prompt: bool,
    ) -> Option<Result<String, BoxError>> {
        let mut s = String::from("<s>");
        for m in messages {
            s.push_str(&m.role);
            s.push_str(": ");
            s.push_str(&m.content);
            s.push('\n');
        }
        if add_generation_prompt {
            s.push_str("assistant: ");
        }
        Some(Ok(s))
    }
}
