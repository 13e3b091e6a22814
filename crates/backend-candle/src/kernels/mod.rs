//! The CPU hot path, by role: [`simd`] (vector primitives), [`attention`] (the fused
//! grouped-query attention kernel), [`activation`] (the gated MLP's `silu(gate)·up`),
//! [`linear`] (the linear maps, with [`qgemm`], the
//! register-tiled Q8_0 matmul), [`rope`] (rotary embeddings of a pass's rows at their
//! own positions) and [`pool`] (tasks on candle's thread pool).

pub(crate) mod activation;
pub(crate) mod attention;
pub(crate) mod linear;
pub(crate) mod pool;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))]
pub(crate) mod qgemm;
pub(crate) mod rope;
pub(crate) mod simd;

/// Deterministic inputs for the kernels' tests.
#[cfg(test)]
pub(crate) mod test_values {
    /// xorshift64 from `seed` (any seed: 0 is made odd).
    pub(crate) fn xorshift(seed: u64) -> impl FnMut() -> u64 {
        let mut state = seed | 1;
        move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        }
    }

    /// Values in `[−r, r]` on a 0.001 grid, from [`xorshift`].
    pub(crate) fn uniform(seed: u64, r: u32) -> impl FnMut() -> f32 {
        let mut next = xorshift(seed);
        let steps = 2_000 * u64::from(r) + 1;
        move || (next() % steps) as f32 / 1_000.0 - r as f32
    }
}
