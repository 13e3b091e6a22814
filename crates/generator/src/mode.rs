//! Perpetual modes: an EOS method plus the tools that keep perpetual text fresh, by
//! name (`"dynamic+dry+loop"`, for CLIs, configs and evaluation tables) or in one line
//! of Rust ([`GeneratorBuilder::perpetual`](crate::GeneratorBuilder::perpetual)).
//!
//! A mode is what a user asks for ("keep writing, and keep it fresh"); it expands to
//! an [`EosStrategy`] (the EOS method, wrapped by [`LoopBackstep`] and [`Anticipation`]
//! when asked) and sampling stages inserted into the chain at build time (DRY, whose
//! sequence breakers are strings encoded with the generator's tokenizer; a windowed
//! repetition penalty).
//!
//! ```
//! use perpetua_generator::{EosMethod, PerpetualMode};
//!
//! let mode = PerpetualMode::parse("dynamic+dry+loop")?;
//! assert_eq!(mode.method, EosMethod::Dynamic);
//! assert!(mode.dry.is_some() && mode.loop_detection.is_some() && mode.anticipation.is_none());
//! assert_eq!(mode.spec(), "dynamic+dry+loop");
//! assert_eq!(PerpetualMode::parse("backstep_with_schedule+loop")?.spec(), "dynamic+loop");
//! assert!(PerpetualMode::parse("dynamic+glitter").is_err());
//! // `perpetual` is the recommended mode.
//! assert_eq!(PerpetualMode::parse("perpetual")?, PerpetualMode::recommended());
//! # Ok::<(), perpetua_generator::GenerateError>(())
//! ```

use perpetua_perpetual::{
    Anticipation, DEFAULT_TOLERANCE, EosStrategy, LoopBackstep, LoopDetection, Peak, PerpetualError,
    Staleness, StopAtEos, StrategyKind,
};
use perpetua_sampling::processors::{Dry, RepetitionPenalty, StalenessGate};
use perpetua_sampling::{Chain, LogitsProcessor, Stage};

use crate::{GenerateError, Tokenizer};

/// The EOS method of a mode: [`StrategyKind`] under the name the generator has always
/// used. Parse it from any of its names (`"dynamic".parse::<EosMethod>()`).
pub type EosMethod = StrategyKind;

/// A [`PerpetualError`] from a strategy constructor as the generator's error.
fn perpetual_err(e: PerpetualError) -> GenerateError {
    match e {
        PerpetualError::InvalidParameter { name, value, reason } => {
            GenerateError::InvalidParameter { name, value, reason }
        }
        other => GenerateError::invalid("strategy", other, "see the strategy's documentation"),
    }
}

/// Tokens a `rewind` spec part lets a stale back step reach back
/// ([`Staleness::rewind`]).
pub const DEFAULT_REWIND: usize = 256;

/// Generated tokens a `forget` spec part keeps in the model's context when a turn
/// resumes ([`PerpetualMode::forget`]).
pub const DEFAULT_RECALL: usize = 0;

/// llama.cpp's default DRY sequence breakers.
pub const DEFAULT_DRY_BREAKERS: [&str; 4] = ["\n", ":", "\"", "*"];

/// DRY ("Don't Repeat Yourself", [`Dry`]) with its sequence breakers given as strings,
/// as llama.cpp takes them. Two starting points:
/// - [`DryOptions::default`] = [`DryOptions::llama_cpp`]: llama.cpp's recommended values,
///   multiplier 0.8, base 1.75, allowed length 2, the whole context
///   (`penalty_last_n = 0`), breakers [`DEFAULT_DRY_BREAKERS`];
/// - [`DryOptions::perpetual`]: what the perpetual modes use (the spec part `dry`):
///   multiplier 0.5, allowed length 3, the rest as llama.cpp. Measured on held-out
///   prompts at 1,500–2,500 tokens (docs/EVALUATION.md): llama.cpp's values make the
///   text more diverse than the model's own but cost 15–19 % of its log-probability
///   (they also penalise the 3-token repeats natural text is full of); these keep the
///   log-probability within a few percent and still remove the verbatim repeats.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DryOptions {
    /// `dry_multiplier` (finite, >= 0; 0 = off).
    pub multiplier: f32,
    /// `dry_base` (finite, >= 1).
    pub base: f32,
    /// `dry_allowed_length`: repeats up to this length are free.
    pub allowed_length: usize,
    /// `dry_penalty_last_n`: tokens of context looked at (0 = all).
    pub penalty_last_n: usize,
    /// `dry_sequence_breakers`: repeats never extend across these strings.
    pub sequence_breakers: Vec<String>,
    /// Scale the multiplier by the staleness of the recent text
    /// ([`StalenessGate`]): `(window,
    /// low, high)`. `None`: always the full multiplier (llama.cpp's DRY).
    #[serde(default)]
    pub gate: Option<(usize, f32, f32)>,
}

impl Default for DryOptions {
    fn default() -> Self {
        Self {
            multiplier: 0.8,
            base: 1.75,
            allowed_length: 2,
            penalty_last_n: 0,
            sequence_breakers: DEFAULT_DRY_BREAKERS.map(String::from).to_vec(),
            gate: None,
        }
    }
}

impl DryOptions {
    /// llama.cpp's recommended DRY (the [`Default`]).
    pub fn llama_cpp() -> Self {
        Self::default()
    }

    /// The DRY of the perpetual modes: multiplier 0.5, base 1.75, allowed length 3, the
    /// whole context, llama.cpp's breakers (see the type docs for why).
    pub fn perpetual() -> Self {
        Self { multiplier: 0.5, allowed_length: 3, ..Self::default() }
    }

    /// The DRY stage, its breakers encoded with `tokenizer` over a vocabulary of
    /// `vocab_size` ([`dry_sequence_breakers`]). Errors: out-of-domain parameters (named
    /// as llama.cpp names them), an empty breaker, tokenizer failures.
    pub fn stage(&self, tokenizer: &dyn Tokenizer, vocab_size: usize) -> Result<Dry, GenerateError> {
        let breakers = dry_sequence_breakers(tokenizer, vocab_size, &self.sequence_breakers)?;
        let dry = Dry::new(self.multiplier, self.base, self.allowed_length, self.penalty_last_n, breakers)?;
        Ok(match self.gate {
            Some((w, lo, hi)) => dry.with_gate(StalenessGate::new(w, lo, hi)?),
            None => dry,
        })
    }
}

/// DRY sequence breakers as token-id sequences, from strings, the way llama.cpp reads
/// them: every vocabulary token whose text *contains* a breaker is a one-token breaker
/// (so `"\n"` also covers `".\n"` and `"\n\n"`), and a breaker that encodes to several
/// tokens is also a multi-token breaker. Errors: an empty breaker
/// ([`GenerateError::InvalidParameter`] `dry_sequence_breakers`), tokenizer failures.
///
/// ```
/// use perpetua_generator::mode::dry_sequence_breakers;
/// use perpetua_generator::testing::ByteTokenizer;
///
/// let t = ByteTokenizer::new();
/// let b = dry_sequence_breakers(&t, ByteTokenizer::VOCAB_SIZE, &["\n".to_string(), "ab".to_string()])?;
/// assert!(b.contains(&vec![u32::from(b'\n')])); // the byte token "\n"
/// assert!(b.contains(&vec![u32::from(b'a'), u32::from(b'b')])); // "ab" in two tokens
/// # Ok::<(), perpetua_generator::GenerateError>(())
/// ```
pub fn dry_sequence_breakers(
    tokenizer: &dyn Tokenizer,
    vocab_size: usize,
    breakers: &[String],
) -> Result<Vec<Vec<u32>>, GenerateError> {
    let mut out: Vec<Vec<u32>> = Vec::new();
    for (i, b) in breakers.iter().enumerate() {
        if b.is_empty() {
            return Err(GenerateError::invalid(
                "dry_sequence_breakers",
                format!("[{i}] = \"\""),
                "a sequence breaker must be non-empty",
            ));
        }
        let needle = b.as_bytes();
        for id in 0..vocab_size as u32 {
            if tokenizer.is_special(id) {
                continue;
            }
            if let Some(bytes) = tokenizer.token_bytes(id)
                && bytes.windows(needle.len()).any(|w| w == needle)
            {
                out.push(vec![id]);
            }
        }
        let ids = tokenizer.encode(b, false).map_err(GenerateError::Tokenizer)?;
        if ids.len() > 1 {
            out.push(ids);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// A repetition penalty with a forgetting window (Penalty Decoding, Zhu et al. 2023:
/// only the last `last_n` tokens count, so a word used long ago is free again).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct WindowedRepetition {
    /// The CTRL penalty (> 0; 1 = off).
    pub penalty: f32,
    /// Tokens that count (`repeat_last_n`; 0 = all).
    pub last_n: usize,
}

impl Default for WindowedRepetition {
    fn default() -> Self {
        Self { penalty: 1.1, last_n: 256 }
    }
}

/// [`Anticipation`]'s main settings (the rest are its defaults).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnticipationOptions {
    /// Trigger when the 16-step mean entropy is below `ratio ×` the running level.
    pub ratio: f32,
    /// The raised temperature, as a multiple of base.
    pub peak_times: f32,
    /// Half-life (steps) of the running entropy level.
    pub half_life: f32,
}

impl Default for AnticipationOptions {
    fn default() -> Self {
        Self { ratio: 0.5, peak_times: 1.3, half_life: 256.0 }
    }
}

impl AnticipationOptions {
    /// `inner` wrapped in an [`Anticipation`] with these settings. Errors name the
    /// parameter.
    pub fn wrap(
        &self,
        inner: Box<dyn EosStrategy>,
    ) -> Result<Anticipation<Box<dyn EosStrategy>>, GenerateError> {
        let bad = |name: &'static str, v: f32| {
            move |_| GenerateError::invalid(name, v, "out of range (see Anticipation)")
        };
        Anticipation::new(inner)
            .with_ratio(self.ratio)
            .map_err(bad("anticipation_ratio", self.ratio))?
            .with_peak(Peak::Times(self.peak_times))
            .map_err(bad("anticipation_peak", self.peak_times))?
            .with_half_life(self.half_life)
            .map_err(bad("anticipation_half_life", self.half_life))
    }
}

/// A perpetual mode: an EOS method and the freshness tools around it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PerpetualMode {
    /// What happens at an EOS draw.
    pub method: EosMethod,
    /// Back step length of methods 3 and 4 (`None`: the paper's 10).
    pub backstep: Option<usize>,
    /// Peak temperature of methods 2 and 4 (`None`: the paper's, 2.0 and 2× base).
    #[serde(default)]
    pub peak: Option<Peak>,
    /// A DRY stage added to the chain.
    pub dry: Option<DryOptions>,
    /// Loop back steps with these thresholds ([`LoopBackstep`]).
    pub loop_detection: Option<LoopDetection>,
    /// Treat a stale window (collapsed vocabulary) like a loop, within a regeneration
    /// budget ([`Staleness`], [`LoopBackstep::with_staleness`]); implies loop back steps.
    #[serde(default)]
    pub staleness: Option<Staleness>,
    /// A stale window ends the turn instead of being regenerated
    /// ([`LoopBackstep::with_stale_turns`]; spec part `turns`, which implies `stale`).
    /// Needs resume tokens (a chat template), like the `resume` method, unless turns
    /// [`restart`](Self::restart).
    #[serde(default)]
    pub stale_turns: bool,
    /// Raise the temperature when entropy falls ([`Anticipation`]).
    pub anticipation: Option<AnticipationOptions>,
    /// A windowed repetition penalty added to the chain.
    pub repetition: Option<WindowedRepetition>,
    /// Attention window in positions (spec part `window=N`, `N >= 4`): the context rolls
    /// once the cache holds this many (the sink tokens and the recent half are kept,
    /// as for [`GeneratorBuilder::context_window`](crate::GeneratorBuilder::context_window),
    /// which it only ever narrows), so old text stops reinforcing itself.
    #[serde(default)]
    pub window: Option<usize>,
    /// Resumed turns repeat the prompt's request (spec part `reask`): the hidden user
    /// turn of a resume is the chat prompt's last user message instead of the
    /// generator's resume message ("Continue."), so each new turn is a fresh answer
    /// to the same request, with everything written so far in context
    /// ([`GeneratorBuilder::resume_with_prompt`](crate::GeneratorBuilder::resume_with_prompt)).
    /// Prompts that are not chats keep the resume message.
    #[serde(default)]
    pub reask: bool,
    /// Resumed turns start from a fresh context (spec part `forget` or `forget=R`):
    /// when a turn resumes, the model's context is rolled back to the prompt, the last
    /// `R` tokens written (default [`DEFAULT_RECALL`] = 0) and the resume tokens. The
    /// text written before stays in the output, and in the history of the chain's
    /// penalties (DRY, repetition) and of the loop detector, so the new turn is pushed
    /// away from repeating it, but the model no longer attends to it: a small model
    /// copies and degrades from its own long context, and a stale turn no longer primes
    /// the next. Costs feeding the recalled tokens again per resume (the prompt stays
    /// cached unless a context roll dropped part of it)
    /// ([`GeneratorBuilder::forget_on_resume`](crate::GeneratorBuilder::forget_on_resume)).
    /// Only acts where turns resume (the `resume` method, `turns`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget: Option<usize>,
    /// Resumed turns restart the answer (spec part `restart`): when a turn resumes, the
    /// model's context becomes the prompt alone, as when generation began, and the model
    /// writes a new answer to it. The text written before stays in the output (a
    /// paragraph break marks the turn), and in the history of the chain's penalties and
    /// of the loop detector, which push the new answer away from repeating it. Unlike
    /// [`reask`](Self::reask) + [`forget`](Self::forget) no turn is appended to the
    /// prompt (no repeated request after an empty answer) and no resume tokens are
    /// needed, so it also works without a chat template: a restart costs one forward
    /// pass (the prompt's last token again; the prompt stays cached unless a context
    /// roll dropped part of it). Only acts where turns resume (the `resume` method,
    /// `turns`); excludes `reask` and `forget`, which it replaces
    /// ([`GeneratorBuilder::restart_on_resume`](crate::GeneratorBuilder::restart_on_resume)).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restart: bool,
}

impl PerpetualMode {
    /// Plain method `method`, no freshness tools.
    pub fn method(method: EosMethod) -> Self {
        Self {
            method,
            backstep: None,
            peak: None,
            dry: None,
            loop_detection: None,
            staleness: None,
            stale_turns: false,
            anticipation: None,
            repetition: None,
            window: None,
            reask: false,
            forget: None,
            restart: false,
        }
    }

    /// The recommended mode, `perpetual` on the CLI (spec
    /// `resume+dry=0.5/3/1024+loop+stale=64/0.52/32/0.12+turns+restart`): where the
    /// model ends its answer (an EOS draw, method 5) or its text goes stale (a window
    /// below 0.52 × 64 distinct ids, [`Staleness::default`] otherwise; healthy SmolLM2
    /// text stayed above 0.57), the turn ends ([`stale_turns`](Self::stale_turns)) and
    /// the model writes a new answer to the prompt from the prompt alone
    /// ([`restart`](Self::restart)), pushed away from what it wrote by DRY
    /// ([`DryOptions::perpetual`] over the last 1,024 tokens: a repeat further back is
    /// out of the model's sight, and forbidding it only costs log-probability) and loop
    /// back steps ([`LoopDetection::default`]). The model never writes on in the
    /// low-entropy state where it wanted to stop, so nothing is heated: the freshest and
    /// likeliest combination measured on the 20 development prompts
    /// (`docs/EVALUATION.md`). A restart needs no resume tokens: the mode runs the same
    /// without a chat template.
    pub fn recommended() -> Self {
        Self {
            dry: Some(DryOptions { penalty_last_n: 1024, ..DryOptions::perpetual() }),
            loop_detection: Some(LoopDetection::default()),
            staleness: Some(Staleness { min_distinct: 0.52, ..Staleness::default() }),
            stale_turns: true,
            restart: true,
            ..Self::method(EosMethod::Resume)
        }
    }

    /// The mode a generator runs given whether it has resume tokens (a chat template,
    /// or [`GeneratorBuilder::resume_tokens`](crate::GeneratorBuilder::resume_tokens)).
    /// With them, or when turns [`restart`](Self::restart) (which needs none, as the
    /// recommended mode), this mode. Without them, stale turns fall back to stale back
    /// steps (`turns`, `reask` and `forget` are dropped: they only act where turns
    /// resume); the `resume` method, which has no fallback, is an error
    /// ([`GenerateError::InvalidParameter`] `strategy`).
    ///
    /// ```
    /// use perpetua_generator::PerpetualMode;
    ///
    /// let mode = PerpetualMode::recommended();
    /// assert_eq!(mode.for_resume_tokens(false)?.spec(), mode.spec());
    /// let turns = PerpetualMode::parse("dynamic+dry+stale+turns+reask+forget")?;
    /// assert_eq!(turns.for_resume_tokens(true)?.spec(), turns.spec());
    /// assert_eq!(turns.for_resume_tokens(false)?.spec(), "dynamic+dry+loop+stale");
    /// assert!(PerpetualMode::parse("resume")?.for_resume_tokens(false).is_err());
    /// # Ok::<(), perpetua_generator::GenerateError>(())
    /// ```
    pub fn for_resume_tokens(&self, available: bool) -> Result<Self, GenerateError> {
        if available || self.restart || !self.resumes() {
            return Ok(self.clone());
        }
        if self.method == EosMethod::Resume {
            return Err(GenerateError::invalid(
                "strategy",
                self.spec(),
                "resuming a turn needs resume tokens: a tokenizer with a chat template, or GeneratorBuilder::resume_tokens",
            ));
        }
        Ok(Self { stale_turns: false, reask: false, forget: None, ..self.clone() })
    }

    /// Parse a spec: `perpetual`, or an EOS method name ([`StrategyKind`]'s names; `=N`
    /// sets the back step of methods 3 and 4) followed by `+`-separated tools: `dry`
    /// ([`DryOptions::perpetual`]; `dry=M`, `dry=M/A` or `dry=M/A/N` set multiplier,
    /// allowed length, window; `gate=LOW/HIGH[/W]` adds a staleness gate), `loop`,
    /// `stale` (`stale=W/D[/N[/B]]`), `rewind` (stale back steps reach back up to
    /// [`DEFAULT_REWIND`] tokens to the freshest recent window; `rewind=R[/T]` sets
    /// reach and tolerance, [`Staleness::rewind`]; implies `stale`), `turns`, `reask`
    /// ([`reask`](Self::reask)), `forget` (`forget=R`, [`forget`](Self::forget)),
    /// `anticipation` (`anticipation=RATIO[/PEAK[/HALF_LIFE]]`), `rep` (`rep=P` or
    /// `rep=P/N`: penalty `P` over the last `N` tokens; default 1.1 over 256).
    /// `perpetual+tool` adds the tool to the recommended mode. Errors name the part
    /// that is wrong.
    pub fn parse(spec: &str) -> Result<Self, GenerateError> {
        let mut parts = spec.split('+').map(str::trim);
        let head = parts.next().unwrap_or_default();
        let (name, value) = split_value(head);
        let mut mode = if name == "perpetual" {
            if value.is_some() {
                return Err(GenerateError::invalid("strategy", head, "`perpetual` takes no value"));
            }
            Self::recommended()
        } else {
            let method = name.parse::<StrategyKind>().map_err(|_| {
                GenerateError::invalid(
                    "strategy",
                    name,
                    "known EOS methods: plain, suppress, suppress_masked, post_eos, backstep, dynamic, resume (or perpetual)",
                )
            })?;
            let mut m = Self::method(method);
            if let Some(v) = value {
                m.backstep = Some(v.parse().map_err(|_| {
                    GenerateError::invalid("backstep", v, "must be a whole number of tokens >= 1")
                })?);
            }
            m
        };
        for part in parts {
            let (tool, value) = split_value(part);
            let number = |v: &str| {
                v.parse::<f32>()
                    .map_err(|_| GenerateError::invalid("strategy", part, "the value must be a number"))
            };
            match (tool, value) {
                ("dry", None) => mode.dry = Some(DryOptions::perpetual()),
                ("dry", Some(v)) => {
                    let mut fields = v.split('/');
                    let mut dry = DryOptions {
                        multiplier: number(fields.next().unwrap_or_default())?,
                        ..DryOptions::perpetual()
                    };
                    let whole = |f: &str| {
                        f.parse::<usize>().map_err(|_| {
                            GenerateError::invalid(
                                "strategy",
                                part,
                                "dry=M/A/N: A and N must be whole numbers",
                            )
                        })
                    };
                    if let Some(a) = fields.next() {
                        dry.allowed_length = whole(a)?;
                    }
                    if let Some(n) = fields.next() {
                        dry.penalty_last_n = whole(n)?;
                    }
                    mode.dry = Some(dry);
                }
                ("gate", Some(v)) => {
                    let f: Vec<&str> = v.split('/').collect();
                    let (lo, hi) = match f.as_slice() {
                        [lo, hi] | [lo, hi, _] => (number(lo)?, number(hi)?),
                        _ => return Err(GenerateError::invalid("strategy", part, "gate=LOW/HIGH[/WINDOW]")),
                    };
                    let w = match f.get(2) {
                        Some(w) => w.parse().map_err(|_| {
                            GenerateError::invalid("strategy", part, "gate: WINDOW must be a whole number")
                        })?,
                        None => 256,
                    };
                    let dry = mode.dry.get_or_insert_with(DryOptions::perpetual);
                    dry.gate = Some((w, lo, hi));
                }
                ("loop", None) => mode.loop_detection = Some(LoopDetection::default()),
                ("stale", None) => {
                    mode.staleness = Some(Staleness::default());
                    mode.loop_detection.get_or_insert_with(LoopDetection::default);
                }
                ("stale", Some(v)) => {
                    let f: Vec<&str> = v.split('/').collect();
                    let whole = |x: &str| {
                        x.parse::<usize>().map_err(|_| {
                            GenerateError::invalid(
                                "strategy",
                                part,
                                "stale=W/D[/N[/B]]: W and N are whole numbers",
                            )
                        })
                    };
                    let mut st = Staleness::default();
                    match f.as_slice() {
                        [w, d] => (st.window, st.min_distinct) = (whole(w)?, number(d)?),
                        [w, d, n] => {
                            (st.window, st.min_distinct, st.backstep) = (whole(w)?, number(d)?, whole(n)?)
                        }
                        [w, d, n, b] => {
                            (st.window, st.min_distinct, st.backstep, st.budget) =
                                (whole(w)?, number(d)?, whole(n)?, number(b)?)
                        }
                        _ => return Err(GenerateError::invalid("strategy", part, "stale=W/D[/N[/B]]")),
                    }
                    mode.staleness = Some(st);
                    mode.loop_detection.get_or_insert_with(LoopDetection::default);
                }
                ("anticipation", None) => mode.anticipation = Some(AnticipationOptions::default()),
                ("anticipation", Some(v)) => {
                    let f: Vec<&str> = v.split('/').collect();
                    let mut a = AnticipationOptions::default();
                    match f.as_slice() {
                        [r] => a.ratio = number(r)?,
                        [r, p] => (a.ratio, a.peak_times) = (number(r)?, number(p)?),
                        [r, p, h] => {
                            (a.ratio, a.peak_times, a.half_life) = (number(r)?, number(p)?, number(h)?)
                        }
                        _ => {
                            return Err(GenerateError::invalid(
                                "strategy",
                                part,
                                "anticipation=RATIO[/PEAK[/HALF_LIFE]]",
                            ));
                        }
                    }
                    mode.anticipation = Some(a);
                }
                ("rewind", v) => {
                    let st = mode.staleness.get_or_insert_with(Staleness::default);
                    st.rewind = DEFAULT_REWIND;
                    if let Some(v) = v {
                        let (r, h) = match v.split_once('/') {
                            Some((r, h)) => (r, Some(h)),
                            None => (v, None),
                        };
                        st.rewind = r.parse().map_err(|_| {
                            GenerateError::invalid("strategy", part, "rewind=R[/T]: R must be a whole number")
                        })?;
                        if let Some(h) = h {
                            st.tolerance = number(h)?;
                        }
                    }
                    mode.loop_detection.get_or_insert_with(LoopDetection::default);
                }
                ("turns", None) => {
                    mode.stale_turns = true;
                    mode.staleness.get_or_insert_with(Staleness::default);
                    mode.loop_detection.get_or_insert_with(LoopDetection::default);
                }
                ("reask", None) => mode.reask = true,
                ("restart", None) => mode.restart = true,
                ("forget", v) => {
                    mode.forget = Some(match v {
                        None => DEFAULT_RECALL,
                        Some(v) => v.parse().map_err(|_| {
                            GenerateError::invalid(
                                "strategy",
                                part,
                                "forget=R: R must be a whole number of tokens",
                            )
                        })?,
                    });
                }
                ("window", Some(v)) => {
                    mode.window = Some(v.parse().map_err(|_| {
                        GenerateError::invalid("strategy", part, "window=N: N must be a whole number")
                    })?);
                }
                ("rep", None) => mode.repetition = Some(WindowedRepetition::default()),
                ("rep", Some(v)) => {
                    let (p, n) = v.split_once('/').unwrap_or((v, "256"));
                    let last_n = n.parse().map_err(|_| {
                        GenerateError::invalid("strategy", part, "rep=P/N: N must be a whole number")
                    })?;
                    mode.repetition = Some(WindowedRepetition { penalty: number(p)?, last_n });
                }
                _ => {
                    return Err(GenerateError::invalid(
                        "strategy",
                        part,
                        "known tools: dry[=M[/A[/N]]], gate=LOW/HIGH[/W], loop, stale[=W/D[/N[/B]]], rewind[=R[/T]], turns, reask, forget[=R], restart, anticipation[=R[/P[/H]]], rep[=P[/N]], window=N",
                    ));
                }
            }
        }
        mode.validate()?;
        Ok(mode)
    }

    /// Check every part (the fields are public). Errors name the parameter.
    pub fn validate(&self) -> Result<(), GenerateError> {
        self.method.strategy_with(self.backstep, self.peak).map_err(perpetual_err)?;
        if let Some(d) = self.loop_detection {
            d.validate().map_err(|e| GenerateError::invalid("loop_detection", e, "invalid thresholds"))?;
        }
        if let Some(st) = self.staleness {
            st.validate().map_err(|e| GenerateError::invalid("staleness", e, "invalid thresholds"))?;
        }
        if let Some(d) = &self.dry {
            Dry::new(
                d.multiplier,
                d.base,
                d.allowed_length,
                d.penalty_last_n,
                std::iter::empty::<Vec<u32>>(),
            )?;
            if let Some((w, lo, hi)) = d.gate {
                StalenessGate::new(w, lo, hi)?;
            }
            if let Some(i) = d.sequence_breakers.iter().position(String::is_empty) {
                return Err(GenerateError::invalid(
                    "dry_sequence_breakers",
                    format!("[{i}] = \"\""),
                    "a sequence breaker must be non-empty",
                ));
            }
        }
        if let Some(r) = self.repetition {
            RepetitionPenalty::new(r.penalty)?;
        }
        if let Some(a) = self.anticipation {
            a.wrap(Box::new(StopAtEos))?;
        }
        if self.restart && (self.reask || self.forget.is_some()) {
            return Err(GenerateError::invalid(
                "strategy",
                self.spec(),
                "`restart` replaces `reask` and `forget` (a restarted turn is the prompt alone): drop them",
            ));
        }
        self.check_window()
    }

    fn check_window(&self) -> Result<(), GenerateError> {
        match self.window {
            Some(w) if w < 4 => {
                Err(GenerateError::invalid("window", w, "an attention window must be >= 4 positions"))
            }
            _ => Ok(()),
        }
    }

    /// The canonical spec (parses back to an equal mode when the tools have their
    /// spec defaults): method, then `dry`, `loop`, `anticipation`, `rep` in that order.
    pub fn spec(&self) -> String {
        let mut s = self.method.name().to_string();
        if let Some(n) = self.backstep {
            s.push_str(&format!("={n}"));
        }
        if let Some(d) = &self.dry {
            let def = DryOptions::perpetual();
            if (d.multiplier, d.allowed_length, d.penalty_last_n)
                == (def.multiplier, def.allowed_length, def.penalty_last_n)
            {
                s.push_str("+dry");
            } else {
                s.push_str(&format!("+dry={}/{}/{}", d.multiplier, d.allowed_length, d.penalty_last_n));
            }
            if let Some((w, lo, hi)) = d.gate {
                s.push_str(&format!("+gate={lo}/{hi}/{w}"));
            }
        }
        if self.loop_detection.is_some() {
            s.push_str("+loop");
        }
        if let Some(st) = self.staleness {
            let thresholds = Staleness { rewind: 0, tolerance: DEFAULT_TOLERANCE, ..st };
            if thresholds == Staleness::default() {
                s.push_str("+stale");
            } else {
                s.push_str(&format!(
                    "+stale={}/{}/{}/{}",
                    st.window, st.min_distinct, st.backstep, st.budget
                ));
            }
            if st.rewind > 0 {
                if st.rewind == DEFAULT_REWIND && st.tolerance == DEFAULT_TOLERANCE {
                    s.push_str("+rewind");
                } else {
                    s.push_str(&format!("+rewind={}/{}", st.rewind, st.tolerance));
                }
            }
        }
        if self.stale_turns {
            s.push_str("+turns");
        }
        if let Some(a) = self.anticipation {
            if a == AnticipationOptions::default() {
                s.push_str("+anticipation");
            } else {
                s.push_str(&format!("+anticipation={}/{}/{}", a.ratio, a.peak_times, a.half_life));
            }
        }
        if let Some(r) = self.repetition {
            if r == WindowedRepetition::default() {
                s.push_str("+rep");
            } else {
                s.push_str(&format!("+rep={}/{}", r.penalty, r.last_n));
            }
        }
        if let Some(w) = self.window {
            s.push_str(&format!("+window={w}"));
        }
        if self.reask {
            s.push_str("+reask");
        }
        match self.forget {
            Some(DEFAULT_RECALL) => s.push_str("+forget"),
            Some(r) => s.push_str(&format!("+forget={r}")),
            None => {}
        }
        if self.restart {
            s.push_str("+restart");
        }
        s
    }

    /// Whether the mode ends turns and resumes them (the `resume` method, or `turns`):
    /// it then needs a generator with resume tokens.
    pub fn resumes(&self) -> bool {
        self.method == EosMethod::Resume || (self.stale_turns && self.staleness.is_some())
    }

    /// The strategy: the EOS method, wrapped by [`LoopBackstep`] and then
    /// [`Anticipation`] when asked. Errors: [`validate`](Self::validate).
    pub fn strategy(&self) -> Result<Box<dyn EosStrategy>, GenerateError> {
        self.check_window()?;
        let mut s = self.method.strategy_with(self.backstep, self.peak).map_err(perpetual_err)?;
        if self.loop_detection.is_some() || self.staleness.is_some() {
            let mut lb = LoopBackstep::new(s)
                .with_detection(self.loop_detection.unwrap_or_default())
                .map_err(|e| GenerateError::invalid("loop_detection", e, "invalid thresholds"))?;
            if let Some(st) = self.staleness {
                lb = lb
                    .with_staleness(st)
                    .map_err(|e| GenerateError::invalid("staleness", e, "invalid thresholds"))?
                    .with_stale_turns(self.stale_turns);
            }
            s = Box::new(lb);
        }
        if let Some(a) = self.anticipation {
            s = Box::new(a.wrap(s)?);
        }
        Ok(s)
    }

    /// The sampling stages of this mode (DRY, repetition penalty), in chain order.
    /// DRY needs the tokenizer for its breakers: without one, an error
    /// ([`GenerateError::NoTokenizer`]).
    pub fn stages(
        &self,
        tokenizer: Option<&dyn Tokenizer>,
        vocab_size: usize,
    ) -> Result<Vec<Box<dyn LogitsProcessor>>, GenerateError> {
        let mut out: Vec<Box<dyn LogitsProcessor>> = Vec::new();
        if let Some(r) = self.repetition {
            out.push(Box::new(RepetitionPenalty::new(r.penalty)?.with_last_n(r.last_n)));
        }
        if let Some(d) = &self.dry {
            let tok = tokenizer.ok_or(GenerateError::NoTokenizer { needed_for: "DRY sequence breakers" })?;
            out.push(Box::new(d.stage(tok, vocab_size)?));
        }
        Ok(out)
    }
}

impl std::fmt::Display for PerpetualMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.spec())
    }
}

impl std::str::FromStr for PerpetualMode {
    type Err = GenerateError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

fn split_value(part: &str) -> (&str, Option<&str>) {
    match part.split_once('=') {
        Some((k, v)) => (k.trim(), Some(v.trim())),
        None => (part, None),
    }
}

/// Insert `stages` into `chain` before its first warper (temperature, top-k, …) —
/// penalties act on raw logits, as the default [`Stage`]
/// order puts them — or at the end when it has none.
pub(crate) fn insert_stages(chain: &mut Chain, stages: Vec<Box<dyn LogitsProcessor>>) -> (usize, usize) {
    let start = chain.stages().position(|s| s.is_some_and(Stage::is_warper)).unwrap_or(chain.len());
    let n = stages.len();
    for (i, s) in stages.into_iter().enumerate() {
        chain.insert(start + i, s);
    }
    (start, n)
}
