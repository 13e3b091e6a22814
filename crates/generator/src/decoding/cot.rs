//! Chain-of-thought decoding (Wang & Zhou, 2024, "Chain-of-Thought Reasoning Without
//! Prompting"): branch on the top-k first tokens, continue each branch greedily, and
//! rank the paths by the model's confidence in their answer.

use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use perpetua_sampling::{SamplingContext, stats};

use super::{Prefilled, argmax, check_len};
use crate::generator::model_err;
use crate::{
    Counts, FinishReason, ForkableCache, GenerateError, Generation, Generator, LanguageModel, Prompt, Timings,
};

/// Finds the answer in a decoded path: given the path's generated ids (the branching
/// token first) and their text, the range of ids that are the answer, or `None` when
/// the path holds no answer. For example: the tokens of the last number, or of the
/// text after "answer is".
pub type AnswerSpan = Arc<dyn Fn(&[u32], &str) -> Option<Range<usize>> + Send + Sync>;

/// Chain-of-thought decoding parameters.
#[derive(Clone)]
pub struct CotConfig {
    /// Paths: the `branches` most likely first tokens (default 10, the paper's k).
    pub branches: usize,
    /// Which tokens of a path are its answer. `None` (the default): every token after
    /// the branching one (the whole continuation), which suits prompts whose answer is
    /// the continuation itself.
    pub answer_span: Option<AnswerSpan>,
}

impl std::fmt::Debug for CotConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CotConfig")
            .field("branches", &self.branches)
            .field("answer_span", &self.answer_span.as_ref().map(|_| "<fn>"))
            .finish()
    }
}

impl Default for CotConfig {
    fn default() -> Self {
        Self { branches: 10, answer_span: None }
    }
}

impl CotConfig {
    /// `k` branches, answer = the whole continuation.
    pub fn new(k: usize) -> Self {
        Self { branches: k, answer_span: None }
    }

    /// Identify answer tokens with `span` (see [`AnswerSpan`]).
    pub fn answer_span(
        mut self,
        span: impl Fn(&[u32], &str) -> Option<Range<usize>> + Send + Sync + 'static,
    ) -> Self {
        self.answer_span = Some(Arc::new(span));
        self
    }
}

/// One decoded path.
#[derive(Debug, Clone, PartialEq)]
pub struct CotPath {
    /// The path as a generation: `ids[0]` is the branching token.
    pub generation: Generation,
    /// Rank of the branching token among the first-step candidates (0 = most likely).
    pub branch: usize,
    /// `p(top-1) − p(top-2)` of the model's (raw) distribution at every generated
    /// position, aligned with `generation.ids`.
    pub margins: Vec<f32>,
    /// The answer's range in `generation.ids`, when one was found (clamped to the ids).
    pub answer: Option<Range<usize>>,
    /// Δ: the mean margin over the answer tokens; `None` without an answer (or with
    /// an empty one).
    pub confidence: Option<f32>,
}

/// The result of [`Generator::cot_decode`].
#[derive(Debug, Clone, PartialEq)]
pub struct CotOutput {
    /// Every path, most confident first (paths without an answer last; ties: the more
    /// likely branch first).
    pub paths: Vec<CotPath>,
}

impl CotOutput {
    /// The most confident path.
    pub fn best(&self) -> Option<&CotPath> {
        self.paths.first()
    }
}

/// `p(top-1) − p(top-2)` of softmax(logits) (`p(top-1)` when only one is finite).
fn margin(logits: &[f32], lse: f64) -> f32 {
    let (mut a, mut b) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &l in logits {
        if l > a {
            b = a;
            a = l;
        } else if l > b {
            b = l;
        }
    }
    let p = |l: f32| (f64::from(l) - lse).exp();
    (p(a) - p(b)) as f32
}

impl<M: LanguageModel> Generator<M>
where
    M::Cache: ForkableCache,
{
    /// Chain-of-thought decoding: the prompt is prefilled once; the `branches` most
    /// likely first tokens (after the chain's processors, EOS ids excluded) each start
    /// a path on a [`ForkableCache::fork`] of that cache, continued greedily (argmax of
    /// the processed candidates, ties to the lower id) until EOS or `max_new_tokens`
    /// (default: the rest of the window). A path's confidence is Δ, the mean over its
    /// answer tokens ([`CotConfig::answer_span`]) of the margin `p(top-1) − p(top-2)`
    /// under the model's raw distribution at that position; paths are returned most
    /// confident first. The chain's sampler and the seed are not used.
    ///
    /// Errors: `branches = 0`; prompt, model, cache and processor errors as
    /// [`generate`](Self::generate).
    ///
    /// ```
    /// use perpetua_generator::testing::{ByteTokenizer, FakeModel};
    /// use perpetua_generator::{CotConfig, Generator};
    ///
    /// let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS);
    /// let mut generator =
    ///     Generator::builder(model).tokenizer(ByteTokenizer::new()).max_new_tokens(12).build()?;
    /// // Answer: the last 4 tokens of each path.
    /// let config = CotConfig::new(5).answer_span(|ids, _text| Some(ids.len().saturating_sub(4)..ids.len()));
    /// let out = generator.cot_decode("Q: 2 + 3? A:", &config)?;
    /// assert_eq!(out.paths.len(), 5);
    /// let best = out.best().expect("five paths");
    /// assert!(out.paths.iter().all(|p| p.confidence <= best.confidence));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cot_decode(
        &mut self,
        prompt: impl Into<Prompt>,
        config: &CotConfig,
    ) -> Result<CotOutput, GenerateError> {
        let prompt = prompt.into();
        super::catching("CoT decoding", || self.cot_decode_impl(prompt, config))
    }

    /// [`Self::cot_decode`] without the panic boundary.
    fn cot_decode_impl(&mut self, prompt: Prompt, config: &CotConfig) -> Result<CotOutput, GenerateError> {
        if config.branches == 0 {
            return Err(GenerateError::invalid("branches", 0, "must be >= 1"));
        }
        let Prefilled { ids: prompt_ids, cache: base, logits: first_logits, budget, prefill } =
            self.prefilled(prompt, true, None)?;
        let p = self.parts();
        let vocab = p.model.vocab_size();
        let prompt_len = prompt_ids.len();
        p.chain.reset();

        // Branching tokens: the best processed first-step candidates, EOS excluded.
        let first_margin = margin(&first_logits, stats::log_sum_exp(&first_logits)?);
        let ctx = SamplingContext::new(&prompt_ids, prompt_len).with_eos_ids(p.eos_ids);
        let candidates = p.chain.process(&first_logits, &ctx)?;
        candidates.remove_masked();
        candidates.retain(|c| !p.eos_ids.contains(&c.id));
        candidates.keep_top_k(config.branches);
        let firsts: Vec<u32> = candidates.ids().collect();

        let mut paths = Vec::with_capacity(firsts.len());
        let mut logits = Vec::with_capacity(vocab);
        let mut sequence: Vec<u32> = Vec::with_capacity(prompt_len + budget.min(1 << 16));
        for (branch, &first) in firsts.iter().enumerate() {
            let decode_started = Instant::now();
            let mut counts =
                Counts { prompt_tokens: prompt_len, prefill_tokens: prompt_len, ..Counts::default() };
            let mut forward = std::time::Duration::ZERO;
            let mut cache = base.fork()?;
            sequence.clear();
            sequence.extend_from_slice(&prompt_ids);
            let mut margins = Vec::new();
            let mut finish = FinishReason::MaxNewTokens;
            let mut token = first;
            let mut token_margin = first_margin;
            p.chain.reset();
            while sequence.len() - prompt_len < budget {
                if p.eos_ids.contains(&token) {
                    finish = FinishReason::Eos;
                    break;
                }
                sequence.push(token);
                margins.push(token_margin);
                p.chain.accept(token);
                if sequence.len() - prompt_len == budget {
                    break;
                }
                let t0 = Instant::now();
                p.model.forward(&[token], &mut cache, &mut logits).map_err(model_err)?;
                forward += t0.elapsed();
                counts.forward_passes += 1;
                check_len(&logits, vocab)?;
                token_margin = margin(&logits, stats::log_sum_exp(&logits)?);
                let ctx = SamplingContext::new(&sequence, prompt_len).with_eos_ids(p.eos_ids);
                let processed = p.chain.process(&logits, &ctx)?;
                token = argmax(processed.as_slice().iter().map(|c| (c.id, c.logit)))
                    .ok_or(perpetua_sampling::SamplingError::EmptyCandidates { stage: "cot greedy" })?;
            }
            let ids = sequence[prompt_len..].to_vec();
            let text = p.text_of(&ids)?;
            let answer = match &config.answer_span {
                Some(span) => span(&ids, &text).map(|r| {
                    let end = r.end.min(ids.len());
                    r.start.min(end)..end
                }),
                None => Some(1.min(ids.len())..ids.len()),
            };
            let confidence = answer.as_ref().filter(|r| !r.is_empty()).map(|r| {
                let m = &margins[r.clone()];
                (m.iter().map(|&x| f64::from(x)).sum::<f64>() / m.len() as f64) as f32
            });
            counts.generated_tokens = ids.len();
            let generation = Generation {
                text,
                ids,
                prompt_len,
                finish_reason: finish,
                counts,
                timings: Timings { prefill, decode: decode_started.elapsed(), forward, ..Timings::default() },
                trace: None,
            };
            paths.push(CotPath { generation, branch, margins, answer, confidence });
        }
        // Most confident first; `None` last; stable, so ties keep branch order.
        paths.sort_by(|a, b| match (a.confidence, b.confidence) {
            (Some(x), Some(y)) => y.total_cmp(&x),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => std::cmp::Ordering::Equal,
        });
        Ok(CotOutput { paths })
    }
}
