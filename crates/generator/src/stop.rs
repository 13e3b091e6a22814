//! Stop criteria that look at the output: stop strings and repetition detection.

use crate::GenerateError;

/// Stop strings matched on the decoded text, across token boundaries.
///
/// The matcher is incremental: [`find`](Self::find) only searches where a match can
/// end in newly appended text, and [`held_back`](Self::held_back) says how many
/// trailing bytes must not be streamed yet because they could still begin a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopStrings {
    strings: Vec<String>,
}

impl StopStrings {
    /// A matcher for `strings`. Errors: an empty stop string
    /// ([`GenerateError::InvalidParameter`] `stop_strings`), which would match
    /// everywhere.
    pub fn new<I, S>(strings: I) -> Result<Self, GenerateError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let strings: Vec<String> = strings.into_iter().map(Into::into).collect();
        if let Some(i) = strings.iter().position(String::is_empty) {
            return Err(GenerateError::invalid(
                "stop_strings",
                format!("[{i}] = \"\""),
                "a stop string must not be empty",
            ));
        }
        Ok(Self { strings })
    }

    /// The stop strings, in the order given.
    pub fn strings(&self) -> &[String] {
        &self.strings
    }

    /// Whether there is no stop string.
    pub fn is_empty(&self) -> bool {
        self.strings.is_empty()
    }

    /// The earliest match in `text` that ends after byte `searched` (the text length
    /// at the previous call): `(start byte, index of the stop string)`. Ties at the same
    /// start go to the stop string listed first.
    pub fn find(&self, text: &str, searched: usize) -> Option<(usize, usize)> {
        let mut best: Option<(usize, usize)> = None;
        for (k, s) in self.strings.iter().enumerate() {
            let from = floor_char_boundary(text, searched.saturating_sub(s.len() - 1));
            if let Some(pos) = text[from..].find(s.as_str()) {
                let start = from + pos;
                if best.is_none_or(|(b, _)| start < b) {
                    best = Some((start, k));
                }
            }
        }
        best
    }

    /// Length in bytes of the longest suffix of `text` that is a proper prefix of a
    /// stop string: text that may not be streamed yet. 0 when no stop string can
    /// begin in the tail.
    pub fn held_back(&self, text: &str) -> usize {
        let mut held = 0;
        for s in &self.strings {
            let max = (s.len() - 1).min(text.len());
            for k in (held + 1..=max).rev() {
                if s.is_char_boundary(k) && text.as_bytes().ends_with(&s.as_bytes()[..k]) {
                    held = k;
                    break;
                }
            }
        }
        held
    }
}

/// The largest char boundary `<= i` (`i` clamped to `text.len()`).
fn floor_char_boundary(text: &str, i: usize) -> usize {
    let mut i = i.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// Finish when the generated tail is one pattern repeated: the last
/// `pattern_len × min_repeats` tokens are `min_repeats` copies of the same
/// `pattern_len` tokens, for some `pattern_len` in `min_pattern_len..=max_pattern_len`
/// (vLLM's `repetition_detection`: `min_pattern_size`, `max_pattern_size`,
/// `min_count`).
///
/// ```
/// use perpetua_generator::RepetitionDetection;
///
/// let r = RepetitionDetection::new(1, 4, 3)?;
/// assert_eq!(r.detect(&[9, 1, 2, 1, 2, 1, 2]), Some((2, 3)));
/// assert_eq!(r.detect(&[1, 2, 1, 2]), None); // only two repeats
/// # Ok::<(), perpetua_generator::GenerateError>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RepetitionDetection {
    min_pattern_len: usize,
    max_pattern_len: usize,
    min_repeats: usize,
}

impl RepetitionDetection {
    /// Errors: `min_pattern_len == 0`, `max_pattern_len < min_pattern_len`, or
    /// `min_repeats < 2` (one occurrence is not a repetition).
    pub fn new(
        min_pattern_len: usize,
        max_pattern_len: usize,
        min_repeats: usize,
    ) -> Result<Self, GenerateError> {
        if min_pattern_len == 0 {
            return Err(GenerateError::invalid("min_pattern_len", min_pattern_len, "must be >= 1"));
        }
        if max_pattern_len < min_pattern_len {
            return Err(GenerateError::invalid(
                "max_pattern_len",
                max_pattern_len,
                "must be >= min_pattern_len",
            ));
        }
        if min_repeats < 2 {
            return Err(GenerateError::invalid("min_repeats", min_repeats, "must be >= 2"));
        }
        Ok(Self { min_pattern_len, max_pattern_len, min_repeats })
    }

    /// `Some((pattern_len, repeats))` for the shortest repeating pattern at the end of
    /// `generated`, `None` when there is none. O(max_pattern_len² × min_repeats).
    pub fn detect(&self, generated: &[u32]) -> Option<(usize, usize)> {
        for len in self.min_pattern_len..=self.max_pattern_len {
            let span = len.checked_mul(self.min_repeats)?;
            if span > generated.len() {
                break;
            }
            let tail = &generated[generated.len() - span..];
            let pattern = &tail[span - len..];
            if tail.chunks_exact(len).all(|c| c == pattern) {
                return Some((len, self.min_repeats));
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_matches_that_span_the_previous_end() {
        let s = StopStrings::new(["END", "\n\n"]).unwrap();
        assert_eq!(s.find("abcEN", 0), None);
        assert_eq!(s.held_back("abcEN"), 2);
        assert_eq!(s.find("abcEND", 5), Some((3, 0)));
        assert_eq!(s.held_back("abc"), 0);
        assert_eq!(s.held_back("x\n"), 1);
    }

    #[test]
    fn multibyte_stop_strings_hold_whole_chars() {
        let s = StopStrings::new(["é!"]).unwrap();
        assert_eq!(s.held_back("café"), 2);
        assert_eq!(s.find("café!", 4), Some((3, 0)));
        assert!(StopStrings::new([""]).is_err());
    }

    #[test]
    fn repetition_needs_min_repeats() {
        let r = RepetitionDetection::new(1, 3, 2).unwrap();
        assert_eq!(r.detect(&[1, 2, 3]), None);
        assert_eq!(r.detect(&[1, 3, 3]), Some((1, 2)));
        assert!(RepetitionDetection::new(2, 1, 2).is_err());
        assert!(RepetitionDetection::new(1, 1, 1).is_err());
    }
}
