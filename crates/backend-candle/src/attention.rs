//! Fused grouped-query attention for one query position on the CPU.
//!
//! Decode at long context is bound by reading the cached keys and values: at position
//! 4,000, SmolLM2 holds 6 MB of f32 K/V per layer. The reference path (candle matmuls,
//! one query head at a time, bit-identical to candle-transformers) reads each KV head
//! once per query head of its group — three times for SmolLM2. This kernel reads every
//! cached row exactly once: for each KV head it scores all `group` query heads against
//! a key row while it is in L1, then accumulates all `group` outputs from each value row.
//!
//! Work is split over KV heads (rayon); each head's computation is sequential and
//! independent of the thread count, so results are deterministic and identical whether
//! a position is computed in decode or as one row of a prefill (batch invariance, which
//! truncate-and-refeed relies on).

use std::cell::RefCell;

use rayon::prelude::*;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Geometry of one attention call.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads (divides `n_heads`).
    pub n_kv_heads: usize,
    /// Width of one head.
    pub head_dim: usize,
    /// Positions between two KV heads in the cache buffers (`capacity`).
    pub head_stride: usize,
}

const LANES: usize = 8;

/// `Σ a_i b_i` over equal-length slices, in `LANES` independent partial sums (so the
/// compiler vectorises it), then reduced in a fixed order. Also the few-row linear
/// kernel's dot product (`model.rs`).
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0_f32; LANES];
    let (ac, ar) = a.split_at(a.len() - a.len() % LANES);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// `e^x` for `x <= 0` (softmax after subtracting the maximum), branch-free so loops
/// over it vectorise: Cody–Waite range reduction `x = n·ln 2 + r`, `|r| <= ln 2 / 2`,
/// Cephes' degree-5 polynomial for `e^r`, and `2^n` built in the exponent bits.
/// Relative error about 1 ulp; `x < −87` gives `e^−87` (≈ 1.6e−38, negligible next to
/// the maximum's 1); NaN stays NaN.
#[inline(always)]
fn exp_nonpositive(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = if x < -87.0 { -87.0 } else { x }; // NaN fails the test and passes through
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    y * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// `row ← softmax(row)`, in `LANES` partial maxima and sums (vectorised) reduced in a
/// fixed order.
fn softmax_in_place(row: &mut [f32]) {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let (chunks, tail) = row.split_at(row.len() - row.len() % LANES);
    for c in chunks.chunks_exact(LANES) {
        for l in 0..LANES {
            lanes[l] = if c[l] > lanes[l] { c[l] } else { lanes[l] };
        }
    }
    let max = tail.iter().chain(&lanes).copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sums = [0.0_f32; LANES];
    let split = chunks.len();
    for c in row[..split].chunks_exact_mut(LANES) {
        for l in 0..LANES {
            c[l] = exp_nonpositive(c[l] - max);
            sums[l] += c[l];
        }
    }
    let mut sum = sums.iter().sum::<f32>();
    for s in &mut row[split..] {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    let inv = 1.0 / sum;
    for s in row.iter_mut() {
        *s *= inv;
    }
}

/// Attention of one query position over `visible` cached positions.
///
/// - `q`: `n_heads × head_dim` (query head `h` at `q[h·d..]`), already rotated.
/// - `k`, `v`: a layer's cache buffers, `n_kv_heads × head_stride × head_dim`.
/// - `out`: `n_heads × head_dim`, overwritten with `softmax(q_h·Kᵀ/√d)·V` per head,
///   query head `h` reading KV head `h / (n_heads / n_kv_heads)`.
///
/// Scratch space for the scores is a per-thread buffer reused across calls, so
/// steady-state decode allocates nothing here.
/// Callers guarantee the slice lengths (checked by `debug_assert`s; the caller in
/// `model.rs` validates them and returns an error before calling).
pub(crate) fn attend_one(g: Geometry, q: &[f32], k: &[f32], v: &[f32], visible: usize, out: &mut [f32]) {
    let d = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    debug_assert_eq!(q.len(), g.n_heads * d);
    debug_assert_eq!(out.len(), g.n_heads * d);
    debug_assert!(k.len() >= g.n_kv_heads * g.head_stride * d && visible <= g.head_stride);
    let scale = 1.0 / (d as f32).sqrt();
    out.par_chunks_mut(group * d).enumerate().for_each(|(j, out_j)| {
        let base = j * g.head_stride * d;
        let k_j = &k[base..base + visible * d];
        let v_j = &v[base..base + visible * d];
        let q_j = &q[j * group * d..(j + 1) * group * d];
        SCORES.with_borrow_mut(|scores| {
            // scores[gi * visible + t] = q_gi · k_t / √d
            scores.clear();
            scores.resize(group * visible, 0.0);
            for (t, k_t) in k_j.chunks_exact(d).enumerate() {
                for (gi, q_g) in q_j.chunks_exact(d).enumerate() {
                    scores[gi * visible + t] = dot(q_g, k_t) * scale;
                }
            }
            for row in scores.chunks_exact_mut(visible.max(1)) {
                softmax_in_place(row);
            }
            out_j.fill(0.0);
            for (t, v_t) in v_j.chunks_exact(d).enumerate() {
                for (gi, o) in out_j.chunks_exact_mut(d).enumerate() {
                    let p = scores[gi * visible + t];
                    for (o, &x) in o.iter_mut().zip(v_t) {
                        *o += p * x;
                    }
                }
            }
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Textbook attention in f64, one head at a time.
    fn reference(g: Geometry, q: &[f32], k: &[f32], v: &[f32], visible: usize) -> Vec<f64> {
        let d = g.head_dim;
        let group = g.n_heads / g.n_kv_heads;
        let mut out = vec![0.0; g.n_heads * d];
        for h in 0..g.n_heads {
            let j = h / group;
            let row = |buf: &[f32], t: usize| -> Vec<f64> {
                let s = (j * g.head_stride + t) * d;
                buf[s..s + d].iter().map(|&x| f64::from(x)).collect()
            };
            let qh: Vec<f64> = q[h * d..(h + 1) * d].iter().map(|&x| f64::from(x)).collect();
            let scores: Vec<f64> = (0..visible)
                .map(|t| row(k, t).iter().zip(&qh).map(|(a, b)| a * b).sum::<f64>() / (d as f64).sqrt())
                .collect();
            let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
            let z: f64 = e.iter().sum();
            for (t, w) in e.iter().enumerate() {
                for (o, x) in out[h * d..(h + 1) * d].iter_mut().zip(row(v, t)) {
                    *o += w / z * x;
                }
            }
        }
        out
    }

    fn case() -> impl Strategy<Value = (Geometry, Vec<f32>, Vec<f32>, Vec<f32>, usize)> {
        (1usize..4, 1usize..4, 1usize..20, 1usize..40).prop_flat_map(|(n_kv, group, d, cap)| {
            let g = Geometry { n_heads: n_kv * group, n_kv_heads: n_kv, head_dim: d, head_stride: cap };
            let vals = |n| proptest::collection::vec(-4.0f32..4.0, n);
            (Just(g), vals(g.n_heads * d), vals(n_kv * cap * d), vals(n_kv * cap * d), 1..=cap)
        })
    }

    proptest! {
        #[test]
        fn fast_exp_is_within_two_ulp(x in -87.0f32..=0.0) {
            let got = f64::from(exp_nonpositive(x));
            let want = f64::from(x).exp();
            prop_assert!((got - want).abs() <= 2.5e-7 * want, "exp({x}) = {got}, want {want}");
        }

        #[test]
        fn softmax_sums_to_one_and_keeps_order(row in proptest::collection::vec(-30.0f32..30.0, 1..70)) {
            let mut p = row.clone();
            softmax_in_place(&mut p);
            prop_assert!((p.iter().map(|&x| f64::from(x)).sum::<f64>() - 1.0).abs() < 1e-5);
            for i in 0..row.len() {
                for j in 0..row.len() {
                    if row[i] > row[j] {
                        prop_assert!(p[i] >= p[j]);
                    }
                }
            }
        }

        #[test]
        fn matches_textbook_attention((g, q, k, v, visible) in case()) {
            let mut out = vec![f32::NAN; g.n_heads * g.head_dim];
            attend_one(g, &q, &k, &v, visible, &mut out);
            let want = reference(g, &q, &k, &v, visible);
            for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
                prop_assert!((f64::from(a) - b).abs() <= 1e-4 * (1.0 + b.abs()), "out[{i}] = {a}, want {b}");
            }
        }

        #[test]
        fn positions_beyond_visible_are_ignored((g, q, k, v, visible) in case()) {
            let mut poisoned_k = k.clone();
            let mut poisoned_v = v.clone();
            for j in 0..g.n_kv_heads {
                for t in visible..g.head_stride {
                    let s = (j * g.head_stride + t) * g.head_dim;
                    poisoned_k[s..s + g.head_dim].fill(f32::NAN);
                    poisoned_v[s..s + g.head_dim].fill(f32::NAN);
                }
            }
            let mut a = vec![0.0; g.n_heads * g.head_dim];
            let mut b = vec![0.0; g.n_heads * g.head_dim];
            attend_one(g, &q, &k, &v, visible, &mut a);
            attend_one(g, &q, &poisoned_k, &poisoned_v, visible, &mut b);
            prop_assert_eq!(a, b);
        }
    }

    #[test]
    fn nan_propagates_and_extremes_are_finite() {
        assert!(exp_nonpositive(f32::NAN).is_nan());
        assert!(exp_nonpositive(-1e30) >= 0.0 && exp_nonpositive(-1e30) < 1e-37);
        assert_eq!(exp_nonpositive(0.0), 1.0);
        let mut row = [f32::NAN, 1.0, 2.0];
        softmax_in_place(&mut row);
        assert!(row[0].is_nan());
    }
}
