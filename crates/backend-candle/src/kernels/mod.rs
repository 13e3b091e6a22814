//! The CPU hot path, by role: [`simd`] (vector primitives), [`attention`] (the fused
//! grouped-query attention kernel), [`linear`] (the linear maps, with [`qgemm`], the
//! register-tiled Q8_0 matmul) and [`pool`] (tasks on candle's thread pool).

pub(crate) mod attention;
pub(crate) mod linear;
pub(crate) mod pool;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
pub(crate) mod qgemm;
pub(crate) mod simd;
