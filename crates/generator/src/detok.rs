//! Incremental detokenisation: token bytes in, UTF-8 text deltas out.

/// Turns a stream of token byte strings into text without ever splitting a UTF-8
/// character across deltas.
///
/// Byte-level BPE tokens may hold part of a character (`é` = `C3 A9` can arrive as
/// two tokens). [`push`](Self::push) appends a token's bytes and returns only the text
/// that is now complete; an incomplete trailing sequence is held until a later token
/// completes it. Invalid sequences (bytes that can never start or continue a
/// character) become U+FFFD immediately, as `String::from_utf8_lossy` would.
/// [`finish`](Self::finish) flushes a trailing incomplete sequence as U+FFFD.
///
/// Invariant: after any sequence of pushes, `text()` + the flush of `finish()` equals
/// `String::from_utf8_lossy(all bytes)`.
///
/// ```
/// use perpetua_generator::IncrementalDecoder;
///
/// let mut d = IncrementalDecoder::new();
/// assert_eq!(d.push(b"caf"), "caf");
/// assert_eq!(d.push(&[0xC3]), "");   // first byte of 'é': held back
/// assert_eq!(d.push(&[0xA9, b'!']), "é!");
/// d.truncate_tokens(1);              // a back step removes the last two tokens
/// assert_eq!(d.text(), "caf");
/// ```
#[derive(Debug, Clone, Default)]
pub struct IncrementalDecoder {
    bytes: Vec<u8>,
    /// Bytes `..decoded` have been turned into `text`.
    decoded: usize,
    text: String,
    /// State after each pushed token, for [`truncate_tokens`](Self::truncate_tokens).
    checkpoints: Vec<Checkpoint>,
}

#[derive(Debug, Clone, Copy)]
struct Checkpoint {
    bytes: usize,
    decoded: usize,
    text: usize,
}

impl IncrementalDecoder {
    /// An empty decoder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Append one token's bytes (possibly empty, e.g. a skipped special token) and
    /// return the newly completed text (possibly empty).
    pub fn push(&mut self, token_bytes: &[u8]) -> &str {
        let start = self.text.len();
        self.bytes.extend_from_slice(token_bytes);
        self.decode_available();
        self.checkpoints.push(Checkpoint {
            bytes: self.bytes.len(),
            decoded: self.decoded,
            text: self.text.len(),
        });
        &self.text[start..]
    }

    fn decode_available(&mut self) {
        loop {
            let rest = &self.bytes[self.decoded..];
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text.push_str(s);
                    self.decoded = self.bytes.len();
                    return;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // `from_utf8` validated `rest[..valid]`, so this never falls back.
                    self.text.push_str(std::str::from_utf8(&rest[..valid]).unwrap_or(""));
                    self.decoded += valid;
                    match e.error_len() {
                        Some(n) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            self.decoded += n;
                        }
                        // Incomplete sequence at the end: wait for the next token.
                        None => return,
                    }
                }
            }
        }
    }

    /// The complete text decoded so far.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Tokens pushed so far (after truncations).
    pub fn tokens(&self) -> usize {
        self.checkpoints.len()
    }

    /// Bytes of an incomplete trailing character, held back.
    pub fn pending_bytes(&self) -> &[u8] {
        &self.bytes[self.decoded..]
    }

    /// Forget every token after the first `tokens` (a back step), restoring the exact
    /// state after that token. `tokens >= self.tokens()` is a no-op.
    pub fn truncate_tokens(&mut self, tokens: usize) {
        if tokens >= self.checkpoints.len() {
            return;
        }
        self.checkpoints.truncate(tokens);
        let cp = self.checkpoints.last().copied().unwrap_or(Checkpoint { bytes: 0, decoded: 0, text: 0 });
        self.bytes.truncate(cp.bytes);
        self.decoded = cp.decoded;
        self.text.truncate(cp.text);
    }

    /// End of stream: a held-back incomplete sequence becomes U+FFFD. Returns the
    /// flushed text (empty when nothing was pending).
    pub fn finish(&mut self) -> &str {
        let start = self.text.len();
        if self.decoded < self.bytes.len() {
            self.text.push(char::REPLACEMENT_CHARACTER);
            self.decoded = self.bytes.len();
            if let Some(cp) = self.checkpoints.last_mut() {
                cp.decoded = self.decoded;
                cp.text = self.text.len();
            }
        }
        &self.text[start..]
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.decoded = 0;
        self.text.clear();
        self.checkpoints.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Any split of any string's bytes into tokens: the deltas concatenate to the
        /// string, and every delta is whole characters (it is a `&str`).
        #[test]
        fn deltas_reassemble_multibyte_text(s in "\\PC{0,40}", cuts in proptest::collection::vec(0usize..200, 0..20)) {
            let bytes = s.as_bytes();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (bytes.len() + 1)).collect();
            cuts.sort_unstable();
            let mut d = IncrementalDecoder::new();
            let mut out = String::new();
            let mut prev = 0;
            for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
                out.push_str(d.push(&bytes[prev..c]));
                prev = c;
            }
            prop_assert_eq!(d.finish(), "");
            prop_assert_eq!(&out, &s);
        }

        /// Arbitrary bytes: the result equals `from_utf8_lossy`, and truncating to an
        /// earlier token restores exactly the text of that prefix.
        #[test]
        fn lossy_equivalence_and_truncation(tokens in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..4), 0..12), keep in 0usize..12) {
            let mut d = IncrementalDecoder::new();
            for t in &tokens {
                d.push(t);
            }
            let keep = keep.min(tokens.len());
            let mut fresh = IncrementalDecoder::new();
            for t in &tokens[..keep] {
                fresh.push(t);
            }
            d.truncate_tokens(keep);
            prop_assert_eq!(d.text(), fresh.text());
            prop_assert_eq!(d.pending_bytes(), fresh.pending_bytes());
            let all: Vec<u8> = tokens[..keep].concat();
            let mut text = d.text().to_owned();
            text.push_str(d.finish());
            prop_assert_eq!(text, String::from_utf8_lossy(&all).into_owned());
        }
    }
}
