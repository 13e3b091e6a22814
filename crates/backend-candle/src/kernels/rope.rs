//! Rotary position embeddings for the fused attention path: every row of a pass at
//! its own position, straight from the projection's `(rows, heads · head_dim)` layout.
//!
//! candle's `rope`/`rope_i` take `(batch, heads, positions, head_dim)` tensors, so the
//! forward transposed queries and keys there and back, and for more than one position
//! candle runs the rotation on rayon's pool — whose sleeping workers the forward woke
//! twice per layer, while candle's own pool (every other kernel's) spun beside them on
//! the same cores: at batch 8 on 2 threads that hand-off took ≈ 60 µs per layer (1.8 ms
//! of a 28 ms step). [`rotate`] computes each element with candle's expression
//! (`x₁·cos − x₂·sin`, `x₁·sin + x₂·cos`, the same operations in the same order, so the
//! same bits) on the calling thread, or on candle's pool for long prefills.

use super::pool::for_each_chunk;

/// Rows per pool task; passes of at most this many rows run on the calling thread.
const ROWS_PER_TASK: usize = 64;

/// Rotate the `rows = positions.len()` rows of `x` (row `r` at `x[r·row_stride..]`,
/// `heads × d` values) by the angles of `positions[r]` in the `(·, d / 2)` tables `cos`
/// and `sin`, into `out` (`rows × heads × d`, contiguous). `interleaved`: pairs
/// `(2j, 2j + 1)` rotate together (candle's `rope_i`); otherwise `(j, j + d/2)`
/// (`rope`). Returns `None` (having written nothing) when a slice is too short or a
/// position lies beyond the tables.
pub(crate) fn rotate(
    x: &[f32],
    row_stride: usize,
    (heads, d): (usize, usize),
    positions: &[usize],
    (cos, sin): (&[f32], &[f32]),
    interleaved: bool,
    out: &mut [f32],
) -> Option<()> {
    let (rows, half, width) = (positions.len(), d / 2, heads * d);
    let table_rows = cos.len().min(sin.len()) / half.max(1);
    if d % 2 != 0
        || out.len() != rows * width
        || positions.iter().any(|&p| p >= table_rows)
        || (rows > 0 && x.len() < (rows - 1) * row_stride + width)
    {
        return None;
    }
    if rows == 0 || width == 0 {
        return Some(());
    }
    let row = |r: usize, dst: &mut [f32]| {
        let src = &x[r * row_stride..r * row_stride + width];
        let at = positions[r] * half;
        let (cos, sin) = (&cos[at..at + half], &sin[at..at + half]);
        for (src, dst) in src.chunks_exact(d).zip(dst.chunks_exact_mut(d)) {
            if interleaved {
                for (j, (s, o)) in src.chunks_exact(2).zip(dst.chunks_exact_mut(2)).enumerate() {
                    o[0] = s[0] * cos[j] - s[1] * sin[j];
                    o[1] = s[0] * sin[j] + s[1] * cos[j];
                }
            } else {
                let (s1, s2) = src.split_at(half);
                let (o1, o2) = dst.split_at_mut(half);
                for j in 0..half {
                    o1[j] = s1[j] * cos[j] - s2[j] * sin[j];
                    o2[j] = s1[j] * sin[j] + s2[j] * cos[j];
                }
            }
        }
    };
    if rows <= ROWS_PER_TASK {
        for (r, dst) in out.chunks_exact_mut(width).enumerate() {
            row(r, dst);
        }
        return Some(());
    }
    for_each_chunk(out, ROWS_PER_TASK * width, |p, part| {
        for (i, dst) in part.chunks_exact_mut(width).enumerate() {
            row(p * ROWS_PER_TASK + i, dst);
        }
    });
    Some(())
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Every output bit equals candle's `rope`/`rope_i` on the transposed layout,
        /// for arbitrary positions per row (a batch of sequences), strided input rows
        /// (a narrow of the fused projection) and passes on both sides of the pool's
        /// threshold.
        #[test]
        fn equals_candles_rope_bit_for_bit(
            rows in 1usize..150,
            heads in 1usize..5,
            half in 1usize..9,
            pad in 0usize..7,
            interleaved in any::<bool>(),
            seed in any::<u64>(),
        ) {
            let d = 2 * half;
            let mut next = crate::kernels::test_values::uniform(seed, 10);
            let table_rows = 300;
            let cos: Vec<f32> = (0..table_rows * half).map(|_| next() / 10.0).collect();
            let sin: Vec<f32> = (0..table_rows * half).map(|_| next() / 10.0).collect();
            let positions: Vec<usize> = (0..rows).map(|_| (next().abs() * 29.0) as usize % table_rows).collect();
            let stride = heads * d + pad;
            let x: Vec<f32> = (0..rows * stride).map(|_| next()).collect();
            let mut got = vec![f32::NAN; rows * heads * d];
            prop_assert!(rotate(&x, stride, (heads, d), &positions, (&cos, &sin), interleaved, &mut got).is_some());

            let dev = Device::Cpu;
            let fail = |e: candle_core::Error| TestCaseError::fail(e.to_string());
            let xt = Tensor::from_vec(x, (rows, stride), &dev).map_err(fail)?;
            let xt = xt.narrow(1, 0, heads * d).and_then(|t| t.reshape((1, rows, heads, d))).map_err(fail)?;
            let xt = xt.transpose(1, 2).and_then(|t| t.contiguous()).map_err(fail)?;
            let gather = |table: &[f32]| {
                let rows: Vec<f32> = positions.iter().flat_map(|&p| table[p * half..(p + 1) * half].to_vec()).collect();
                Tensor::from_vec(rows, (positions.len(), half), &dev)
            };
            let (ct, st) = (gather(&cos).map_err(fail)?, gather(&sin).map_err(fail)?);
            let want = if interleaved {
                candle_nn::rotary_emb::rope_i(&xt, &ct, &st)
            } else {
                candle_nn::rotary_emb::rope(&xt, &ct, &st)
            };
            let want: Vec<f32> = want
                .and_then(|t| t.transpose(1, 2)?.contiguous()?.flatten_all()?.to_vec1())
                .map_err(fail)?;
            let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
            prop_assert_eq!(bits(&got), bits(&want));
        }
    }

    #[test]
    fn slices_that_do_not_fit_are_refused() {
        let (cos, sin) = (vec![1.0; 8], vec![0.0; 8]);
        let mut out = vec![0.0; 8];
        assert!(rotate(&[0.0; 8], 8, (2, 4), &[3], (&cos, &sin), false, &mut out).is_some());
        assert!(
            rotate(&[0.0; 8], 8, (2, 4), &[4], (&cos, &sin), false, &mut out).is_none(),
            "position past the tables"
        );
        assert!(
            rotate(&[0.0; 7], 8, (2, 4), &[0], (&cos, &sin), false, &mut out).is_none(),
            "input too short"
        );
        assert!(
            rotate(&[0.0; 8], 8, (2, 4), &[0], (&cos, &sin), false, &mut out[..7]).is_none(),
            "output too short"
        );
        assert!(
            rotate(&[0.0; 6], 6, (2, 3), &[0], (&cos, &sin), false, &mut out[..6]).is_none(),
            "odd head_dim"
        );
    }
}
