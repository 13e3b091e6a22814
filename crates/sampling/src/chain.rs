use rand::RngCore;

use crate::processors::{RepetitionPenalty, Temperature, TopP};
use crate::samplers::Multinomial;
use crate::{Candidates, LogitsProcessor, Result, Sampler, SamplingContext, SamplingError};

/// Ordered processors followed by a sampler: the whole per-step sampling pipeline.
///
/// The chain owns its [`Candidates`] buffer, so a step allocates nothing once the
/// buffer has grown to the vocabulary size.
///
/// A chain runs its processors in exactly the order they were added: reorder freely
/// ([`insert`](Self::insert), [`remove`](Self::remove), [`move_stage`](Self::move_stage))
/// and put custom stages (a [`LogitsProcessor`] impl or
/// [`from_fn`](crate::processors::from_fn)) anywhere. [`ChainBuilder`] assembles the
/// standard stages in the default order documented on [`Stage`].
pub struct Chain {
    processors: Vec<Box<dyn LogitsProcessor>>,
    sampler: Box<dyn Sampler>,
    candidates: Candidates,
    non_finite: NonFinitePolicy,
    sanitized: usize,
}

/// What a [`Chain`] does with NaN and `+inf` logits from the model.
///
/// The default is [`Error`](Self::Error): a model that emits NaN is broken, and
/// sampling from a repaired distribution would silently pick tokens the model never
/// meant. [`Sanitize`](Self::Sanitize) is the opt-in repair of HF's
/// `InfNanRemoveLogitsProcessor` (`remove_invalid_values=True`; see
/// [`sanitize_logits`](crate::sanitize_logits) for the exact rule), and it is counted, never
/// silent: [`Chain::last_sanitized`] tells how many logits the last step repaired (the
/// generator sums them into `Counts::sanitized_logits`). `-inf` is always allowed: it
/// means "masked".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum NonFinitePolicy {
    /// A NaN logit is [`SamplingError::NanLogit`], `+inf` is
    /// [`SamplingError::InfiniteLogit`] (the default).
    #[default]
    Error,
    /// NaN → `-inf` (masked, never chosen); `+inf` tokens take all the mass (shared
    /// equally); if nothing finite is left, [`SamplingError::EmptyCandidates`] with stage
    /// `"sanitize_non_finite"`.
    Sanitize,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("processors", &self.processors.iter().map(|p| p.name()).collect::<Vec<_>>())
            .field("sampler", &self.sampler.name())
            .finish()
    }
}

impl Chain {
    /// A chain with no processors and the given sampler.
    pub fn new(sampler: impl Sampler + 'static) -> Self {
        Self::from_boxed(Box::new(sampler))
    }

    /// A chain with no processors and an already boxed sampler.
    pub fn from_boxed(sampler: Box<dyn Sampler>) -> Self {
        Self {
            processors: Vec::new(),
            sampler,
            candidates: Candidates::default(),
            non_finite: NonFinitePolicy::Error,
            sanitized: 0,
        }
    }

    /// Set the [`NonFinitePolicy`] (builder style).
    ///
    /// ```
    /// use perpetua_sampling::{Chain, NonFinitePolicy, SamplingContext, SamplingError, samplers::Greedy};
    /// let logits = [0.5_f32, f32::NAN, 2.0];
    /// let ctx = SamplingContext::new(&[], 0);
    /// let mut strict = Chain::new(Greedy);
    /// assert_eq!(strict.process(&logits, &ctx).err(), Some(SamplingError::NanLogit { id: 1 }));
    /// let mut lenient = Chain::new(Greedy).with_non_finite_policy(NonFinitePolicy::Sanitize);
    /// assert_eq!(lenient.process(&logits, &ctx)?.finite_len(), 2); // the NaN token is masked
    /// assert_eq!(lenient.last_sanitized(), 1);
    /// # Ok::<(), SamplingError>(())
    /// ```
    pub fn with_non_finite_policy(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// Set the [`NonFinitePolicy`].
    pub fn set_non_finite_policy(&mut self, policy: NonFinitePolicy) {
        self.non_finite = policy;
    }

    /// The [`NonFinitePolicy`] in force.
    pub fn non_finite_policy(&self) -> NonFinitePolicy {
        self.non_finite
    }

    /// How many logits the last [`process`](Self::process) repaired under
    /// [`NonFinitePolicy::Sanitize`] (always 0 under `Error`).
    pub fn last_sanitized(&self) -> usize {
        self.sanitized
    }

    /// Append a processor (builder style).
    pub fn with(mut self, processor: impl LogitsProcessor + 'static) -> Self {
        self.processors.push(Box::new(processor));
        self
    }

    /// Append a processor.
    pub fn push(&mut self, processor: Box<dyn LogitsProcessor>) {
        self.processors.push(processor);
    }

    /// Insert a processor at `index` (clamped to the end).
    pub fn insert(&mut self, index: usize, processor: Box<dyn LogitsProcessor>) {
        let index = index.min(self.processors.len());
        self.processors.insert(index, processor);
    }

    /// Remove and return the processor at `index` (`None` when out of range). With
    /// [`insert`](Self::insert) and [`position`](Self::position) this reorders freely.
    pub fn remove(&mut self, index: usize) -> Option<Box<dyn LogitsProcessor>> {
        (index < self.processors.len()).then(|| self.processors.remove(index))
    }

    /// The index of the first processor named `name` (see [`LogitsProcessor::name`]).
    pub fn position(&self, name: &str) -> Option<usize> {
        self.processors.iter().position(|p| p.name() == name)
    }

    /// Move the processor at `from` to index `to` (clamped to the end); the others
    /// keep their relative order. Out-of-range `from` is a no-op.
    pub fn move_stage(&mut self, from: usize, to: usize) {
        if let Some(p) = self.remove(from) {
            self.insert(to, p);
        }
    }

    /// Number of processors (the sampler not counted).
    pub fn len(&self) -> usize {
        self.processors.len()
    }

    /// Whether the chain has no processor (it still samples).
    pub fn is_empty(&self) -> bool {
        self.processors.is_empty()
    }

    /// Replace the sampler.
    pub fn set_sampler(&mut self, sampler: Box<dyn Sampler>) {
        self.sampler = sampler;
    }

    /// The sampler's name.
    pub fn sampler_name(&self) -> &'static str {
        self.sampler.name()
    }

    /// The temperature of the first temperature stage, or 1.0 when there is none
    /// (the model's own distribution). Perpetual schedules scale from this base.
    pub fn base_temperature(&self) -> f32 {
        self.processors.iter().find_map(|p| p.temperature()).unwrap_or(1.0)
    }

    /// Make sure a temperature stage exists, so that a temperature *override* (the
    /// schedules of the perpetual EOS strategies, via
    /// [`SamplingContext::with_temperature_override`]) has a stage to act on: when no
    /// processor reports a [`temperature`](crate::LogitsProcessor::temperature), insert
    /// `Temperature(1.0)` where HF's order puts temperature — before the first
    /// truncation stage (top-k, top-p, min-p, typical, top-nσ, ε/η cutoffs, XTC), else
    /// last. A temperature of 1 leaves the distribution unchanged, so without an
    /// override nothing changes. Returns whether a stage was inserted. The
    /// [`Generator`](https://docs.rs/perpetua-generator) calls it before every run:
    /// chains built from [`SamplingConfig`](crate::SamplingConfig) with
    /// `temperature = 1` have no temperature stage (HF skips no-op warpers).
    ///
    /// ```
    /// use perpetua_sampling::{Chain, processors::TopK, samplers::Multinomial};
    /// let mut chain = Chain::new(Multinomial).with(TopK::new(20)?);
    /// assert!(chain.ensure_temperature_stage());
    /// assert_eq!(chain.stage_names().collect::<Vec<_>>(), ["temperature", "top_k"]);
    /// assert!(!chain.ensure_temperature_stage()); // already there
    /// # Ok::<(), perpetua_sampling::SamplingError>(())
    /// ```
    pub fn ensure_temperature_stage(&mut self) -> bool {
        if self.processors.iter().any(|p| p.temperature().is_some()) {
            return false;
        }
        let at = self
            .processors
            .iter()
            .position(|p| p.stage().is_some_and(Stage::is_truncation))
            .unwrap_or(self.processors.len());
        // 1.0 is a valid temperature: `new` cannot fail here, but never panic.
        match crate::processors::Temperature::new(1.0) {
            Ok(t) => {
                self.processors.insert(at, Box::new(t));
                true
            }
            Err(_) => false,
        }
    }

    /// The processors' standard stages in order (`None` for custom stages).
    pub fn stages(&self) -> impl Iterator<Item = Option<Stage>> + '_ {
        self.processors.iter().map(|p| p.stage())
    }

    /// The processors' names in order.
    pub fn stage_names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.processors.iter().map(|p| p.name())
    }

    /// Run every processor on `logits` and return the surviving candidates (not yet
    /// sampled). Errors: NaN / `+inf` logits (unless the [`NonFinitePolicy`] is
    /// `Sanitize`), a processor error, or an empty set.
    ///
    /// A temperature stage directly followed by top-k runs *after* it: the two commute
    /// (top-k keeps the same ranks whatever positive scale the logits have), and
    /// rescaling 40 survivors instead of the whole vocabulary is most of a step's cost
    /// at 49k logits. [`stage_names`](Self::stage_names) still shows the configured order.
    pub fn process(&mut self, logits: &[f32], ctx: &SamplingContext<'_>) -> Result<&mut Candidates> {
        match self.non_finite {
            NonFinitePolicy::Error => {
                self.sanitized = 0;
                self.candidates.fill_from_logits(logits)?;
            }
            NonFinitePolicy::Sanitize => {
                self.sanitized = self.candidates.fill_from_logits_sanitized(logits);
                if self.sanitized > 0 && self.candidates.finite_len() == 0 {
                    return Err(SamplingError::EmptyCandidates { stage: "sanitize_non_finite" });
                }
            }
        }
        self.run_processors(ctx)
    }

    /// [`process`](Self::process) for a caller that has already applied the
    /// [`NonFinitePolicy`] itself (the generator sanitises once, before its own
    /// statistics): no second repair pass; a NaN / `+inf` left is still an error, as
    /// under `Error`. [`last_sanitized`](Self::last_sanitized) is then 0.
    pub fn process_clean(&mut self, logits: &[f32], ctx: &SamplingContext<'_>) -> Result<&mut Candidates> {
        self.sanitized = 0;
        self.candidates.fill_from_logits(logits)?;
        self.run_processors(ctx)
    }

    fn run_processors(&mut self, ctx: &SamplingContext<'_>) -> Result<&mut Candidates> {
        let mut i = 0;
        while i < self.processors.len() {
            let swap = self.processors[i].is_monotone_rescale()
                && self.processors.get(i + 1).is_some_and(|next| next.depends_only_on_rank());
            let order = if swap { [i + 1, i] } else { [i, usize::MAX] };
            for j in order.into_iter().filter(|&j| j != usize::MAX) {
                let p = &mut self.processors[j];
                p.process(&mut self.candidates, ctx)?;
                if self.candidates.is_empty() {
                    return Err(SamplingError::EmptyCandidates { stage: p.name() });
                }
            }
            i += if swap { 2 } else { 1 };
        }
        Ok(&mut self.candidates)
    }

    /// The candidates left by the last [`process`](Self::process).
    pub fn candidates(&self) -> &Candidates {
        &self.candidates
    }

    /// Mutable access to the candidates left by the last [`process`](Self::process).
    pub fn candidates_mut(&mut self) -> &mut Candidates {
        &mut self.candidates
    }

    /// Sample from the candidates left by the last [`process`](Self::process).
    pub fn sample_processed(&mut self, ctx: &SamplingContext<'_>, rng: &mut dyn RngCore) -> Result<u32> {
        self.sampler.sample(&mut self.candidates, ctx, rng)
    }

    /// Process then sample, one call per step. Does not call [`accept`](Self::accept):
    /// the caller does once the token is final (a perpetual strategy may replace it).
    pub fn sample(
        &mut self,
        logits: &[f32],
        ctx: &SamplingContext<'_>,
        rng: &mut dyn RngCore,
    ) -> Result<u32> {
        self.process(logits, ctx)?;
        self.sample_processed(ctx, rng)
    }

    /// Tell every stateful stage which token was finally chosen.
    pub fn accept(&mut self, token: u32) {
        for p in &mut self.processors {
            p.accept(token);
        }
        self.sampler.accept(token);
    }

    /// Reset every stage's state (a new sequence).
    pub fn reset(&mut self) {
        for p in &mut self.processors {
            p.reset();
        }
        self.sampler.reset();
    }

    /// A copy of the chain, every stage with its configuration and state (its buffer is
    /// new), so several sequences can sample side by side; `None` when a stage cannot be
    /// copied ([`LogitsProcessor::boxed_clone`]: closures, custom stages that do not
    /// implement it).
    ///
    /// ```
    /// use perpetua_sampling::processors::{Temperature, TopK};
    /// use perpetua_sampling::{ChainBuilder, Stage};
    ///
    /// let chain = ChainBuilder::new()
    ///     .stage(Stage::TopK, TopK::new(20)?)
    ///     .stage(Stage::Temperature, Temperature::new(0.8)?)
    ///     .build();
    /// let copy = chain.try_clone().expect("built-in stages copy");
    /// assert_eq!(copy.stages().collect::<Vec<_>>(), chain.stages().collect::<Vec<_>>());
    /// # Ok::<(), perpetua_sampling::SamplingError>(())
    /// ```
    pub fn try_clone(&self) -> Option<Chain> {
        Some(Self {
            processors: self.processors.iter().map(|p| p.boxed_clone()).collect::<Option<Vec<_>>>()?,
            sampler: self.sampler.boxed_clone()?,
            candidates: Candidates::default(),
            non_finite: self.non_finite,
            sanitized: 0,
        })
    }
}

/// The standard stages, in the default order of [`ChainBuilder`] (the order of the
/// variants; `Ord` follows it).
///
/// The order matches HF transformers' `generate`: logits *processors* (biases,
/// penalties, bans, length constraints) act on the model's raw logits, then the
/// *warpers* run: temperature → top-k → top-p → min-p → typical → ε → η. Penalties
/// first means a penalised token is also judged by the truncation stages after its
/// penalty; temperature before truncation means top-p/min-p see the tempered
/// distribution (HF; llama.cpp's default instead tempers last). The stages HF lacks
/// sit where llama.cpp puts them relative to their neighbours: frequency/presence and
/// DRY after the repetition penalty, top-nσ and XTC after the other truncations.
///
/// | # | stage | HF name / origin |
/// |---|-------|------------------|
/// | 1 | [`LogitBias`](Stage::LogitBias) | `sequence_bias` (1-token), OpenAI `logit_bias` |
/// | 2 | [`RepetitionPenalty`](Stage::RepetitionPenalty) | `repetition_penalty` |
/// | 3 | [`FrequencyPresencePenalty`](Stage::FrequencyPresencePenalty) | OpenAI |
/// | 4 | [`Dry`](Stage::Dry) | llama.cpp |
/// | 5 | [`NoRepeatNGram`](Stage::NoRepeatNGram) | `no_repeat_ngram_size` |
/// | 6 | [`BannedTokens`](Stage::BannedTokens) | `suppress_tokens` |
/// | 7 | [`BannedSequences`](Stage::BannedSequences) | `bad_words_ids` |
/// | 8 | [`AllowList`](Stage::AllowList) | vLLM `allowed_token_ids` |
/// | 9 | [`MinNewTokens`](Stage::MinNewTokens) | `min_new_tokens` |
/// | 10 | [`SuppressEos`](Stage::SuppressEos) | — |
/// | 11 | [`Temperature`](Stage::Temperature) | `temperature` (or dynamic temperature) |
/// | 12 | [`TopK`](Stage::TopK) | `top_k` |
/// | 13 | [`TopP`](Stage::TopP) | `top_p` |
/// | 14 | [`MinP`](Stage::MinP) | `min_p` |
/// | 15 | [`Typical`](Stage::Typical) | `typical_p` |
/// | 16 | [`EpsilonCutoff`](Stage::EpsilonCutoff) | `epsilon_cutoff` |
/// | 17 | [`EtaCutoff`](Stage::EtaCutoff) | `eta_cutoff` |
/// | 18 | [`TopNSigma`](Stage::TopNSigma) | llama.cpp `top_n_sigma` |
/// | 19 | [`Xtc`](Stage::Xtc) | llama.cpp XTC |
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Stage {
    /// Additive per-token bias.
    LogitBias,
    /// CTRL repetition penalty.
    RepetitionPenalty,
    /// OpenAI frequency and presence penalties.
    FrequencyPresencePenalty,
    /// DRY repeat penalty.
    Dry,
    /// No-repeat n-gram blocking.
    NoRepeatNGram,
    /// Banned tokens.
    BannedTokens,
    /// Banned token sequences.
    BannedSequences,
    /// Allow-list.
    AllowList,
    /// EOS masked before a minimum number of new tokens.
    MinNewTokens,
    /// EOS always masked.
    SuppressEos,
    /// Temperature (fixed or dynamic).
    Temperature,
    /// Top-k truncation.
    TopK,
    /// Top-p (nucleus) truncation.
    TopP,
    /// Min-p truncation.
    MinP,
    /// Locally typical truncation.
    Typical,
    /// Epsilon cutoff.
    EpsilonCutoff,
    /// Eta cutoff.
    EtaCutoff,
    /// Top-nσ truncation.
    TopNSigma,
    /// Exclude-top-choices (XTC).
    Xtc,
}

impl Stage {
    /// A warper: temperature or a truncation (the stages that run after every
    /// processor of the raw logits).
    pub fn is_warper(self) -> bool {
        self == Stage::Temperature || self.is_truncation()
    }

    /// A truncation stage (top-k, top-p, min-p, typical, ε, η, top-nσ, XTC).
    pub fn is_truncation(self) -> bool {
        matches!(
            self,
            Stage::TopK
                | Stage::TopP
                | Stage::MinP
                | Stage::Typical
                | Stage::EpsilonCutoff
                | Stage::EtaCutoff
                | Stage::TopNSigma
                | Stage::Xtc
        )
    }

    /// Every stage, in the default order.
    pub const ALL: [Stage; 19] = [
        Stage::LogitBias,
        Stage::RepetitionPenalty,
        Stage::FrequencyPresencePenalty,
        Stage::Dry,
        Stage::NoRepeatNGram,
        Stage::BannedTokens,
        Stage::BannedSequences,
        Stage::AllowList,
        Stage::MinNewTokens,
        Stage::SuppressEos,
        Stage::Temperature,
        Stage::TopK,
        Stage::TopP,
        Stage::MinP,
        Stage::Typical,
        Stage::EpsilonCutoff,
        Stage::EtaCutoff,
        Stage::TopNSigma,
        Stage::Xtc,
    ];
}

/// Where a custom stage goes relative to a standard one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Anchor {
    Before(Stage),
    After(Stage),
}

/// Assembles a [`Chain`] from standard stages in the default order of [`Stage`], plus
/// custom stages anchored before or after any standard stage (whether or not that
/// stage is set).
///
/// Setting a stage twice replaces it. Without a sampler, [`build`](Self::build) uses
/// [`Multinomial`]. For an order other than the default, build and then reorder the
/// [`Chain`], or assemble a chain by hand with [`Chain::with`].
///
/// ```
/// use perpetua_sampling::{ChainBuilder, Stage, processors::{RepetitionPenalty, Temperature, TopK, from_fn}};
///
/// let chain = ChainBuilder::new()
///     .stage(Stage::TopK, TopK::new(40)?)
///     .stage(Stage::Temperature, Temperature::new(0.8)?)
///     .stage(Stage::RepetitionPenalty, RepetitionPenalty::new(1.1)?.with_last_n(64))
///     .after(Stage::TopK, from_fn("log", |_c, _ctx| Ok(())))
///     .build();
/// let names: Vec<_> = chain.stage_names().collect();
/// assert_eq!(names, ["repetition_penalty", "temperature", "top_k", "log"]);
/// # Ok::<(), perpetua_sampling::SamplingError>(())
/// ```
#[derive(Default)]
pub struct ChainBuilder {
    stages: Vec<(Stage, Box<dyn LogitsProcessor>)>,
    custom: Vec<(Anchor, Box<dyn LogitsProcessor>)>,
    sampler: Option<Box<dyn Sampler>>,
    non_finite: NonFinitePolicy,
}

impl std::fmt::Debug for ChainBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainBuilder")
            .field("stages", &self.stages.iter().map(|(s, p)| (*s, p.name())).collect::<Vec<_>>())
            .field("custom", &self.custom.iter().map(|(a, p)| (*a, p.name())).collect::<Vec<_>>())
            .field("sampler", &self.sampler.as_ref().map(|s| s.name()))
            .finish()
    }
}

impl ChainBuilder {
    /// An empty builder (no stages; multinomial sampling).
    pub fn new() -> Self {
        Self::default()
    }

    /// The [`NonFinitePolicy`] of the built chain (default `Error`).
    pub fn non_finite_policy(mut self, policy: NonFinitePolicy) -> Self {
        self.non_finite = policy;
        self
    }

    /// Set (or replace) the standard stage `stage`.
    pub fn stage(self, stage: Stage, processor: impl LogitsProcessor + 'static) -> Self {
        self.stage_boxed(stage, Box::new(processor))
    }

    /// Set (or replace) the standard stage `stage` with a boxed processor.
    pub fn stage_boxed(mut self, stage: Stage, processor: Box<dyn LogitsProcessor>) -> Self {
        self.stages.retain(|(s, _)| *s != stage);
        self.stages.push((stage, processor));
        self
    }

    /// Remove the standard stage `stage` if set.
    pub fn without(mut self, stage: Stage) -> Self {
        self.stages.retain(|(s, _)| *s != stage);
        self
    }

    /// Whether the standard stage `stage` is set.
    pub fn has(&self, stage: Stage) -> bool {
        self.stages.iter().any(|(s, _)| *s == stage)
    }

    /// A custom stage right before `stage`'s position (after earlier custom stages
    /// anchored there).
    pub fn before(mut self, stage: Stage, processor: impl LogitsProcessor + 'static) -> Self {
        self.custom.push((Anchor::Before(stage), Box::new(processor)));
        self
    }

    /// A custom stage right after `stage`'s position (after earlier custom stages
    /// anchored there).
    pub fn after(mut self, stage: Stage, processor: impl LogitsProcessor + 'static) -> Self {
        self.custom.push((Anchor::After(stage), Box::new(processor)));
        self
    }

    /// The sampler (default [`Multinomial`]).
    pub fn sampler(mut self, sampler: impl Sampler + 'static) -> Self {
        self.sampler = Some(Box::new(sampler));
        self
    }

    /// The sampler, boxed.
    pub fn sampler_boxed(mut self, sampler: Box<dyn Sampler>) -> Self {
        self.sampler = Some(sampler);
        self
    }

    /// The chain: for each [`Stage`] in order, its `before` customs, the stage, its
    /// `after` customs.
    pub fn build(self) -> Chain {
        let mut chain = Chain::from_boxed(self.sampler.unwrap_or_else(|| Box::new(Multinomial)))
            .with_non_finite_policy(self.non_finite);
        let mut stages: Vec<Option<(Stage, Box<dyn LogitsProcessor>)>> =
            self.stages.into_iter().map(Some).collect();
        let mut custom: Vec<Option<(Anchor, Box<dyn LogitsProcessor>)>> =
            self.custom.into_iter().map(Some).collect();
        let mut take_custom = |anchor: Anchor, chain: &mut Chain| {
            for slot in custom.iter_mut() {
                if slot.as_ref().is_some_and(|(a, _)| *a == anchor)
                    && let Some((_, p)) = slot.take()
                {
                    chain.push(p);
                }
            }
        };
        for stage in Stage::ALL {
            take_custom(Anchor::Before(stage), &mut chain);
            if let Some(slot) = stages.iter_mut().find(|s| s.as_ref().is_some_and(|(s, _)| *s == stage))
                && let Some((_, p)) = slot.take()
            {
                chain.push(p);
            }
            take_custom(Anchor::After(stage), &mut chain);
        }
        chain
    }
}

/// Ready-made settings: temperature, top-p and repetition penalty (over the whole
/// history, prompt included), multinomial sampling.
///
/// | preset | temperature | top-p | repetition |
/// |--------|-------------|-------|------------|
/// | [`Conservative`](Preset::Conservative) | 0.3 | 0.85 | 1.1 |
/// | [`Balanced`](Preset::Balanced) | 0.8 | 0.9 | 1.2 |
/// | [`Creative`](Preset::Creative) | 1.2 | 0.95 | 1.3 |
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Preset {
    /// Focused, near-deterministic text.
    Conservative,
    /// General use.
    Balanced,
    /// Varied, surprising text.
    Creative,
}

impl Preset {
    /// The preset's temperature.
    pub fn temperature(self) -> f32 {
        match self {
            Preset::Conservative => 0.3,
            Preset::Balanced => 0.8,
            Preset::Creative => 1.2,
        }
    }

    /// The preset's top-p.
    pub fn top_p(self) -> f32 {
        match self {
            Preset::Conservative => 0.85,
            Preset::Balanced => 0.9,
            Preset::Creative => 0.95,
        }
    }

    /// The preset's repetition penalty.
    pub fn repetition_penalty(self) -> f32 {
        match self {
            Preset::Conservative => 1.1,
            Preset::Balanced => 1.2,
            Preset::Creative => 1.3,
        }
    }

    /// A builder holding the preset's stages; add or replace stages before building.
    // The preset constants lie inside every constructor's domain (temperature ≥ 0,
    // 0 < top-p ≤ 1, penalty > 0; all finite), so these constructors cannot fail;
    // `presets_build_with_their_values` checks each preset.
    #[allow(clippy::expect_used)]
    pub fn builder(self) -> ChainBuilder {
        ChainBuilder::new()
            .stage(
                Stage::RepetitionPenalty,
                RepetitionPenalty::new(self.repetition_penalty()).expect("preset penalty is valid"),
            )
            .stage(
                Stage::Temperature,
                Temperature::new(self.temperature()).expect("preset temperature is valid"),
            )
            .stage(Stage::TopP, TopP::new(self.top_p()).expect("preset top-p is valid"))
    }

    /// The preset's chain.
    pub fn chain(self) -> Chain {
        self.builder().build()
    }
}
