//! The linear maps of the forward pass: `x · Wᵀ` by candle's quantized kernels, the
//! register-tiled Q8_0 matmul for prefill rows ([`qgemm`]), and a weight-stationary
//! kernel for a few rows of f32 weights (verification passes).

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Tensor};

use super::pool::run_tasks;
#[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
use super::qgemm;
use super::simd::dot;
use crate::error::{CandleBackendError, Result};

/// `x · Wᵀ` for `x` of shape `(rows, k)`: Q8_0 weights with more than one row go
/// through [`qgemm::matmul`] on AVX2 CPUs (register-tiled, bit-identical to candle's
/// kernel, so a prefill row still equals a decode step), everything else through
/// `QMatMul::forward`.
pub(crate) fn linear(m: &QMatMul, x: &Tensor) -> Result<Tensor> {
    #[cfg(all(target_arch = "x86_64", target_feature = "avx2", target_feature = "fma"))]
    if let QMatMul::QTensor(w) = m
        && w.dtype() == GgmlDType::Q8_0
        && x.dtype() == DType::F32
        && x.device().is_cpu()
        && let Ok((rows, k)) = x.dims2()
        && rows > 1
        && let Ok((n, wk)) = w.shape().dims2()
        && wk == k
    {
        let x = x.contiguous()?;
        let (storage, layout) = x.storage_and_layout();
        if let candle_core::Storage::Cpu(cpu) = &*storage {
            let start = layout.start_offset();
            let xs = cpu.as_slice::<f32>()?.get(start..start + rows * k);
            let bytes = w.data()?;
            let mut out = vec![0.0_f32; rows * n];
            if let Some(xs) = xs
                && qgemm::matmul(xs, rows, k, &bytes, n, &mut out).is_some()
            {
                drop(storage);
                return Ok(Tensor::from_vec(out, (rows, n), x.device())?);
            }
        }
    }
    Ok(m.forward(x)?)
}

/// Most rows [`linear_rows`] handles with its weight-stationary kernel.
const FEW_ROWS: usize = 16;

/// `x · Wᵀ` for `x` of shape `(n, k)`. For f32 weights (`QMatMul::Tensor`) and
/// `2 <= n <= FEW_ROWS` it reads each weight row once and dots it with every input row:
/// a verification pass of a few tokens then costs about one decode step of weight
/// traffic, where gemm would first pack the whole weight matrix. Anything else goes to
/// [`linear`] (quantized kernels already tile rows).
pub(crate) fn linear_rows(m: &QMatMul, x: &Tensor) -> Result<Tensor> {
    let QMatMul::Tensor(w) = m else {
        return linear(m, x);
    };
    let (n, k) = x.dims2()?;
    if w.dtype() != DType::F32
        || x.dtype() != DType::F32
        || !(2..=FEW_ROWS).contains(&n)
        || !w.device().is_cpu()
    {
        return linear(m, x);
    }
    let (out_dim, wk) = w.dims2()?;
    if wk != k {
        return linear(m, x);
    }
    let xs = x.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
    let w = w.contiguous()?;
    let (storage, layout) = w.storage_and_layout();
    let candle_core::Storage::Cpu(cpu) = &*storage else {
        drop(storage);
        return linear(m, x);
    };
    let start = layout.start_offset();
    let ws = cpu.as_slice::<f32>()?.get(start..start + out_dim * k).ok_or_else(|| {
        CandleBackendError::invalid("weight length", out_dim * k, "exceeds the weight storage")
    })?;
    // out_t[j · n + r] = W_j · x_r, in chunks of output features across candle's
    // threads (the last chunk padded, then cut off).
    const FEATURES: usize = 64;
    let mut out_t = Vec::new();
    run_tasks(out_dim.div_ceil(FEATURES), FEATURES * n, &mut out_t, |c, chunk| {
        for (f, out) in chunk.chunks_exact_mut(n).enumerate() {
            let j = c * FEATURES + f;
            let Some(w_j) = ws.get(j * k..(j + 1) * k) else { break };
            for (r, o) in out.iter_mut().enumerate() {
                *o = dot(w_j, &xs[r * k..(r + 1) * k]);
            }
        }
    });
    out_t.truncate(out_dim * n);
    drop(storage);
    Ok(Tensor::from_vec(out_t, (out_dim, n), x.device())?.t()?.contiguous()?)
}
