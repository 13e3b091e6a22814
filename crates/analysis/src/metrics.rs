//! Text-quality metrics over generated token ids, used by the perpetual acceptance
//! runs and evaluation tables.

use std::collections::HashSet;

/// distinct-n: the number of distinct n-grams divided by the number of n-grams
/// (Li et al. 2016). 1.0 = no n-gram repeats; lower = more repetition. `None` when
/// `ids` has fewer than `n` tokens or `n == 0`.
///
/// ```
/// use perpetua_analysis::metrics::distinct_n;
/// assert_eq!(distinct_n(&[1, 2, 1, 2], 2), Some(2.0 / 3.0)); // {12, 21} of 3 bigrams
/// assert_eq!(distinct_n(&[1, 2, 3], 1), Some(1.0));
/// assert_eq!(distinct_n(&[1], 2), None);
/// ```
pub fn distinct_n(ids: &[u32], n: usize) -> Option<f64> {
    if n == 0 || ids.len() < n {
        return None;
    }
    let total = ids.len() - n + 1;
    let distinct: HashSet<&[u32]> = ids.windows(n).collect();
    Some(distinct.len() as f64 / total as f64)
}

/// Share of n-gram occurrences that repeat an earlier n-gram:
/// `1 − distinct / total` (0 = none repeats). `None` as for [`distinct_n`].
///
/// ```
/// use perpetua_analysis::metrics::repeated_ngram_rate;
/// assert_eq!(repeated_ngram_rate(&[7, 7, 7, 7, 7], 4), Some(0.5)); // 2 windows, 1 distinct
/// ```
pub fn repeated_ngram_rate(ids: &[u32], n: usize) -> Option<f64> {
    distinct_n(ids, n).map(|d| 1.0 - d)
}

/// Mean natural-log probability of the tokens that made it into the output, from a
/// trace: for each generated index, the last step that wrote it (back steps rewrite
/// indices; EOS steps write nothing). `None` when no such step exists.
///
/// The trace records raw-distribution probabilities (temperature 1), which is the
/// base temperature of the evaluation's default chain.
pub fn mean_logprob(rows: &[crate::TraceRow]) -> Option<f64> {
    let mut last: std::collections::BTreeMap<usize, f64> = std::collections::BTreeMap::new();
    for r in rows {
        if let Some(removed) = r.backstep_removed() {
            // A back step removes the indices at and after where it lands.
            let keep_below = r.index.saturating_sub(removed);
            last.retain(|&i, _| i < keep_below);
        } else if let Some(removed) = r.loop_backstep_removed() {
            // The token at `index` was written, then the last `removed` tokens went.
            let keep_below = (r.index + 1).saturating_sub(removed);
            last.retain(|&i, _| i < keep_below);
        } else if matches!(r.event.as_str(), "token" | "eos_avoided") {
            last.insert(r.index, r.chosen_prob);
        }
    }
    if last.is_empty() {
        return None;
    }
    Some(last.values().map(|p| p.max(f64::MIN_POSITIVE).ln()).sum::<f64>() / last.len() as f64)
}

/// Words per window of [`freshness`].
pub const FRESHNESS_WINDOW: usize = 200;

/// rep-4 above which a window counts as a loop.
pub const LOOP_REP4: f64 = 0.5;

/// How repetitive a text is, measured on whitespace-separated words (so no tokenizer
/// choice flatters a model) in consecutive windows (Su et al. 2022).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Freshness {
    /// Words in the text.
    pub words: usize,
    /// Windows measured.
    pub windows: usize,
    /// Mean over windows of rep-2, rep-3, rep-4, with
    /// `rep-n = 1 − distinct n-grams / n-grams` of the window.
    pub rep: [f64; 3],
    /// Mean over windows of `diversity = (1 − rep-2)(1 − rep-3)(1 − rep-4)`: 1 = no
    /// repeated bigram, 0 = a loop.
    pub diversity: f64,
    /// The lowest window diversity.
    pub worst_diversity: f64,
    /// Word offset of the worst window.
    pub worst_window: usize,
    /// Whether some window's rep-4 exceeds [`LOOP_REP4`] (more than half its 4-grams
    /// repeat).
    pub looped: bool,
}

/// `rep-n` of one word window: `1 − distinct n-grams / n-grams` (0 when it holds fewer
/// than `n` words).
pub fn word_rep_n(words: &[&str], n: usize) -> f64 {
    if n == 0 || words.len() < n {
        return 0.0;
    }
    let total = words.len() - n + 1;
    let distinct: HashSet<&[&str]> = words.windows(n).collect();
    1.0 - distinct.len() as f64 / total as f64
}

/// [`Freshness`] of `text` over consecutive, non-overlapping windows of `window` words
/// (a trailing partial window is left out, so every window has the same size); a text
/// shorter than one window is measured as one window of all its words. `None` when the
/// text has fewer than 4 words or `window < 4`.
///
/// ```
/// use perpetua_analysis::metrics::freshness;
/// let fresh: String = (0..400).map(|i| format!("w{i} ")).collect();
/// let f = freshness(&fresh, 200).unwrap();
/// assert_eq!((f.windows, f.diversity, f.looped), (2, 1.0, false));
/// let looped = "the cat sat on the mat . ".repeat(60);
/// let f = freshness(&looped, 200).unwrap();
/// assert!(f.looped && f.diversity < 0.1, "{f:?}");
/// ```
pub fn freshness(text: &str, window: usize) -> Option<Freshness> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.len() < 4 || window < 4 {
        return None;
    }
    let windows: Vec<(usize, &[&str])> = if words.len() < window {
        vec![(0, &words[..])]
    } else {
        words.chunks_exact(window).enumerate().map(|(i, w)| (i * window, w)).collect()
    };
    let mut rep = [0.0; 3];
    let mut diversity = 0.0;
    let (mut worst_diversity, mut worst_window) = (f64::INFINITY, 0);
    let mut looped = false;
    for &(offset, w) in &windows {
        let r = [2, 3, 4].map(|n| word_rep_n(w, n));
        let d = r.iter().map(|x| 1.0 - x).product::<f64>();
        for (acc, x) in rep.iter_mut().zip(r) {
            *acc += x;
        }
        diversity += d;
        if d < worst_diversity {
            (worst_diversity, worst_window) = (d, offset);
        }
        looped |= r[2] > LOOP_REP4;
    }
    let n = windows.len() as f64;
    Some(Freshness {
        words: words.len(),
        windows: windows.len(),
        rep: rep.map(|x| x / n),
        diversity: diversity / n,
        worst_diversity,
        worst_window,
        looped,
    })
}

/// The words `offset..offset + window` of `text`, joined by single spaces (the text of
/// a [`Freshness::worst_window`]).
pub fn word_window(text: &str, offset: usize, window: usize) -> String {
    text.split_whitespace().skip(offset).take(window).collect::<Vec<_>>().join(" ")
}
