/// What a processor may read about the sequence being generated. Read-only and cheap
/// to build every step (it borrows).
#[derive(Debug, Clone, Copy)]
pub struct SamplingContext<'a> {
    /// Every token so far: the prompt followed by the generated tokens.
    pub tokens: &'a [u32],
    /// How many of `tokens` are the prompt.
    pub prompt_len: usize,
    /// End-of-sequence token ids of the model.
    pub eos_ids: &'a [u32],
    /// When `Some`, temperature stages use this value instead of their configured
    /// one. This is how a perpetual temperature schedule drives the chain per step
    /// without rebuilding it.
    pub temperature_override: Option<f32>,
}

impl<'a> SamplingContext<'a> {
    /// A context over `tokens`, of which the first `prompt_len` are the prompt; no EOS
    /// ids, no temperature override. `prompt_len` is clamped to `tokens.len()`.
    pub fn new(tokens: &'a [u32], prompt_len: usize) -> Self {
        Self { tokens, prompt_len: prompt_len.min(tokens.len()), eos_ids: &[], temperature_override: None }
    }

    /// Set the EOS ids.
    pub fn with_eos_ids(mut self, eos_ids: &'a [u32]) -> Self {
        self.eos_ids = eos_ids;
        self
    }

    /// Set the temperature override.
    pub fn with_temperature_override(mut self, temperature: Option<f32>) -> Self {
        self.temperature_override = temperature;
        self
    }

    /// The generated tokens (everything after the prompt).
    pub fn generated(&self) -> &'a [u32] {
        &self.tokens[self.prompt_len..]
    }

    /// The prompt tokens.
    pub fn prompt(&self) -> &'a [u32] {
        &self.tokens[..self.prompt_len]
    }

    /// Number of tokens generated so far (the current step index).
    pub fn step(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Whether `id` is one of the EOS ids.
    pub fn is_eos(&self, id: u32) -> bool {
        self.eos_ids.contains(&id)
    }
}
