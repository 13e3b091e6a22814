//! The linear maps of the forward pass: `x · Wᵀ` by candle's quantized kernels, the
//! register-tiled Q8_0 matmul for prefill rows ([`qgemm`]), and a weight-stationary
//! kernel for a few rows of f32 weights (verification passes).

use candle_core::quantized::{GgmlDType, QMatMul};
use candle_core::{DType, Module, Tensor};

use super::pool::run_tasks;
#[cfg(all(
    target_arch = "x86_64",
    target_feature = "avx2",
    target_feature = "fma",
    target_feature = "f16c"
))]
use super::qgemm;
use super::simd::dot;
use crate::error::{CandleBackendError, Result};

/// `x · Wᵀ` for `x` of shape `(rows, k)`: Q8_0 weights with more than one row go
/// through [`qgemm::matmul`] on AVX2 CPUs (register-tiled, bit-identical to candle's
/// kernel, so a prefill row still equals a decode step), everything else through
/// `QMatMul::forward` — including every Q8_0 matrix that candle itself runs on its
/// VNNI kernels ([`candle_uses_vnni_q8_0`]), whose arithmetic (activations quantized in
/// 256-wide blocks) differs from `qgemm`'s: one kernel for every row count keeps a
/// row's result independent of the rows beside it (prefill = decode, batch = solo).
pub(crate) fn linear(m: &QMatMul, x: &Tensor) -> Result<Tensor> {
    #[cfg(all(
        target_arch = "x86_64",
        target_feature = "avx2",
        target_feature = "fma",
        target_feature = "f16c"
    ))]
    if let QMatMul::QTensor(w) = m
        && w.dtype() == GgmlDType::Q8_0
        && x.dtype() == DType::F32
        && x.device().is_cpu()
        && let Ok((rows, k)) = x.dims2()
        && rows > 1
        && let Ok((n, wk)) = w.shape().dims2()
        && wk == k
        && !candle_uses_vnni_q8_0(n, k)
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

/// Whether candle (0.11.1, `quantized::repack_x86::select`) multiplies a Q8_0 matrix
/// of `n` rows × `k` columns with its repacked VNNI kernels on this CPU: `k` a multiple
/// of 256, `n` of 16, and a CPU with AVX-512 VNNI (or AVX-VNNI), unless
/// `MISTRALRS_FORCE_AVX2=1`. Those kernels quantize activations in 256-wide blocks, so
/// [`qgemm`]'s rows (candle's 32-wide AVX2 arithmetic) would differ from candle's own
/// single-row result; [`linear`] leaves such matrices to candle for every row count.
/// Mirrors candle's rule (checked by `linear_rows_do_not_depend_on_the_row_count`).
pub(crate) fn candle_uses_vnni_q8_0(n: usize, k: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static VNNI: OnceLock<bool> = OnceLock::new();
        let vnni = *VNNI.get_or_init(|| {
            let var = |name: &str| std::env::var(name).as_deref() == Ok("1");
            if var("MISTRALRS_FORCE_AVX2") {
                return false;
            }
            (std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vnni"))
                || ((var("MISTRALRS_FORCE_AVXVNNI") || std::arch::is_x86_feature_detected!("avxvnni"))
                    && std::arch::is_x86_feature_detected!("avx2"))
        });
        vnni && k > 0 && k.is_multiple_of(256) && n.is_multiple_of(16)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (n, k);
        false
    }
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

#[cfg(test)]
mod tests {
    use candle_core::Device;
    use candle_core::quantized::QTensor;

    use super::*;

    /// A row of `linear` is the same bits whether it is alone (a decode step) or among
    /// others (a prefill, a batch), for shapes candle runs on each of its kernels
    /// (k = 576 and 96: 32-wide blocks everywhere; k = 1,536 and 256: VNNI where the CPU
    /// has it).
    #[test]
    fn linear_rows_do_not_depend_on_the_row_count() {
        let dev = Device::Cpu;
        for (n, k) in [(64, 576), (64, 1536), (48, 256), (32, 96)] {
            let f = |i: usize, s: u32| {
                ((i as u32).wrapping_mul(2_654_435_761).wrapping_add(s) % 2001) as f32 / 1000.0 - 1.0
            };
            let w: Vec<f32> = (0..n * k).map(|i| f(i, 7) * 0.05).collect();
            let w = QTensor::quantize(&Tensor::from_vec(w, (n, k), &dev).unwrap(), GgmlDType::Q8_0).unwrap();
            let m = QMatMul::from_qtensor(w).unwrap();
            let rows = 5;
            let x: Vec<f32> = (0..rows * k).map(|i| f(i, 11) * 3.0).collect();
            let all = linear(&m, &Tensor::from_vec(x.clone(), (rows, k), &dev).unwrap()).unwrap();
            let all: Vec<Vec<f32>> = all.to_vec2().unwrap();
            for (r, got) in all.iter().enumerate() {
                let one = Tensor::from_vec(x[r * k..(r + 1) * k].to_vec(), (1, k), &dev).unwrap();
                let alone: Vec<Vec<f32>> = linear(&m, &one).unwrap().to_vec2().unwrap();
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(got), bits(&alone[0]), "n {n} k {k} row {r}");
            }
        }
    }
}
