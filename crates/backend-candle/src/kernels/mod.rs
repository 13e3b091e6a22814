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
