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
        } else if matches!(r.event.as_str(), "token" | "eos_avoided") {
            last.insert(r.index, r.chosen_prob);
        }
    }
    if last.is_empty() {
        return None;
    }
    Some(last.values().map(|p| p.max(f64::MIN_POSITIVE).ln()).sum::<f64>() / last.len() as f64)
}
