//! Fused grouped-query attention on the CPU: query rows of one or several sequences,
//! each over its own cache.
//!
//! The reference path (candle matmuls, one query head at a time, bit-identical to
//! candle-transformers) reads each KV head once per query head of its group — three
//! times for SmolLM2. This kernel reads every cached row exactly once: for each KV head
//! it scores all `group` query heads against a block of key rows held in registers, then
//! accumulates all `group` outputs from each value row.
//!
//! Work is split over (KV head, chunk of [`CHUNK`] positions) items, run on candle's
//! CPU thread pool ([`run_tasks`]), as in flash-decoding: each item computes its chunk's
//! softmax numerator with its own maximum, and a short sequential pass rescales and sums
//! the chunks. With SmolLM2's 3 KV heads,
//! splitting over heads alone left one of 2 threads idle a third of the time; chunks
//! keep both busy at long context. The chunking depends only on the number of visible
//! positions and every sum runs in a fixed order, so results are deterministic,
//! independent of the thread count, and identical whether a position is computed in
//! decode or as one row of a prefill (batch invariance, which truncate-and-refeed
//! relies on).
//!
//! The inner loops are whole-vector fused multiply-adds on `[f32; LANES]` arrays, which
//! LLVM turns into one AVX instruction each, with enough independent accumulators to
//! cover the FMA latency; f16 caches are widened in registers as rows are loaded. Once
//! the arithmetic is that cheap, a full decode step at long context waits on the cache
//! rows coming from DRAM (the model's weights have evicted them from L3), so the score
//! loop prefetches the key and value rows it will read next (docs/PERFORMANCE.md).

use std::cell::RefCell;

use super::pool::run_tasks;
use super::simd::{
    KvElem, LANES, exp_nonpositive, exp_nonpositive_lanes, fmadd, fmadd_lanes, prefetch, sum_lanes,
    sum_lanes_of_rows,
};

thread_local! {
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    static PARTIALS: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
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
    /// Multiplier of `q·k` (`1/√head_dim` for most families; Gemma's
    /// `query_pre_attn_scalar^-½`).
    pub scale: f32,
    /// Attention-logit soft-capping (Gemma 2): a scaled score `s` becomes
    /// `cap · tanh(s / cap)` before the softmax. `None`: scores as they are.
    pub softcap: Option<f32>,
}

impl Geometry {
    /// The plain geometry: scale `1/√head_dim`, no soft-capping.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn plain(n_heads: usize, n_kv_heads: usize, head_dim: usize, head_stride: usize) -> Self {
        let scale = 1.0 / (head_dim as f32).sqrt();
        Self { n_heads, n_kv_heads, head_dim, head_stride, scale, softcap: None }
    }
}

/// `s ← cap · tanh(s / cap)` over `scores` (attention-logit soft-capping).
fn softcap_in_place(scores: &mut [f32], cap: f32) {
    for s in scores {
        *s = cap * (*s / cap).tanh();
    }
}

/// How far ahead of the rows being scored [`key_scores`] asks for key and value rows:
/// two blocks. The hardware prefetcher stops at every 4 KiB page (32 rows of f16), and
/// at long context the rows come from DRAM: without the hint, the scores loop waited on
/// its loads.
const PREFETCH_ROWS: usize = 2 * POS_BLOCK;

/// Positions per register block of [`key_scores`]: `G × POS_BLOCK` accumulators of
/// `LANES`, each key row loaded (and, for f16, widened) once for the whole group, the
/// sums of each head reduced together. Eight on AVX-512 machines (24 accumulators for
/// SmolLM2's group of 3 in their 32 registers); four elsewhere, where AVX2's 16
/// registers would spill 24 accumulators on every multiply-add (measured in
/// docs/PERFORMANCE.md). A score's arithmetic does not depend on the block (see
/// [`key_scores`]), so both give the same bits.
const POS_BLOCK: usize = if cfg!(target_feature = "avx512f") { LANES } else { 4 };

/// `scores[g·len + t] = (q_g · k_t) · scale` for the `G` query heads of a group and the
/// first `len` key rows of `k` (`d` a multiple of [`LANES`]).
///
/// Every score is the same computation — `LANES` lane accumulators fed by fused
/// multiply-adds over `d` in order, then the fixed-order [`sum_lanes`] — whether its
/// row falls in a block of [`POS_BLOCK`] or in the tail, so a position's score does not
/// depend on where the chunk ends (batch invariance). The blocks are for throughput:
/// `G × POS_BLOCK` independent chains hide the FMA latency a lone dot product waits on.
fn key_scores<T: KvElem, const G: usize>(
    q: &[f32],
    k: &[T],
    v: &[T],
    d: usize,
    len: usize,
    scale: f32,
    scores: &mut [f32],
) {
    let per_row = d / LANES;
    let (q_lanes, _) = q[..G * d].as_chunks::<LANES>();
    let q_g: [&[[f32; LANES]]; G] = std::array::from_fn(|g| &q_lanes[g * per_row..(g + 1) * per_row]);
    let (k_lanes, _) = k[..len * d].as_chunks::<LANES>();
    let mut blocks = k_lanes.chunks_exact(POS_BLOCK * per_row);
    let mut t = 0;
    let line = 64 / std::mem::size_of::<T>();
    for block in &mut blocks {
        let ahead = (t + PREFETCH_ROWS) * d;
        for i in (ahead..ahead + POS_BLOCK * d).step_by(line) {
            prefetch(k, i);
            prefetch(v, i);
        }
        let rows: [&[[T; LANES]]; POS_BLOCK] =
            std::array::from_fn(|p| &block[p * per_row..(p + 1) * per_row]);
        let mut acc = [[[0.0_f32; LANES]; POS_BLOCK]; G];
        for c in 0..per_row {
            for (p, row) in rows.iter().enumerate() {
                let kv = T::lanes(&row[c]);
                for (acc_g, q_row) in acc.iter_mut().zip(&q_g) {
                    acc_g[p] = fmadd_lanes(q_row[c], kv, acc_g[p]);
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            let sums = sum_lanes_of_rows(acc_g);
            for (s, x) in scores[g * len + t..g * len + t + POS_BLOCK].iter_mut().zip(sums) {
                *s = x * scale;
            }
        }
        t += POS_BLOCK;
    }
    for row in blocks.remainder().chunks_exact(per_row) {
        let mut acc = [[0.0_f32; LANES]; G];
        for (c, x) in row.iter().enumerate() {
            let kv = T::lanes(x);
            for (acc_g, q_row) in acc.iter_mut().zip(&q_g) {
                *acc_g = fmadd_lanes(q_row[c], kv, *acc_g);
            }
        }
        for (g, &a) in acc.iter().enumerate() {
            scores[g * len + t] = sum_lanes(a) * scale;
        }
        t += 1;
    }
}

/// The scores (`scores[g·len + t]`) of a group of query heads (`q_j`, `group × d`)
/// against the `len = k.len() / d` key rows of `k` (`v`: the matching value rows, only
/// prefetched): [`key_scores`] for groups of 1–4 and `d` a multiple of [`LANES`] (every
/// llama-family model we know of), a scalar loop otherwise.
fn scores_of_group<T: KvElem>(q_j: &[f32], k: &[T], v: &[T], d: usize, scale: f32, scores: &mut [f32]) {
    let (group, len) = (q_j.len() / d, k.len() / d);
    if d.is_multiple_of(LANES) {
        match group {
            1 => return key_scores::<T, 1>(q_j, k, v, d, len, scale, scores),
            2 => return key_scores::<T, 2>(q_j, k, v, d, len, scale, scores),
            3 => return key_scores::<T, 3>(q_j, k, v, d, len, scale, scores),
            4 => return key_scores::<T, 4>(q_j, k, v, d, len, scale, scores),
            _ => {}
        }
    }
    for (t, k_t) in k.chunks_exact(d).take(len).enumerate() {
        for (gi, q_g) in q_j.chunks_exact(d).enumerate() {
            let s = q_g.iter().zip(k_t).fold(0.0, |acc, (&x, y)| fmadd(x, y.get(), acc));
            scores[gi * len + t] = s * scale;
        }
    }
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
    let (vectors, _) = row[..split].as_chunks_mut::<LANES>();
    for c in vectors {
        *c = exp_nonpositive_lanes(std::array::from_fn(|l| c[l] - max));
        sums = std::array::from_fn(|l| sums[l] + c[l]);
    }
    let mut sum = sums.iter().sum::<f32>();
    for s in &mut row[split..] {
        *s = exp_nonpositive(*s - max);
        sum += *s;
    }
    (max, sum)
}

/// `p[gi·(d+2) + 2 + c] = Σ_t scores[gi·len + t] · v[t·d + c]` for every query head `gi`
/// of the group (the `d + 2` layout of the partials; the first two slots untouched).
///
/// The register-blocked kernel keeps `G × V` vectors of accumulators for a whole pass
/// over the positions: all 64 columns of a head at once for groups of up to 3 (24
/// registers: AVX-512 machines have 32), 32 columns per pass for groups of 4. Anything
/// else takes the plain loop. Every variant sums over `t` in order with [`fmadd`], so
/// they agree bit for bit.
pub(crate) fn weighted_value_sums<T: KvElem>(
    scores: &[f32],
    len: usize,
    v: &[T],
    d: usize,
    group: usize,
    p: &mut [f32],
) {
    const WIDE: usize = 8; // vectors per pass: 64 columns
    const NARROW: usize = 4; // 32 columns
    let wide = d.is_multiple_of(WIDE * LANES);
    if d.is_multiple_of(NARROW * LANES) {
        match (group, wide) {
            (1, true) => return weighted_sums_blocked::<T, 1, WIDE>(scores, len, v, d, p),
            (2, true) => return weighted_sums_blocked::<T, 2, WIDE>(scores, len, v, d, p),
            (3, true) => return weighted_sums_blocked::<T, 3, WIDE>(scores, len, v, d, p),
            (1, false) => return weighted_sums_blocked::<T, 1, NARROW>(scores, len, v, d, p),
            (2, false) => return weighted_sums_blocked::<T, 2, NARROW>(scores, len, v, d, p),
            (3, false) => return weighted_sums_blocked::<T, 3, NARROW>(scores, len, v, d, p),
            (4, _) => return weighted_sums_blocked::<T, 4, NARROW>(scores, len, v, d, p),
            _ => {}
        }
    }
    let per_head = d + 2;
    // `p` is the thread's scratch, reused from task to task: start the sums from zero
    // (the blocked kernels overwrite their columns). Before this reset, a thread running
    // several items in a row added the previous item's sums into the next one whenever
    // `head_dim` was not a multiple of 32 — hidden while a dispatch had at most 16 items
    // (one per thread grab); the row-blocked prefill dispatch found it.
    for acc in p.chunks_exact_mut(per_head).take(group) {
        acc[2..].fill(0.0);
    }
    for (t, v_t) in v.chunks_exact(d).take(len).enumerate() {
        for (gi, acc) in p.chunks_exact_mut(per_head).enumerate() {
            let w = scores[gi * len + t];
            for (a, &x) in acc[2..].iter_mut().zip(v_t) {
                *a = fmadd(w, x.get(), *a);
            }
        }
    }
}

/// The value sums of `G` query heads, `V · LANES` columns per pass over the positions,
/// with the `G × V` accumulator vectors in registers throughout (the plain loop loads and
/// stores them for every position). Same order of additions per column as the plain
/// loop.
fn weighted_sums_blocked<T: KvElem, const G: usize, const V: usize>(
    scores: &[f32],
    len: usize,
    v: &[T],
    d: usize,
    p: &mut [f32],
) {
    let per_head = d + 2;
    let width = V * LANES;
    for col in (0..d).step_by(width) {
        let mut acc = [[[0.0_f32; LANES]; V]; G];
        for (t, v_t) in v.chunks_exact(d).take(len).enumerate() {
            let Some(x) = v_t.get(col..col + width) else { return };
            let (x, _) = x.as_chunks::<LANES>();
            let x: [[f32; LANES]; V] = std::array::from_fn(|i| T::lanes(&x[i]));
            for (g, acc_g) in acc.iter_mut().enumerate() {
                let w = [scores[g * len + t]; LANES];
                for (a, x_i) in acc_g.iter_mut().zip(&x) {
                    *a = fmadd_lanes(w, *x_i, *a);
                }
            }
        }
        for (g, acc_g) in acc.iter().enumerate() {
            let at = g * per_head + 2 + col;
            for (dst, a) in p[at..at + width].chunks_exact_mut(LANES).zip(acc_g) {
                dst.copy_from_slice(a);
            }
        }
    }
}

/// `scores[g·len + t] *= row_scales[t]` for every head `g` (Q8 caches).
fn scale_rows(scores: &mut [f32], len: usize, row_scales: &[f32]) {
    for row in scores.chunks_exact_mut(len.max(1)) {
        for (s, &r) in row.iter_mut().zip(row_scales) {
            *s *= r;
        }
    }
}

/// [`attend_rows`] for a single query row (what a decode step computes; the tests'
/// reference for one position).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn attend_one<T: KvElem>(
    g: Geometry,
    q: &[f32],
    kv: (&[T], &[T]),
    scales: Option<(&[f32], &[f32])>,
    seen: std::ops::Range<usize>,
    out: &mut [f32],
) {
    attend_rows(g, q, kv, scales, |_| seen.clone(), out);
}

/// Query rows per pool dispatch in [`attend_sequences`]: enough (row, KV head, chunk) items
/// to keep every thread busy from the first positions of a prompt on, few enough that
/// the partial results of one dispatch stay small (≈ 2.4 MB for SmolLM2 at 8,192
/// positions).
const ROWS_PER_DISPATCH: usize = 32;

/// Attention of `n = q.len() / (n_heads · head_dim)` query rows (one for a decode
/// step, a prompt's rows for a prefill), row `i` over the cached positions `seen(i)`
/// (`0..visible` without a sliding window, the window's last positions with one).
///
/// - `q`: `n × n_heads × head_dim` (row `i`, query head `h` at `q[(i·n_heads + h)·d..]`),
///   already rotated.
/// - `k`, `v`: a layer's cache buffers, `n_kv_heads × head_stride × head_dim`.
/// - `out`: like `q`, overwritten with `softmax(q_h·Kᵀ/√d)·V` per row and head, query
///   head `h` reading KV head `h / (n_heads / n_kv_heads)`.
///
/// `T` is the cache's element type: f16 rows are widened exactly to f32 as they are
/// loaded and then go through the f32 arithmetic, so an f16 cache gives the same result
/// as an f32 cache holding the same (f16-rounded) values. Q8 codes come with `scales`
/// (keys', values'; `n_kv_heads × head_stride`, one per row): a key row's scale
/// multiplies its score, a value row's scale its softmax weight (after the softmax sum,
/// which stays that of the unscaled weights).
///
/// One sequence's rows: [`attend_sequences`] with one [`Rows`] (the tests' form).
#[cfg(any(test, feature = "testing"))]
pub(crate) fn attend_rows<T: KvElem>(
    g: Geometry,
    q: &[f32],
    kv: (&[T], &[T]),
    scales: Option<(&[f32], &[f32])>,
    seen: impl Fn(usize) -> std::ops::Range<usize> + Sync,
    out: &mut [f32],
) {
    attend_sequences(&[Rows { g, q, kv, scales, seen: &seen }], out);
}

/// The query rows of one sequence in an [`attend_sequences`] call, over that
/// sequence's own cache (see [`attend_rows`] for the layouts).
pub(crate) struct Rows<'a, T> {
    /// The sequence's geometry: every sequence of a call shares all but `head_stride`
    /// (its cache's capacity).
    pub g: Geometry,
    /// `n × n_heads × head_dim`, already rotated.
    pub q: &'a [f32],
    /// The layer's key and value buffers of this sequence's cache.
    pub kv: (&'a [T], &'a [T]),
    /// Q8 caches: the scales of the key rows and of the value rows.
    pub scales: Option<(&'a [f32], &'a [f32])>,
    /// The positions row `i` attends to.
    pub seen: &'a (dyn Fn(usize) -> std::ops::Range<usize> + Sync),
}

/// Attention of the query rows of several sequences, each over its own cache, as one
/// set of work items: `out` holds every sequence's rows one after another (the
/// sequences' `q` concatenated). A batch's decode step is then one pool hand-off per
/// block of rows for all sequences together instead of one per sequence — at SmolLM2's
/// 3 KV heads a lone decode row is 3 items, which 2 threads split 2 : 1.
///
/// The work items are (row, KV head, chunk of [`CHUNK`] positions) triples, run on the
/// pool [`ROWS_PER_DISPATCH`] rows at a time: a prefill pays one pool hand-off per block
/// of rows, not one per row, and short rows (a prompt's first positions: one chunk per
/// KV head) no longer leave threads idle. An item's computation depends only on its
/// row's query and positions, and each row's chunks are combined in chunk order, so a
/// row's output is bit-identical whether it is computed alone (decode), among other
/// rows (prefill) or among other sequences' rows (a batch): batch invariance, which
/// truncate-and-refeed and batched generation rely on (tested below).
///
/// Scratch space for the scores is a per-thread buffer reused across calls, so
/// steady-state decode allocates nothing here.
/// Callers guarantee the slice lengths and that every sequence has the same `n_heads`
/// and `head_dim` (checked by `debug_assert`s; the caller in `model.rs` validates them
/// and returns an error before calling).
pub(crate) fn attend_sequences<T: KvElem>(seqs: &[Rows<'_, T>], out: &mut [f32]) {
    let Some(first) = seqs.first() else { return };
    let (d, n_heads) = (first.g.head_dim, first.g.n_heads);
    let width = n_heads * d;
    let group = n_heads / first.g.n_kv_heads.max(1);
    for s in seqs {
        debug_assert_eq!((s.g.head_dim, s.g.n_heads, s.g.n_kv_heads), (d, n_heads, first.g.n_kv_heads));
        debug_assert_eq!(s.q.len() % width.max(1), 0);
        debug_assert!(s.kv.0.len() >= s.g.n_kv_heads * s.g.head_stride * d);
    }
    if width == 0 {
        return;
    }
    let n: usize = seqs.iter().map(|s| s.q.len() / width).sum();
    debug_assert_eq!(out.len(), n * width);
    // Per item and query head of its group: the chunk's max, its sum, then `d` sums.
    let per_head = d + 2;
    let item = group * per_head;
    let span = |s: &Rows<'_, T>, i: usize| {
        let seen = (s.seen)(i);
        let (first, visible) = (seen.start, seen.end.max(seen.start));
        debug_assert!(visible <= s.g.head_stride);
        (first, visible, (visible - first).div_ceil(CHUNK).max(1))
    };
    // Taken out of the thread-local (not borrowed) across the parallel section: the
    // calling thread runs tasks too, and they use the other thread-locals.
    let mut partials = PARTIALS.with_borrow_mut(std::mem::take);
    // The (sequence, row) of each row of the block; `starts[r]`: its first item (a
    // row's items are (KV head, chunk)).
    let mut at = [(0_usize, 0_usize); ROWS_PER_DISPATCH];
    let mut starts = [0_usize; ROWS_PER_DISPATCH + 1];
    let (mut seq, mut row) = (0, 0);
    let mut done = 0;
    while done < n {
        let mut rows = 0;
        while rows < ROWS_PER_DISPATCH && done + rows < n {
            while row >= seqs[seq].q.len() / width {
                (seq, row) = (seq + 1, 0);
            }
            at[rows] = (seq, row);
            let s = &seqs[seq];
            starts[rows + 1] = starts[rows] + s.g.n_kv_heads * span(s, row).2;
            (rows, row) = (rows + 1, row + 1);
        }
        let (at, starts) = (&at[..rows], &starts[..=rows]);
        run_tasks(starts[rows], item, &mut partials, |task, p| {
            let r = starts.partition_point(|&s| s <= task) - 1;
            let (si, i) = at[r];
            let s = &seqs[si];
            let (first, visible, chunks) = span(s, i);
            let local = task - starts[r];
            let (j, c) = (local / chunks, local % chunks);
            let q_i = &s.q[i * width..(i + 1) * width];
            chunk_partials(s.g, q_i, s.kv, s.scales, (first, visible), (j, c), p);
        });
        for (r, &(si, i)) in at.iter().enumerate() {
            let s = &seqs[si];
            let (_, _, chunks) = span(s, i);
            let from = starts[r] * item;
            let o = (done + r) * width;
            combine_chunks(
                s.g,
                &partials[from..from + s.g.n_kv_heads * chunks * item],
                chunks,
                &mut out[o..o + width],
            );
        }
        done += rows;
    }
    PARTIALS.with_borrow_mut(|slot| *slot = partials);
}

/// One work item: the query heads of KV head `j` over chunk `c` of the positions
/// `first..visible`. Writes, per query head of the group, the chunk's score maximum,
/// the sum of its shifted exponentials and the `d` weighted value sums into `p`.
#[inline]
fn chunk_partials<T: KvElem>(
    g: Geometry,
    q: &[f32],
    (k, v): (&[T], &[T]),
    scales: Option<(&[f32], &[f32])>,
    (first, visible): (usize, usize),
    (j, c): (usize, usize),
    p: &mut [f32],
) {
    let d = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    let per_head = d + 2;
    let (start, end) = (first + c * CHUNK, (first + (c + 1) * CHUNK).min(visible));
    let len = end - start;
    let base = j * g.head_stride * d;
    let q_j = &q[j * group * d..(j + 1) * group * d];
    let k_c = &k[base + start * d..base + end * d];
    let v_c = &v[base + start * d..base + end * d];
    let rows = j * g.head_stride + start..j * g.head_stride + end;
    let row_scales = scales.map(|(ks, vs)| (&ks[rows.clone()], &vs[rows]));
    SCORES.with_borrow_mut(|scores| {
        // scores[gi * len + t] = q_gi · k_t · scale (then soft-capped)
        scores.clear();
        scores.resize(group * len, 0.0);
        scores_of_group(q_j, k_c, v_c, d, g.scale, scores);
        if let Some((ks, _)) = row_scales {
            scale_rows(scores, len, ks);
        }
        if let Some(cap) = g.softcap {
            softcap_in_place(scores, cap);
        }
        for (gi, row) in scores.chunks_exact_mut(len.max(1)).enumerate() {
            let (max, sum) = exp_shifted_in_place(row);
            p[gi * per_head] = max;
            p[gi * per_head + 1] = sum;
        }
        if let Some((_, vs)) = row_scales {
            scale_rows(scores, len, vs);
        }
        weighted_value_sums(scores, len, v_c, d, group, p);
    });
}

/// Combine one query row's chunk partials (`n_kv_heads × chunks` items, KV head major)
/// in chunk order: out_h = Σ_c e^(m_c − M) acc_c / Σ_c e^(m_c − M) s_c.
fn combine_chunks(g: Geometry, partials: &[f32], chunks: usize, out: &mut [f32]) {
    let d = g.head_dim;
    let group = g.n_heads / g.n_kv_heads;
    let per_head = d + 2;
    let item = group * per_head;
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
            let cap = g.softcap.map(f64::from);
            let scores: Vec<f64> = (0..visible)
                .map(|t| row(k, t).iter().zip(&qh).map(|(a, b)| a * b).sum::<f64>() * f64::from(g.scale))
                .map(|s| cap.map_or(s, |c| c * (s / c).tanh()))
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
        // A quarter of the cases with Gemma's scoring: another scale, soft-capped scores.
        let scoring = prop_oneof![3 => Just(None), 1 => (0.05f32..1.0, 0.5f32..8.0).prop_map(Some)];
        (1usize..4, 1usize..4, 1usize..20, prop_oneof![1usize..40, 200usize..(CHUNK * 5 / 2)], scoring)
            .prop_flat_map(|(n_kv, group, d, cap, scoring)| {
                let mut g = Geometry::plain(n_kv * group, n_kv, d, cap);
                if let Some((scale, softcap)) = scoring {
                    (g.scale, g.softcap) = (scale, Some(softcap));
                }
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
            attend_one(g, &q, (&k, &v), None, 0..visible, &mut out);
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
            attend_one(g, &q, (&k16, &v16), None, 0..visible, &mut a);
            attend_one(g, &q, (&k32, &v32), None, 0..visible, &mut b);
            prop_assert_eq!(a, b);
        }

        #[test]
        fn q8_cache_matches_textbook_attention_of_the_decoded_values((g, q, k, v, visible) in case()) {
            let (mut kc, mut ks, mut vc, mut vs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            crate::cache::quantize_q8(&k, g.head_dim, &mut kc, &mut ks);
            crate::cache::quantize_q8(&v, g.head_dim, &mut vc, &mut vs);
            let decode = |codes: &[u8], scales: &[f32]| -> Vec<f32> {
                codes.chunks_exact(g.head_dim).zip(scales)
                    .flat_map(|(row, &s)| row.iter().map(move |&c| c.get() * s))
                    .collect()
            };
            let (k8, v8) = (decode(&kc, &ks), decode(&vc, &vs));
            // Quantization itself: each value within half a step of its row's scale, plus
            // the f32 rounding of `x / s` and of `code * s` (a tie can round either way:
            // CI found 3.1592767 decoded as 3.1745393 at scale 0.030524416, 1.4e-7 past
            // half a step).
            for ((&x, &y), s) in k.iter().zip(&k8).zip(ks.iter().flat_map(|&s| std::iter::repeat_n(s, g.head_dim))) {
                let rounding = (x.abs() + y.abs()) * f32::EPSILON;
                prop_assert!((x - y).abs() <= 0.5 * s * (1.0 + 1e-5) + rounding + 1e-7, "{x} decoded as {y} (scale {s})");
            }
            let mut out = vec![f32::NAN; g.n_heads * g.head_dim];
            attend_one(g, &q, (&kc, &vc), Some((&ks, &vs)), 0..visible, &mut out);
            let want = reference(g, &q, &k8, &v8, visible);
            for (i, (&a, &b)) in out.iter().zip(&want).enumerate() {
                prop_assert!((f64::from(a) - b).abs() <= 1e-4 * (1.0 + b.abs()), "out[{i}] = {a}, want {b}");
            }
        }

        #[test]
        fn rows_together_equal_rows_one_by_one(
            (g, _q, k, v, visible) in case(),
            extra in 1usize..70,
            window in prop_oneof![Just(None), (1usize..300).prop_map(Some)],
            q8 in any::<bool>(),
            seed in any::<u64>(),
        ) {
            // `n` query rows ending at `visible` (more than one dispatch block when
            // `extra` > ROWS_PER_DISPATCH), each seeing its causal prefix within the window.
            let n = extra.min(visible);
            let width = g.n_heads * g.head_dim;
            let mut next = crate::kernels::test_values::uniform(seed, 4);
            let q: Vec<f32> = (0..n * width).map(|_| next()).collect();
            let pos = visible - n;
            let seen = |i: usize| {
                let end = pos + i + 1;
                window.map_or(0, |w: usize| end.saturating_sub(w))..end
            };
            let (mut kc, mut ks, mut vc, mut vs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            crate::cache::quantize_q8(&k, g.head_dim, &mut kc, &mut ks);
            crate::cache::quantize_q8(&v, g.head_dim, &mut vc, &mut vs);
            let mut together = vec![f32::NAN; n * width];
            if q8 {
                attend_rows(g, &q, (&kc, &vc), Some((&ks, &vs)), seen, &mut together);
            } else {
                attend_rows(g, &q, (&k, &v), None, seen, &mut together);
            }
            for i in 0..n {
                let mut alone = vec![f32::NAN; width];
                let q_i = &q[i * width..(i + 1) * width];
                if q8 {
                    attend_one(g, q_i, (&kc, &vc), Some((&ks, &vs)), seen(i), &mut alone);
                } else {
                    attend_one(g, q_i, (&k, &v), None, seen(i), &mut alone);
                }
                let got: Vec<u32> = together[i * width..(i + 1) * width].iter().map(|x| x.to_bits()).collect();
                let want: Vec<u32> = alone.iter().map(|x| x.to_bits()).collect();
                prop_assert_eq!(got, want, "row {} of {}", i, n);
            }
        }

        #[test]
        fn sequences_together_equal_each_sequence_alone(
            (n_kv, group, d) in (1usize..4, 1usize..4, prop_oneof![1usize..20, Just(64)]),
            seqs in proptest::collection::vec((1usize..(CHUNK * 5 / 2), 1usize..40, any::<bool>()), 1..6),
            q8 in any::<bool>(),
            seed in any::<u64>(),
        ) {
            // Sequences of one geometry, each over its own cache (capacities differ,
            // some windowed) with 1–39 query rows ending at its last position: one call
            // for all of them gives every row the bits of its sequence's call alone.
            let mut next = crate::kernels::test_values::uniform(seed, 4);
            let mut data = Vec::new();
            for &(cap, rows, windowed) in &seqs {
                let g = Geometry::plain(n_kv * group, n_kv, d, cap);
                let n = rows.min(cap);
                let q: Vec<f32> = (0..n * g.n_heads * d).map(|_| next()).collect();
                let (k, v): (Vec<f32>, Vec<f32>) = (0..n_kv * cap * d).map(|_| (next(), next())).unzip();
                let (mut kc, mut ks, mut vc, mut vs) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
                crate::cache::quantize_q8(&k, d, &mut kc, &mut ks);
                crate::cache::quantize_q8(&v, d, &mut vc, &mut vs);
                let (pos, window) = (cap - n, if windowed { cap / 3 + 1 } else { cap });
                data.push((g, q, (k, v), (kc, vc, ks, vs), pos, window));
            }
            let seen: Vec<_> = data
                .iter()
                .map(|&(.., pos, window)| move |i: usize| (pos + i + 1).saturating_sub(window)..pos + i + 1)
                .collect();
            // (every sequence in one call, each sequence in a call of its own)
            fn together_and_alone<T: KvElem>(rows: &[Rows<'_, T>]) -> (Vec<f32>, Vec<f32>) {
                let total: usize = rows.iter().map(|r| r.q.len()).sum();
                let mut together = vec![f32::NAN; total];
                attend_sequences(rows, &mut together);
                let mut alone = Vec::new();
                for one in rows {
                    let mut out = vec![f32::NAN; one.q.len()];
                    attend_sequences(std::slice::from_ref(one), &mut out);
                    alone.extend(out);
                }
                (together, alone)
            }
            let (together, alone) = if q8 {
                let rows: Vec<Rows<'_, u8>> = data.iter().zip(&seen).map(|((g, q, _, (kc, vc, ks, vs), ..), seen)| {
                    Rows { g: *g, q, kv: (kc, vc), scales: Some((ks, vs)), seen }
                }).collect();
                together_and_alone(&rows)
            } else {
                let rows: Vec<Rows<'_, f32>> = data.iter().zip(&seen).map(|((g, q, (k, v), ..), seen)| {
                    Rows { g: *g, q, kv: (k, v), scales: None, seen }
                }).collect();
                together_and_alone(&rows)
            };
            prop_assert!(together.iter().all(|x| x.is_finite()));
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&together), bits(&alone));
        }

        #[test]
        fn a_window_attends_to_its_positions_only((g, q, k, v, visible) in case(), cut in 0usize..64) {
            // Positions before the window hold NaN: a kernel that reads them fails.
            let first = cut * (visible - 1) / 63;
            let mut poisoned_k = k.clone();
            let mut poisoned_v = v.clone();
            for j in 0..g.n_kv_heads {
                for t in 0..first {
                    let s = (j * g.head_stride + t) * g.head_dim;
                    poisoned_k[s..s + g.head_dim].fill(f32::NAN);
                    poisoned_v[s..s + g.head_dim].fill(f32::NAN);
                }
            }
            let mut out = vec![f32::NAN; g.n_heads * g.head_dim];
            attend_one(g, &q, (&poisoned_k, &poisoned_v), None, first..visible, &mut out);
            // The textbook attention over the window's rows alone.
            let rows = visible - first;
            let window = |x: &[f32]| -> Vec<f32> {
                let mut w = vec![0.0; g.n_kv_heads * g.head_stride * g.head_dim];
                for j in 0..g.n_kv_heads {
                    let from = (j * g.head_stride + first) * g.head_dim;
                    let to = j * g.head_stride * g.head_dim;
                    w[to..to + rows * g.head_dim].copy_from_slice(&x[from..from + rows * g.head_dim]);
                }
                w
            };
            let want = reference(g, &q, &window(&k), &window(&v), rows);
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
            attend_one(g, &q, (&k, &v), None, 0..visible, &mut a);
            attend_one(g, &q, (&poisoned_k, &poisoned_v), None, 0..visible, &mut b);
            prop_assert_eq!(a, b);
        }
    }

    proptest! {
        /// A key's score is the same bits whether it is scored in a block of
        /// `POS_BLOCK` rows or alone (the tail path): decode and prefill agree.
        #[test]
        fn block_and_tail_scores_agree_bit_for_bit(
            group in 1usize..5, per_row in 1usize..10, len in 1usize..40, seed in 0u32..1000,
        ) {
            let d = per_row * LANES;
            let f = |i: usize| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 500.0 - 2.0;
            let q: Vec<f32> = (0..group * d).map(f).collect();
            let k: Vec<f32> = (0..len * d).map(|i| f(i + 101)).collect();
            let mut all = vec![0.0; group * len];
            scores_of_group(&q, &k, &k, d, 0.125, &mut all);
            for t in 0..len {
                let mut one = vec![0.0; group];
                scores_of_group(&q, &k[t * d..(t + 1) * d], &k, d, 0.125, &mut one);
                for gi in 0..group {
                    prop_assert_eq!(all[gi * len + t].to_bits(), one[gi].to_bits(), "t {} head {}", t, gi);
                }
            }
        }
    }

    proptest! {
        #[test]
        fn blocked_value_sums_equal_the_plain_loop_bit_for_bit(
            group in 1usize..6, blocks in 1usize..4, len in 1usize..70, seed in 0u32..1000,
        ) {
            let d = blocks * 4 * LANES;
            let f = |i: usize| ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) % 2001) as f32 / 1000.0 - 1.0;
            let scores: Vec<f32> = (0..group * len).map(|i| f(i).abs()).collect();
            let v: Vec<f32> = (0..len * d).map(|i| f(i + 7)).collect();
            let mut p = vec![0.0; group * (d + 2)];
            weighted_value_sums(&scores, len, &v, d, group, &mut p);
            prop_assert_eq!(p, crate::testing::kernels::value_sums_plain(&scores, len, &v, d, group));
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
