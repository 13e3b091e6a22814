use crate::candidates::cmp_desc;
use crate::{Candidates, LogitsProcessor, Result, SamplingContext, SamplingError};

/// Top-k: keep the `k` highest-logit candidates.
///
/// Tie policy: exactly `k` survive; among equal logits at the boundary the lower ids
/// are kept (the crate-wide order: descending logit, then ascending id). Runs in
/// O(n + k log k) by selection, and leaves the survivors sorted. `k ≥ n` keeps all.
/// `k = 0` is rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TopK {
    k: usize,
}

impl TopK {
    /// A top-k stage. Errors when `k == 0`.
    pub fn new(k: usize) -> Result<Self> {
        if k == 0 {
            return Err(SamplingError::invalid("top_k", k, "must be >= 1"));
        }
        Ok(Self { k })
    }

    /// The configured k.
    pub fn k(&self) -> usize {
        self.k
    }
}

impl LogitsProcessor for TopK {
    fn boxed_clone(&self) -> Option<Box<dyn LogitsProcessor>> {
        Some(Box::new(*self))
    }

    fn depends_only_on_rank(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "top_k"
    }

    fn stage(&self) -> Option<crate::Stage> {
        Some(crate::Stage::TopK)
    }

    fn process(&mut self, candidates: &mut Candidates, _ctx: &SamplingContext<'_>) -> Result<()> {
        select_top_k(candidates, self.k);
        Ok(())
    }
}

/// Candidates per block of the threshold pass (at least; see [`select_top_k`]).
const BLOCK: usize = 64;
/// Most blocks the stack-held block maxima cover; larger buffers use larger blocks.
const MAX_BLOCKS: usize = 4096;

/// The `f32::total_cmp` order as an `i32` key (the same bit trick `total_cmp` uses), so
/// block maxima are plain integer maxima the compiler vectorises, and NaN / `-0.0`
/// rank exactly as in [`cmp_desc`].
#[inline(always)]
fn order_key(x: f32) -> i32 {
    let b = x.to_bits() as i32;
    b ^ ((((b >> 31) as u32) >> 1) as i32)
}

/// Same result as [`Candidates::keep_top_k`] (the same `k` candidates in the same
/// order: descending logit, ties by ascending id), faster on a large unsorted buffer.
///
/// `keep_top_k` runs `select_nth_unstable` over all `n` candidates (several passes
/// with swaps). Here:
/// 1. one vectorised pass takes the maximum of each block of (at least) 64
///    candidates;
/// 2. the `k`-th largest block maximum is a threshold `τ`: it is the `k`-th best of
///    `k` real candidates, so the true `k`-th best is `≥ τ` and no member of the top
///    `k` lies below it;
/// 3. only blocks whose maximum reaches `τ` (about `k` of them) are scanned, moving
///    their candidates `≥ τ` to the front;
/// 4. a selection and sort over those few gives the result; ties at `τ` are all
///    gathered and settled there by the id order.
///
/// Keys follow `total_cmp`, so NaN (from custom stages or `from_pairs`) ranks as
/// `keep_top_k` ranks it. Block maxima live on the stack (no allocation).
pub(crate) fn select_top_k(candidates: &mut Candidates, k: usize) {
    let n = candidates.len();
    let block = BLOCK.max(n.div_ceil(MAX_BLOCKS));
    let blocks = n.div_ceil(block);
    if k == 0 || candidates.is_sorted() || blocks <= 2 * k {
        candidates.keep_top_k(k);
        return;
    }
    let data = candidates.raw_mut();
    let mut maxima = [0_i32; MAX_BLOCKS];
    for (m, chunk) in maxima.iter_mut().zip(data.chunks(block)) {
        *m = chunk.iter().map(|c| order_key(c.logit)).max().unwrap_or(i32::MIN);
    }
    let mut ranked = maxima;
    let (_, kth, _) = ranked[..blocks].select_nth_unstable_by(k - 1, |a, b| b.cmp(a));
    let threshold = *kth;
    let mut front = 0;
    for (b, &m) in maxima[..blocks].iter().enumerate() {
        if m < threshold {
            continue;
        }
        for i in b * block..((b + 1) * block).min(n) {
            if order_key(data[i].logit) >= threshold {
                data.swap(front, i);
                front += 1;
            }
        }
    }
    // `front ≥ k`: at least `k` block maxima are `≥ threshold`, each a candidate.
    if front > k {
        data[..front].select_nth_unstable_by(k - 1, cmp_desc);
    }
    data.truncate(k.min(front));
    data.sort_unstable_by(cmp_desc);
    candidates.set_flags_unchecked(true, false);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn pairs(c: &Candidates) -> Vec<(u32, u32)> {
        c.as_slice().iter().map(|c| (c.id, c.logit.to_bits())).collect()
    }

    proptest! {
        /// The threshold scan keeps exactly what `keep_top_k` keeps, in the same order,
        /// on large buffers with heavy ties, `-inf`, `-0.0` and NaN entries.
        #[test]
        fn threshold_scan_equals_keep_top_k(
            raw in prop::collection::vec(prop_oneof![
                8 => (-8_i32..8).prop_map(|v| v as f32 * 0.5),
                1 => Just(f32::NEG_INFINITY),
                1 => Just(-0.0_f32),
                1 => Just(f32::NAN),
                4 => -50.0_f32..50.0,
            ], 0..12_000),
            k in 1_usize..60,
            reverse in any::<bool>(),
        ) {
            let mut logits = raw;
            if reverse {
                logits.reverse();
            }
            let ids = || logits.iter().enumerate().map(|(i, &l)| (i as u32, l));
            let mut fast = Candidates::from_pairs(ids());
            let mut reference = Candidates::from_pairs(ids());
            select_top_k(&mut fast, k);
            reference.keep_top_k(k);
            prop_assert_eq!(pairs(&fast), pairs(&reference));
            prop_assert!(fast.is_sorted());
        }
    }
}
