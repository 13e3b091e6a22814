//! The gated MLP's activation for SiLU families: `silu(gate) · up`, one pass over both
//! halves of the fused gate/up projection, rows split over candle's pool.
//!
//! candle computes `silu(gate)` and then `· up` as two element-wise ops, each a full
//! pass that allocates; below 64 Ki elements (a batch's decode step: 8 rows × 1,536)
//! both run on the calling thread while the pool's worker spins. [`silu_mul`] evaluates
//! candle's expression per element — `g / (1 + e^(−g))` with the same `exp`, then `· u`
//! — so the bits are the ones the two ops produced.

use super::pool::for_each_chunk;

/// `out[r·cols + c] = silu(gate_r[c]) · up_r[c]` for `rows` rows, row `r` of `gate` at
/// `gate.0[r·gate.1..]` and of `up` at `up.0[r·up.1..]` (`(slice, row stride)`), `cols`
/// values each. Rows run on candle's pool when there are several. Returns `None`
/// (having written nothing) when a slice is too short.
pub(crate) fn silu_mul(
    (gate, gate_stride): (&[f32], usize),
    (up, up_stride): (&[f32], usize),
    (rows, cols): (usize, usize),
    out: &mut [f32],
) -> Option<()> {
    let fits = |len: usize, stride: usize| rows == 0 || len >= (rows - 1) * stride + cols;
    if out.len() != rows * cols || !fits(gate.len(), gate_stride) || !fits(up.len(), up_stride) {
        return None;
    }
    if rows == 0 || cols == 0 {
        return Some(());
    }
    let row = |r: usize, dst: &mut [f32]| {
        let g = &gate[r * gate_stride..r * gate_stride + cols];
        let u = &up[r * up_stride..r * up_stride + cols];
        for ((o, &g), &u) in dst.iter_mut().zip(g).zip(u) {
            *o = g / (1.0 + (-g).exp()) * u;
        }
    };
    if rows == 1 {
        row(0, out);
    } else {
        for_each_chunk(out, cols, row);
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// Every output bit equals candle's `silu(gate) * up` on the two halves of a
        /// fused `(rows, 2·cols)` projection (strided rows), including values where
        /// `e^(−g)` overflows or underflows.
        #[test]
        fn equals_candles_silu_times_up_bit_for_bit(rows in 0usize..20, cols in 1usize..70, seed in any::<u64>()) {
            let mut raw = crate::kernels::test_values::xorshift(seed);
            let mut next = || {
                let state = raw();
                let x = (state % 40_001) as f32 / 1_000.0 - 20.0;
                if state.is_multiple_of(17) { x * 10.0 } else { x }
            };
            let fused: Vec<f32> = (0..rows * 2 * cols).map(|_| next()).collect();
            let mut got = vec![f32::NAN; rows * cols];
            prop_assert!(silu_mul((&fused, 2 * cols), (&fused[cols.min(fused.len())..], 2 * cols), (rows, cols), &mut got).is_some());
            if rows > 0 {
                let fail = |e: candle_core::Error| TestCaseError::fail(e.to_string());
                let t = Tensor::from_vec(fused, (rows, 2 * cols), &Device::Cpu).map_err(fail)?;
                let (g, u) = (t.narrow(1, 0, cols).map_err(fail)?, t.narrow(1, cols, cols).map_err(fail)?);
                let want: Vec<f32> = candle_nn::ops::silu(&g)
                    .and_then(|s| (s * u)?.flatten_all()?.to_vec1())
                    .map_err(fail)?;
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                prop_assert_eq!(bits(&got), bits(&want));
            }
        }
    }

    #[test]
    fn slices_that_do_not_fit_are_refused() {
        let mut out = vec![0.0; 4];
        assert!(silu_mul((&[0.0; 4], 2), (&[0.0; 4], 2), (2, 2), &mut out).is_some());
        assert!(silu_mul((&[0.0; 3], 2), (&[0.0; 4], 2), (2, 2), &mut out).is_none(), "gate too short");
        assert!(
            silu_mul((&[0.0; 4], 2), (&[0.0; 4], 2), (2, 2), &mut out[..3]).is_none(),
            "output too short"
        );
    }
}
