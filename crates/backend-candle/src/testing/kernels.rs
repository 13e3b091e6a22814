//! The hot CPU kernels and the alternatives they were chosen over, for the timing
//! benchmark `benches/benches/kernels.rs` (timing lives there; correctness in this
//! crate's property tests, which use the same baselines).

use crate::kernels::attention::{CHUNK, Geometry, attend_one, weighted_value_sums};
use crate::kernels::simd::{LANES, dot as simd_dot, fmadd};

/// The dot product the model runs (one chain of `LANES` accumulators).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    simd_dot(a, b)
}

/// The alternative to [`dot`]: four chains of `LANES` accumulators (shorter dependency
/// chains, more registers). Measured no faster at SmolLM2's head width of 64.
pub fn dot_four_chains(a: &[f32], b: &[f32]) -> f32 {
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

/// Positions per attention work item (the value-sum benchmark's length).
pub const ATTENTION_CHUNK: usize = CHUNK;

/// The register-blocked value sums of the attention kernel: for each of `group` query
/// heads, `Σ_t scores[g·len + t] · v[t]` into `out[g·(d + 2) + 2..]` (`out` holds
/// `group · (d + 2)` values; the first two of each head are untouched).
///
/// # Panics
/// If the slices are shorter than `len`, `d` and `group` say.
pub fn value_sums_blocked(scores: &[f32], len: usize, v: &[f32], d: usize, group: usize, out: &mut [f32]) {
    weighted_value_sums(scores, len, v, d, group, out);
}

/// The plain loop [`value_sums_blocked`] replaces (the same sums, in the same order).
pub fn value_sums_plain(scores: &[f32], len: usize, v: &[f32], d: usize, group: usize) -> Vec<f32> {
    let mut p = vec![0.0; group * (d + 2)];
    for (t, v_t) in v.chunks_exact(d).enumerate() {
        for (gi, acc) in p.chunks_exact_mut(d + 2).enumerate() {
            for (a, &x) in acc[2..].iter_mut().zip(v_t) {
                *a = fmadd(scores[gi * len + t], x, *a);
            }
        }
    }
    p
}

/// Which cache element type [`AttentionLayers::decode_step`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheKind {
    /// f32 keys and values.
    F32,
    /// f16 keys and values (the default cache).
    F16,
    /// Q8 codes with one f32 scale per head row.
    Q8,
}

/// Q8 codes and their per-row scales.
type Q8Rows = (Vec<u8>, Vec<f32>);

/// One decode step's attention at a long position with SmolLM2's geometry (9 query and
/// 3 key/value heads of 64, 30 layers), over an f32, f16 or Q8 cache of the same values.
pub struct AttentionLayers {
    geometry: Geometry,
    visible: usize,
    k32: Vec<Vec<f32>>,
    v32: Vec<Vec<f32>>,
    k16: Vec<Vec<half::f16>>,
    v16: Vec<Vec<half::f16>>,
    q8: Vec<(Q8Rows, Q8Rows)>,
    q: Vec<f32>,
    out: Vec<f32>,
}

impl std::fmt::Debug for AttentionLayers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttentionLayers")
            .field("visible", &self.visible)
            .field("layers", &self.k32.len())
            .finish()
    }
}

impl AttentionLayers {
    /// Caches of `visible` positions for `layers` distinct layers (1: every layer reads
    /// the same, cache-resident buffers — the arithmetic alone; 30: SmolLM2's memory
    /// traffic).
    pub fn new(visible: usize, layers: usize) -> Self {
        let geometry = Geometry::plain(9, 3, 64, visible + 96);
        let n = geometry.n_kv_heads * geometry.head_stride * geometry.head_dim;
        let f = |i: usize| ((i as u32).wrapping_mul(2_654_435_761) % 2001) as f32 / 1000.0 - 1.0;
        let layers = layers.max(1);
        let k32: Vec<Vec<f32>> = (0..layers).map(|l| (0..n).map(|i| f(i + l)).collect()).collect();
        let v32: Vec<Vec<f32>> = (0..layers).map(|l| (0..n).map(|i| f(i + 7 * l + 3)).collect()).collect();
        let to16 = |x: &Vec<f32>| x.iter().map(|&x| half::f16::from_f32(x)).collect::<Vec<_>>();
        let k16 = k32.iter().map(to16).collect();
        let v16 = v32.iter().map(to16).collect();
        let quantize = |x: &[f32]| {
            let (mut codes, mut scales) = (Vec::new(), Vec::new());
            crate::cache::quantize_q8(x, geometry.head_dim, &mut codes, &mut scales);
            (codes, scales)
        };
        let q8 = k32.iter().zip(&v32).map(|(k, v)| (quantize(k), quantize(v))).collect();
        let q = (0..geometry.n_heads * geometry.head_dim).map(|i| f(i + 11) / 4.0).collect();
        let out = vec![0.0; geometry.n_heads * geometry.head_dim];
        Self { geometry, visible, k32, v32, k16, v16, q8, q, out }
    }

    /// Attention of one query position over 30 layers (cycling through the distinct
    /// ones); returns one output value so the work cannot be optimised away.
    pub fn decode_step(&mut self, kind: CacheKind) -> f32 {
        let (g, seen) = (self.geometry, 0..self.visible);
        for layer in 0..30 {
            let l = layer % self.k32.len();
            match kind {
                CacheKind::F32 => {
                    attend_one(g, &self.q, (&self.k32[l], &self.v32[l]), None, seen.clone(), &mut self.out)
                }
                CacheKind::F16 => {
                    attend_one(g, &self.q, (&self.k16[l], &self.v16[l]), None, seen.clone(), &mut self.out)
                }
                CacheKind::Q8 => {
                    let ((kc, ks), (vc, vs)) = &self.q8[l];
                    attend_one(g, &self.q, (kc, vc), Some((ks, vs)), seen.clone(), &mut self.out);
                }
            }
        }
        self.out[0]
    }
}
