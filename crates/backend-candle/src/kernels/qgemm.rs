//! Register-tiled Q8_0 matrix products for multi-row passes (prefill) on AVX2 CPUs.
//!
//! candle's quantized matmul computes every (activation row, weight row) product with
//! one call of its Q8_0 dot product, which keeps a single accumulator per product: each
//! 32-value block waits for the previous block's fused multiply-add (≈ 5 cycles of
//! latency for 32 multiply-adds), and each call reloads its activation block and
//! converts both f16 scales in scalar code. In a prefill that loop was ≈ 73 % of the
//! time (`perf`, 512-token prompt, AMD EPYC with AVX2; docs/PERFORMANCE.md).
//!
//! [`matmul`] computes the same products [`R`] activation rows (8 with AVX-512 VNNI, 4
//! otherwise) at a time against one weight row: each weight block is loaded, and its scale
//! widened, once for `R` rows, and the `R` accumulators are independent, so the
//! multiply-adds pipeline instead of waiting on each other. The weight rows of a work item are taken in order, so the
//! weights stream through the cache as one sequential read, which the hardware
//! prefetcher follows (the activation rows, a few KiB, stay in L1). Register tiles of
//! 4 activation × 4 weight rows (and, before them, a pass widening the tile's scales)
//! read four weight rows side by side, 612 bytes apart for SmolLM2 (k = 576): streams too short
//! for the prefetcher, so the products waited on memory (measured in
//! docs/PERFORMANCE.md: 8 × 1 is 10–19 % faster at batch 4–8 on AVX-512 VNNI).
//!
//! **Bit-identical to candle.** Every product runs exactly the operation sequence of
//! candle 0.11.1's `vec_dot_q8_0_q8_0` (AVX2): per block the integer dot in eight i32
//! lanes (`maddubs(|w|, sign(a, w))`, then pairs summed — exact integer arithmetic, no
//! saturation since Q8_0 codes lie in −127..=127), converted to f32 and accumulated as
//! `fma(d_w · d_a, q, acc)` in block order, then the same horizontal sum; activations
//! are quantized with the same arithmetic as candle's `BlockQ8_0::from_float`. So a
//! prefill row computes exactly what a one-row decode step (candle's kernel) computes:
//! the batch invariance that truncate-and-refeed relies on holds, and logits do not
//! change (tested against `QMatMul::forward` in this module's tests and by the
//! conformance kit).
//!
//! **VNNI.** Where the target has AVX-512 VNNI and VL, the integer dot runs as one
//! `vpdpbusd` per product instead of sign, `maddubs` and `madd`: the activation codes are
//! stored unsigned (`a + 128`, XORed once when the activations are quantized) and each
//! weight block's `−128 · Σ w` per
//! lane (one more `vpdpbusd`, shared by every activation row) starts the sum, so every
//! i32 lane is the same exact integer `Σ a·w` over the same four positions; the scale
//! product, conversion, FMA and horizontal sum are unchanged — still bit-identical to
//! candle.
//!
//! Compiled only where the target has AVX2, FMA and F16C (the workspace builds with
//! `target-cpu=native`); elsewhere [`matmul`] is absent and callers use candle's kernel.

use std::arch::x86_64::{
    __m256, __m256i, _mm_add_ps, _mm_add_ss, _mm_cvtss_f32, _mm_movehdup_ps, _mm_movehl_ps,
    _mm256_castps256_ps128, _mm256_cvtepi32_ps, _mm256_extractf128_ps, _mm256_fmadd_ps, _mm256_loadu_si256,
    _mm256_set1_ps, _mm256_setzero_ps,
};
use std::sync::Mutex;

use half::f16;

/// Values per Q8_0 block.
const BLOCK: usize = 32;
/// Bytes per Q8_0 block: an f16 scale, then 32 signed codes.
const BLOCK_BYTES: usize = 34;
/// Activation rows per register tile (against one weight row): 8 with AVX-512 VNNI (32
/// vector registers), 4 otherwise (8 accumulators spilled in AVX2's 16).
const R: usize = if cfg!(all(target_feature = "avx512vnni", target_feature = "avx512vl")) { 8 } else { 4 };
/// Activation rows per quantization task (fewer rows than twice this: one row a task).
const ROWS_PER_PART: usize = 8;
/// XORed into every stored activation code: with VNNI `0x80`, which stores `code + 128`
/// as unsigned (`vpdpbusd` multiplies unsigned by signed bytes); otherwise 0 (the codes
/// as candle stores them, signed).
const CODE_OFFSET: u8 =
    if cfg!(all(target_feature = "avx512vnni", target_feature = "avx512vl")) { 0x80 } else { 0 };
/// Activation rows per work item (a multiple of [`R`]).
const ROW_TILE: usize = 16;
/// Weight rows per work item.
const COL_TILE: usize = 64;

/// Activations quantized to Q8_0: per row `kb` blocks of 32 codes (each XORed with
/// [`CODE_OFFSET`]), and per block its scale widened from f16 (what the dot product
/// multiplies by).
struct Quantized {
    codes: Vec<[u8; BLOCK]>,
    scales: Vec<f32>,
}

/// `x · Wᵀ` for `x` of shape `(m, k)` (row-major f32) and a Q8_0 weight matrix
/// `(n, k)` given as its GGUF bytes (`n` rows of `k / 32` blocks); writes `(m, n)` into
/// `out`. Runs on candle's CPU thread pool. Returns `None` (and writes nothing) when the
/// shapes do not fit: `k` not a multiple of 32, or slices of the wrong length.
pub(crate) fn matmul(x: &[f32], m: usize, k: usize, w: &[u8], n: usize, out: &mut [f32]) -> Option<()> {
    if k == 0 || !k.is_multiple_of(BLOCK) || x.len() != m * k || w.len() != n * (k / BLOCK) * BLOCK_BYTES {
        return None;
    }
    if out.len() != m * n {
        return None;
    }
    if m == 0 || n == 0 {
        return Some(());
    }
    let kb = k / BLOCK;
    let a = quantize(x, m, k);
    let pool = candle_core::utils::barrier_pool();
    let row_tiles = m.div_ceil(ROW_TILE);
    let col_tiles = n.div_ceil(COL_TILE);
    // One lock per row tile of the output: items of the same row tile (other column
    // tiles) write disjoint columns, each under its tile's lock, uncontended in practice.
    let rows: Vec<Mutex<&mut [f32]>> = out.chunks_mut(ROW_TILE * n).map(Mutex::new).collect();
    let blocks = w.as_chunks::<BLOCK_BYTES>().0;
    pool.execute_chunked(row_tiles * col_tiles, |items| {
        let mut tile = [0.0_f32; ROW_TILE * COL_TILE];
        for item in items {
            // Column-tile major: a worker's consecutive items share the weight tile.
            let (ct, rt) = (item / row_tiles, item % row_tiles);
            let (r0, r1) = (rt * ROW_TILE, m.min((rt + 1) * ROW_TILE));
            let (c0, c1) = (ct * COL_TILE, n.min((ct + 1) * COL_TILE));
            let width = c1 - c0;
            item_products(&a, kb, &blocks[c0 * kb..c1 * kb], (r0, r1), width, &mut tile);
            let mut dst = rows[rt].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            for (r, row) in tile.chunks_exact(COL_TILE).take(r1 - r0).enumerate() {
                dst[r * n + c0..r * n + c1].copy_from_slice(&row[..width]);
            }
        }
    });
    Some(())
}

/// Quantize the rows of `x` as candle's `BlockQ8_0::from_float` does: per block of 32,
/// `d = max|x| / 127`, codes `round(x / d)` (through `x · (1/d)`, as candle), `d` kept
/// as f16. Rows are split over the pool.
fn quantize(x: &[f32], m: usize, k: usize) -> Quantized {
    let kb = k / BLOCK;
    let mut codes = vec![[0_u8; BLOCK]; m * kb];
    let mut scales = vec![0.0_f32; m * kb];
    {
        // A batch's decode step (a few rows): one row a task, so both threads quantize.
        let rows = if m < 2 * ROWS_PER_PART { 1 } else { ROWS_PER_PART };
        type Part<'a> = Mutex<(&'a mut [[u8; BLOCK]], &'a mut [f32])>;
        let parts: Vec<Part<'_>> =
            codes.chunks_mut(rows * kb).zip(scales.chunks_mut(rows * kb)).map(Mutex::new).collect();
        candle_core::utils::barrier_pool().execute_chunked(parts.len(), |range| {
            for p in range {
                let mut guard = parts[p].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                let (codes, scales) = &mut *guard;
                let xs = &x[p * rows * k..((p + 1) * rows * k).min(x.len())];
                for ((block, code), scale) in
                    xs.chunks_exact(BLOCK).zip(codes.iter_mut()).zip(scales.iter_mut())
                {
                    let amax = block.iter().fold(0.0_f32, |a, &v| a.max(v.abs()));
                    let d = amax / 127.0;
                    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                    *scale = f16::from_f32(d).to_f32();
                    for (c, &v) in code.iter_mut().zip(block) {
                        *c = ((f32::round(v * id) as i8) as u8) ^ CODE_OFFSET;
                    }
                }
            }
        });
    }
    Quantized { codes, scales }
}

/// The products of activation rows `r0..r1` with the `width` weight rows of `w` (their
/// blocks, `width × kb`) into `tile` (`ROW_TILE × COL_TILE`, row-major; only the
/// covered part is written): weight row by weight row, [`R`] activation rows at a time.
fn item_products(
    a: &Quantized,
    kb: usize,
    w: &[[u8; BLOCK_BYTES]],
    (r0, r1): (usize, usize),
    width: usize,
    tile: &mut [f32],
) {
    for (c, w_row) in w.chunks_exact(kb).take(width).enumerate() {
        let mut r = r0;
        while r < r1 {
            let rn = (r1 - r).min(R);
            let mut sums = [0.0_f32; R];
            let t =
                Tile { a: (&a.codes[r * kb..(r + rn) * kb], &a.scales[r * kb..(r + rn) * kb]), w: w_row, kb };
            macro_rules! dispatch {
                ($($rn:literal),*) => {
                    match rn {
                        $($rn => products::<$rn>(t, &mut sums),)*
                        _ => unreachable!("rn is 1..=R"),
                    }
                };
            }
            // SAFETY: `products` needs AVX2, FMA and F16C (and, compiled as the VNNI
            // version, AVX-512 VNNI and VL); this module is compiled only when the target
            // has AVX2, FMA and F16C (`cfg` on `mod qgemm`), the VNNI version only when
            // it has those too (`cfg` on each `products`).
            #[allow(unsafe_code)]
            #[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
            unsafe {
                dispatch!(1, 2, 3, 4, 5, 6, 7, 8)
            }
            // SAFETY: as above.
            #[allow(unsafe_code)]
            #[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
            unsafe {
                dispatch!(1, 2, 3, 4)
            }
            for (i, &sum) in sums.iter().take(rn).enumerate() {
                tile[(r - r0 + i) * COL_TILE + c] = sum;
            }
            r += rn;
        }
    }
}

/// The operands of one register tile: activation rows (codes, widened scales) and one
/// weight row (GGUF blocks), `kb` blocks per row.
struct Tile<'a> {
    a: (&'a [[u8; BLOCK]], &'a [f32]),
    w: &'a [[u8; BLOCK_BYTES]],
    kb: usize,
}

/// 32 bytes as one AVX2 register.
#[inline]
#[allow(unsafe_code)]
#[target_feature(enable = "avx2,fma")]
fn load(b: &[u8; BLOCK]) -> __m256i {
    // SAFETY: `b` is 32 readable bytes, exactly what an unaligned 256-bit load reads.
    unsafe { _mm256_loadu_si256(b.as_ptr().cast()) }
}

/// A GGUF Q8_0 block's codes (its last 32 bytes, after the f16 scale) and its scale
/// widened to f32 (exact) in all eight lanes.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn block(b: &[u8; BLOCK_BYTES]) -> (__m256i, __m256) {
    use std::arch::x86_64::{_mm_set1_epi16, _mm256_cvtph_ps};
    let [lo, hi, codes @ ..] = b;
    (load(codes), _mm256_cvtph_ps(_mm_set1_epi16(i16::from_le_bytes([*lo, *hi]))))
}

/// candle's `hsum_float_8`, step for step.
#[inline]
#[target_feature(enable = "avx2,fma")]
fn hsum(x: __m256) -> f32 {
    let res = _mm256_extractf128_ps::<1>(x);
    let res = _mm_add_ps(res, _mm256_castps256_ps128(x));
    let res = _mm_add_ps(res, _mm_movehl_ps(res, res));
    let res = _mm_add_ss(res, _mm_movehdup_ps(res));
    _mm_cvtss_f32(res)
}

/// `sums[i]` = the dot product of the tile's activation row `i` (`RN ≤ R` rows given)
/// with its weight row, each in candle's `vec_dot_q8_0_q8_0` arithmetic. With AVX-512
/// VNNI: the integer dots as one `vpdpbusd` each (module docs).
#[cfg(all(target_feature = "avx512vnni", target_feature = "avx512vl"))]
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512vnni,avx512vl")]
fn products<const RN: usize>(t: Tile<'_>, sums: &mut [f32; R]) {
    use std::arch::x86_64::{
        _mm256_dpbusd_epi32, _mm256_mul_ps, _mm256_set1_epi8, _mm256_setzero_si256, _mm256_sub_epi32,
    };
    let kb = t.kb;
    let a_codes: [&[[u8; BLOCK]]; RN] = std::array::from_fn(|i| &t.a.0[i * kb..(i + 1) * kb]);
    let a_scales: [&[f32]; RN] = std::array::from_fn(|i| &t.a.1[i * kb..(i + 1) * kb]);
    // 128 in every byte: the offset the stored activation codes carry.
    let flip = _mm256_set1_epi8(i8::MIN);
    let zero = _mm256_setzero_si256();
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, w) in t.w.iter().enumerate().take(kb) {
        let (wq, ws) = block(w);
        // −128 · (the sum of each lane's four weight codes): what the activations' +128
        // adds to the unsigned dot, taken off before it starts.
        let offset = _mm256_sub_epi32(zero, _mm256_dpbusd_epi32(zero, flip, wq));
        for i in 0..RN {
            // The stored codes are already `code + 128` ([`CODE_OFFSET`]).
            let au = load(&a_codes[i][b]);
            // candle: d = f16(x.d)·f16(y.d) with x the weight block, y the activation's.
            let d = _mm256_mul_ps(ws, _mm256_set1_ps(a_scales[i][b]));
            let q = _mm256_cvtepi32_ps(_mm256_dpbusd_epi32(offset, au, wq));
            acc[i] = _mm256_fmadd_ps(d, q, acc[i]);
        }
    }
    for i in 0..RN {
        sums[i] = hsum(acc[i]);
    }
}

/// `sums[i]` = the dot product of the tile's activation row `i` (`RN ≤ R` rows given)
/// with its weight row, each in candle's `vec_dot_q8_0_q8_0` arithmetic.
#[cfg(not(all(target_feature = "avx512vnni", target_feature = "avx512vl")))]
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn products<const RN: usize>(t: Tile<'_>, sums: &mut [f32; R]) {
    use std::arch::x86_64::{
        _mm256_madd_epi16, _mm256_maddubs_epi16, _mm256_mul_ps, _mm256_set1_epi16, _mm256_sign_epi8,
    };
    let kb = t.kb;
    let a_codes: [&[[u8; BLOCK]]; RN] = std::array::from_fn(|i| &t.a.0[i * kb..(i + 1) * kb]);
    let a_scales: [&[f32]; RN] = std::array::from_fn(|i| &t.a.1[i * kb..(i + 1) * kb]);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); RN];
    for (b, w) in t.w.iter().enumerate().take(kb) {
        let (wq, ws) = block(w);
        let wabs = _mm256_sign_epi8(wq, wq);
        for i in 0..RN {
            // candle: d = f16(x.d)·f16(y.d) with x the weight block, y the activation's.
            let d = _mm256_mul_ps(ws, _mm256_set1_ps(a_scales[i][b]));
            let sy = _mm256_sign_epi8(load(&a_codes[i][b]), wq);
            let dot = _mm256_maddubs_epi16(wabs, sy);
            let q = _mm256_cvtepi32_ps(_mm256_madd_epi16(ones, dot));
            acc[i] = _mm256_fmadd_ps(d, q, acc[i]);
        }
    }
    for i in 0..RN {
        sums[i] = hsum(acc[i]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    use proptest::prelude::*;

    /// Our product against candle's `QMatMul::forward` on the same Q8_0 weights: every
    /// output bit equal, for row counts across the tile edges and 1 (decode).
    fn check(m: usize, n: usize, kb: usize, seed: u64) -> Result<(), TestCaseError> {
        let k = kb * BLOCK;
        let mut next = crate::kernels::test_values::uniform(seed, 10);
        let xs: Vec<f32> = (0..m * k).map(|i| if i % 97 == 5 { 0.0 } else { next() }).collect();
        let ws: Vec<f32> = (0..n * k).map(|_| next() * 0.05).collect();
        let dev = Device::Cpu;
        let wt = Tensor::from_vec(ws, (n, k), &dev).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let q = QTensor::quantize(&wt, GgmlDType::Q8_0).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let bytes = q.data().map_err(|e| TestCaseError::fail(e.to_string()))?.into_owned();
        let mm = QMatMul::from_qtensor(q).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let x = Tensor::from_vec(xs.clone(), (m, k), &dev).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: Vec<f32> = mm
            .forward(&x)
            .and_then(|t| t.flatten_all()?.to_vec1())
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut got = vec![f32::NAN; m * n];
        prop_assert!(matmul(&xs, m, k, &bytes, n, &mut got).is_some());
        let (g, w): (Vec<u32>, Vec<u32>) =
            (got.iter().map(|x| x.to_bits()).collect(), want.iter().map(|x| x.to_bits()).collect());
        prop_assert_eq!(g, w);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn equals_candles_kernel_bit_for_bit(m in 1usize..40, n in 1usize..140, kb in 1usize..6, seed in any::<u64>()) {
            check(m, n, kb, seed)?;
        }
    }

    #[test]
    fn shapes_that_do_not_fit_are_refused() {
        let mut out = vec![0.0; 4];
        assert!(matmul(&[0.0; 40], 2, 20, &[0; 2 * 34], 2, &mut out).is_none(), "k not a multiple of 32");
        assert!(matmul(&[0.0; 64], 2, 32, &[0; 34], 2, &mut out).is_none(), "weights too short");
        assert!(matmul(&[0.0; 64], 2, 32, &[0; 2 * 34], 2, &mut out[..3]).is_none(), "output too short");
    }
}
