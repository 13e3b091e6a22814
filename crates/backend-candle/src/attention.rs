//! Fused grouped-query attention for one query position on the CPU.
//!
//! Decode at long context is bound by reading the cached keys and values: at position
//! 4,000, SmolLM2 holds 6 MB of f32 K/V per layer. The reference path (candle matmuls,
//! one query head at a time, bit-identical to candle-transformers) reads each KV head
//! once per query head of its group — three times for SmolLM2. This kernel reads every
//! cached row exactly once: for each KV head it scores all `group` query heads against
//! a key row while it is in L1, then accumulates all `group` outputs from each value row.
//!
//! Work is split over (KV head, chunk of [`CHUNK`] positions) items (rayon), as in
//! flash-decoding: each item computes its chunk's softmax numerator with its own maximum,
//! and a short sequential pass rescales and sums the chunks. With SmolLM2's 3 KV heads,
//! splitting over heads alone left one of 2 threads idle a third of the time; chunks
//! keep both busy at long context. The chunking depends only on the number of visible
//! positions and every sum runs in a fixed order, so results are deterministic,
//! independent of the thread count, and identical whether a position is computed in
//! decode or as one row of a prefill (batch invariance, which truncate-and-refeed
//! relies on).

use std::cell::RefCell;

use rayon::prelude::*;

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// One chunk of keys / values widened to f32 (f16 caches only).
    static WIDE: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// An element type the KV cache may store: `f32`, or `f16` (half the bytes to read
/// per position, which is what decode at long context is bound by).
pub(crate) trait KvElem: Copy + Send + Sync {
    /// `src` as f32: `src` itself for f32; for f16 widened into `buf` (F16C, 8 lanes
    /// at a time under `target-cpu=native`) and returned from there.
    fn widen<'a>(src: &'a [Self], buf: &'a mut Vec<f32>) -> &'a [f32];
}

impl KvElem for f32 {
    #[inline]
    fn widen<'a>(src: &'a [f32], _buf: &'a mut Vec<f32>) -> &'a [f32] {
        src
    }
}

impl KvElem for half::f16 {
    #[inline]
    fn widen<'a>(src: &'a [half::f16], buf: &'a mut Vec<f32>) -> &'a [f32] {
        // Grown once, never re-zeroed: every element read is written first.
        if buf.len() < src.len() {
            buf.resize(src.len(), 0.0);
        }
        let dst = &mut buf[..src.len()];
        // Element by element: with F16C compiled in (`target-cpu=native`), `to_f32`
        // inlines to `vcvtph2ps` and the loop vectorises; `convert_to_f32_slice` calls
        // its kernel through a function pointer per 8 elements.
        for (d, s) in dst.iter_mut().zip(src) {
            *d = s.to_f32();
        }
        dst
    }
}

/// Positions per work item. Small enough that two threads balance over three KV heads
/// from a few hundred positions on; large enough that the per-item overhead (a task,
/// one rescale) stays negligible.
pub(crate) const CHUNK: usize = 256;

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
/// kernel's dot product (`model.rs`). (Measured: splitting the sum over 4 × `LANES`
/// accumulators to shorten the dependency chain vectorised worse and ran 3× slower on
/// 64-wide heads; `dot_timing` below.)
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

/// `row ← e^(row − max)`; returns `(max, Σ row)`: a softmax numerator, in `LANES`
/// partial maxima and sums (vectorised) reduced in a fixed order. Chunks are normalised
/// together afterwards.
fn exp_shifted_in_place(row: &mut [f32]) -> (f32, f32) {
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
    (max, sum)
}

/// Columns per register block of [`weighted_sums_blocked`]: 4 AVX vectors.
const BLOCK: usize = 32;

/// `p[gi·(d+2) + 2 + c] = Σ_t scores[gi·len + t] · v[t·d + c]` for every query head `gi`
/// of the group (the `d + 2` layout of the partials; the first two slots untouched).
/// Groups of 1–4 heads with `d` a multiple of 32 take the register-blocked kernel,
/// anything else the plain loop; both sum over `t` in order.
fn weighted_value_sums(scores: &[f32], len: usize, v: &[f32], d: usize, group: usize, p: &mut [f32]) {
    if d.is_multiple_of(BLOCK) {
        match group {
            1 => return weighted_sums_blocked::<1>(scores, len, v, d, p),
            2 => return weighted_sums_blocked::<2>(scores, len, v, d, p),
            3 => return weighted_sums_blocked::<3>(scores, len, v, d, p),
            4 => return weighted_sums_blocked::<4>(scores, len, v, d, p),
            _ => {}
        }
    }
    let per_head = d + 2;
    for (t, v_t) in v.chunks_exact(d).enumerate() {
        for (gi, acc) in p.chunks_exact_mut(per_head).enumerate() {
            let w = scores[gi * len + t];
            for (a, &x) in acc[2..].iter_mut().zip(v_t) {
                *a += w * x;
            }
        }
    }
}

/// The value sums of `G` query heads, 32 columns at a time, with the `G × 32`
/// accumulators in registers for the whole pass over the positions (the plain loop
/// loads and stores them for every position). Same order of additions per column.
fn weighted_sums_blocked<const G: usize>(scores: &[f32], len: usize, v: &[f32], d: usize, p: &mut [f32]) {
    let per_head = d + 2;
    for col in (0..d).step_by(BLOCK) {
        let mut acc = [[0.0_f32; BLOCK]; G];
        for (t, v_t) in v.chunks_exact(d).enumerate() {
            let Some(x) = v_t.get(col..col + BLOCK) else { return };
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let w = scores[g * len + t];
                for c in 0..BLOCK {
                    acc_g[c] += w * x[c];
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            let at = g * per_head + 2 + col;
            p[at..at + BLOCK].copy_from_slice(acc_g);
        }
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
///
/// `T` is the cache's element type: f16 rows are widened to f32 one chunk at a time
/// (into per-thread buffers) and then go through exactly the f32 arithmetic, so an f16
/// cache gives the same result as an f32 cache holding the same (f16-rounded) values.
pub(crate) fn attend_one<T: KvElem>(
    g: Geometry,
    q: &[f32],
    k: &[T],
    v: &[T],
    visible: usize,
    out: &mut [f32],
) {
    let d = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    debug_assert_eq!(q.len(), g.n_heads * d);
    debug_assert_eq!(out.len(), g.n_heads * d);
    debug_assert!(k.len() >= g.n_kv_heads * g.head_stride * d && visible <= g.head_stride);
    let scale = 1.0 / (d as f32).sqrt();
    let chunks = visible.div_ceil(CHUNK).max(1);
    // Per item and query head of its group: the chunk's max, its sum, then `d` sums.
    let per_head = d + 2;
    let item = group * per_head;
    // Taken out of the thread-local (not borrowed) across the parallel section: a rayon
    // worker waiting here may run another sequence's attention, which then simply finds
    // an empty buffer.
    let mut partials = PARTIALS.with_borrow_mut(std::mem::take);
    partials.clear();
    partials.resize(g.n_kv_heads * chunks * item, 0.0);
    partials.par_chunks_mut(item).enumerate().for_each(|(task, p)| {
        let (j, c) = (task / chunks, task % chunks);
        let (start, end) = (c * CHUNK, ((c + 1) * CHUNK).min(visible));
        let len = end - start;
        let base = j * g.head_stride * d;
        let q_j = &q[j * group * d..(j + 1) * group * d];
        WIDE.with_borrow_mut(|(k_buf, v_buf)| {
            SCORES.with_borrow_mut(|scores| {
                let k_c = T::widen(&k[base + start * d..base + end * d], k_buf);
                let v_c = T::widen(&v[base + start * d..base + end * d], v_buf);
                // scores[gi * len + t] = q_gi · k_t / √d
                scores.clear();
                scores.resize(group * len, 0.0);
                for (t, k_t) in k_c.chunks_exact(d).enumerate() {
                    for (gi, q_g) in q_j.chunks_exact(d).enumerate() {
                        scores[gi * len + t] = dot(q_g, k_t) * scale;
                    }
                }
                for (gi, row) in scores.chunks_exact_mut(len.max(1)).enumerate() {
                    let (max, sum) = exp_shifted_in_place(row);
                    p[gi * per_head] = max;
                    p[gi * per_head + 1] = sum;
                }
                weighted_value_sums(scores, len, v_c, d, group, p);
            })
        });
    });
    // Combine the chunks in order: out_h = Σ_c e^(m_c − M) acc_c / Σ_c e^(m_c − M) s_c.
    for (h, o) in out.chunks_exact_mut(d).enumerate() {
        let (j, gi) = (h / group, h % group);
        let part = |c: usize| {
            let at = (j * chunks + c) * item + gi * per_head;
            &partials[at..at + per_head]
        };
        let max = (0..chunks).map(|c| part(c)[0]).fold(f32::NEG_INFINITY, f32::max);
        o.fill(0.0);
        let mut z = 0.0;
        for c in 0..chunks {
            let p = part(c);
            let w = exp_nonpositive(p[0] - max);
            z += w * p[1];
            for (o, &a) in o.iter_mut().zip(&p[2..]) {
                *o += w * a;
            }
        }
        let inv = 1.0 / z;
        for o in o.iter_mut() {
            *o *= inv;
        }
    }
    PARTIALS.with_borrow_mut(|slot| *slot = partials);
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
        // Capacities up to 2.5 chunks, so multi-chunk combination is covered.
        (1usize..4, 1usize..4, 1usize..20, prop_oneof![1usize..40, 200usize..(CHUNK * 5 / 2)]).prop_flat_map(
            |(n_kv, group, d, cap)| {
                let g = Geometry { n_heads: n_kv * group, n_kv_heads: n_kv, head_dim: d, head_stride: cap };
                let vals = |n| proptest::collection::vec(-4.0f32..4.0, n);
                (Just(g), vals(g.n_heads * d), vals(n_kv * cap * d), vals(n_kv * cap * d), 1..=cap)
            },
        )
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
        fn f16_cache_equals_f32_cache_of_the_rounded_values((g, q, k, v, visible) in case()) {
            let to16 = |x: &[f32]| x.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>();
            let (k16, v16) = (to16(&k), to16(&v));
            let widen = |x: &[half::f16]| x.iter().map(|x| x.to_f32()).collect::<Vec<_>>();
            let (k32, v32) = (widen(&k16), widen(&v16));
            let mut a = vec![0.0; g.n_heads * g.head_dim];
            let mut b = vec![0.0; g.n_heads * g.head_dim];
            attend_one(g, &q, &k16, &v16, visible, &mut a);
            attend_one(g, &q, &k32, &v32, visible, &mut b);
            prop_assert_eq!(a, b);
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

    /// The plain loop, for comparison with the blocked kernel.
    fn plain(scores: &[f32], len: usize, v: &[f32], d: usize, group: usize) -> Vec<f32> {
        let mut p = vec![0.0; group * (d + 2)];
        for (t, v_t) in v.chunks_exact(d).enumerate() {
            for (gi, acc) in p.chunks_exact_mut(d + 2).enumerate() {
                for (a, &x) in acc[2..].iter_mut().zip(v_t) {
                    *a += scores[gi * len + t] * x;
                }
            }
        }
        p
    }

    proptest! {
        #[test]
        fn blocked_value_sums_equal_the_plain_loop_bit_for_bit(
            group in 1usize..6, blocks in 1usize..4, len in 1usize..70, seed in 0u32..1000,
        ) {
            let d = blocks * BLOCK;
            let f = |i: usize| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0;
            let scores: Vec<f32> = (0..group * len).map(|i| f(i).abs()).collect();
            let v: Vec<f32> = (0..len * d).map(|i| f(i + 7)).collect();
            let mut p = vec![0.0; group * (d + 2)];
            weighted_value_sums(&scores, len, &v, d, group, &mut p);
            prop_assert_eq!(p, plain(&scores, len, &v, d, group));
        }
    }

    /// `cargo test --release -p perpetua-candle --lib value_sums_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn value_sums_timing() {
        let (d, group, len) = (64, 3, CHUNK);
        let scores: Vec<f32> = (0..group * len).map(|i| (i % 7) as f32 / 7.0).collect();
        let v: Vec<f32> = (0..len * d).map(|i| (i % 13) as f32 / 13.0).collect();
        let mut p = vec![0.0; group * (d + 2)];
        let reps = 20_000;
        for round in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..reps {
                p.fill(0.0);
                weighted_value_sums(std::hint::black_box(&scores), len, &v, d, group, &mut p);
            }
            let blocked = t.elapsed();
            let t = std::time::Instant::now();
            for _ in 0..reps {
                std::hint::black_box(plain(std::hint::black_box(&scores), len, &v, d, group));
            }
            let plain_t = t.elapsed();
            println!("round {round}: blocked {blocked:?}, plain {plain_t:?} ({} reps)", reps);
        }
    }

    /// Decode-step attention cost at a long position, SmolLM2's geometry (9 query / 3 KV
    /// heads of 64, 30 layers), f32 vs f16 cache:
    /// `cargo test --release -p perpetua-candle --lib attend_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn attend_timing() {
        let visible: usize = std::env::var("VISIBLE").ok().and_then(|v| v.parse().ok()).unwrap_or(4000);
        let g = Geometry { n_heads: 9, n_kv_heads: 3, head_dim: 64, head_stride: visible + 96 };
        let n = g.n_kv_heads * g.head_stride * g.head_dim;
        let f = |i: usize| ((i as u32).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0;
        // 30 layers' worth of distinct buffers, so the caches really come from memory.
        let k32: Vec<Vec<f32>> = (0..30).map(|l| (0..n).map(|i| f(i + l)).collect()).collect();
        let v32: Vec<Vec<f32>> = (0..30).map(|l| (0..n).map(|i| f(i + 7 * l + 3)).collect()).collect();
        let k16: Vec<Vec<half::f16>> =
            k32.iter().map(|k| k.iter().map(|&x| half::f16::from_f32(x)).collect()).collect();
        let v16: Vec<Vec<half::f16>> =
            v32.iter().map(|v| v.iter().map(|&x| half::f16::from_f32(x)).collect()).collect();
        let q: Vec<f32> = (0..g.n_heads * g.head_dim).map(|i| f(i + 11) / 4.0).collect();
        let mut out = vec![0.0; g.n_heads * g.head_dim];
        let steps = 20;
        for round in 0..3 {
            let t = std::time::Instant::now();
            for _ in 0..steps {
                for l in 0..30 {
                    attend_one(g, &q, &k32[l], &v32[l], visible, &mut out);
                }
            }
            let a = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            let t = std::time::Instant::now();
            for _ in 0..steps {
                for l in 0..30 {
                    attend_one(g, &q, &k16[l], &v16[l], visible, &mut out);
                }
            }
            let b = t.elapsed().as_secs_f64() * 1e3 / steps as f64;
            println!(
                "round {round}: visible {visible}: f32 cache {a:.2} ms/token, f16 cache {b:.2} ms/token (30 layers)"
            );
        }
    }

    /// `dot` over 4 × `LANES` accumulators (shorter dependency chains), for `dot_timing`.
    fn dot_four_chains(a: &[f32], b: &[f32]) -> f32 {
        const ACCS: usize = 4;
        let n = a.len().min(b.len());
        let (xa, xr) = a[..n].as_chunks::<LANES>();
        let (ya, yr) = b[..n].as_chunks::<LANES>();
        let mut acc = [[0.0_f32; LANES]; ACCS];
        let mut xq = xa.chunks_exact(ACCS);
        let mut yq = ya.chunks_exact(ACCS);
        for (xs, ys) in (&mut xq).zip(&mut yq) {
            for ((acc_k, x), y) in acc.iter_mut().zip(xs).zip(ys) {
                for l in 0..LANES {
                    acc_k[l] += x[l] * y[l];
                }
            }
        }
        for ((acc_k, x), y) in acc.iter_mut().zip(xq.remainder()).zip(yq.remainder()) {
            for l in 0..LANES {
                acc_k[l] += x[l] * y[l];
            }
        }
        let mut lanes = [0.0_f32; LANES];
        for acc_k in &acc {
            for l in 0..LANES {
                lanes[l] += acc_k[l];
            }
        }
        lanes.iter().sum::<f32>() + xr.iter().zip(yr).map(|(x, y)| x * y).sum::<f32>()
    }

    /// `cargo test --release -p perpetua-candle --lib dot_timing -- --ignored --nocapture`
    #[test]
    #[ignore = "timing, run by hand"]
    fn dot_timing() {
        let rows = 4096;
        let k: Vec<f32> = (0..rows * 64).map(|i| (i % 17) as f32 / 17.0).collect();
        let q: Vec<f32> = (0..64).map(|i| (i % 5) as f32 / 5.0).collect();
        for round in 0..3 {
            let t = std::time::Instant::now();
            let mut s = 0.0;
            for _ in 0..200 {
                for k_t in k.chunks_exact(64) {
                    s += dot_four_chains(std::hint::black_box(&q), k_t);
                }
            }
            let four = t.elapsed();
            let t = std::time::Instant::now();
            for _ in 0..200 {
                for k_t in k.chunks_exact(64) {
                    s += dot(std::hint::black_box(&q), k_t);
                }
            }
            let one = t.elapsed();
            println!("round {round}: dot (1 accumulator) {one:?}, 4 accumulators {four:?} ({s})");
        }
    }

    /// `row ← softmax(row)` through the kernel's numerator.
    fn softmax_in_place(row: &mut [f32]) {
        let (_, sum) = exp_shifted_in_place(row);
        for x in row.iter_mut() {
            *x /= sum;
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
