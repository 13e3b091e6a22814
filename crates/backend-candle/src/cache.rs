//! The truncatable per-layer KV cache, grown in chunks up to its capacity.

use candle_core::{DType, Device, Tensor};
use perpetua_kv_cache::{CacheCursor, CacheError, CursorCache, ForkableCache};

use crate::error::{CandleBackendError, Result};

/// Keys and values of every layer, holding up to `capacity` positions.
///
/// Layout per layer: keys and values are each `(n_kv_heads, allocated, head_dim)`;
/// positions `0..seq_len()` are valid. A forward pass writes its new positions in place
/// (`slice_set`) and attends over `narrow(1, 0, seq_len)`: no concatenation, no copy of
/// the past. [`truncate`](perpetua_kv_cache::KvCache::truncate) only moves the length (O(1)); stale
/// entries beyond it are overwritten by the next append.
///
/// Memory grows with the work, not with the context: the buffers start at
/// [`INITIAL_POSITIONS`](perpetua_kv_cache::INITIAL_POSITIONS) and, when an append needs more, are reallocated at twice the
/// size (at least what the append needs, at most `capacity`) with the valid rows
/// copied, so a 128-token run holds 256 positions, not the model's whole 8,192-position
/// context (189 MB in f16 for SmolLM2, which candle's f16 zeros write out in full), and
/// the copies cost O(length) amortised. [`allocated`](Self::allocated) tells how many
/// positions are allocated now. The element type is the model's
/// [`KvDtype`](crate::KvDtype); new keys/values are rounded to it as they are written.
/// For [`KvDtype::Q8`](crate::KvDtype::Q8) the buffers hold `u8` codes and two more
/// `(n_kv_heads, capacity)` f32 tensors per layer hold each row's scale.
#[derive(Debug)]
pub struct LlamaCache {
    keys: Vec<Tensor>,
    values: Vec<Tensor>,
    /// Per layer, the scales of the key rows and of the value rows (Q8 only; empty
    /// otherwise).
    scales: Vec<(Tensor, Tensor)>,
    cursor: CacheCursor,
}

/// The cache of one layer over positions `0..visible`, as a forward pass reads it.
#[derive(Debug)]
pub(crate) struct KvView {
    /// `(n_kv_heads, visible, head_dim)` keys: f32, f16, or Q8 codes (`u8`).
    pub k: Tensor,
    /// Values, like `k`.
    pub v: Tensor,
    /// Q8 only: `(n_kv_heads, visible)` scales of the key rows and of the value rows.
    pub scales: Option<(Tensor, Tensor)>,
}

/// The offset of Q8 codes: code `c` stands for `(c − 128) · scale`.
pub(crate) const Q8_ZERO: f32 = 128.0;

/// Quantize rows of `d` values to Q8: one scale per row (`max |x| / 127`), codes
/// `round(x / scale) + 128` in `1..=255`. An all-zero row has scale 0 and codes 128;
/// a NaN or infinite value makes its row's scale NaN or infinite, so it shows in the
/// attention output instead of vanishing.
pub(crate) fn quantize_q8(x: &[f32], d: usize, codes: &mut Vec<u8>, scales: &mut Vec<f32>) {
    codes.clear();
    scales.clear();
    for row in x.chunks_exact(d) {
        let amax = row.iter().fold(0.0_f32, |m, &v| if v.abs() > m || v.is_nan() { v.abs() } else { m });
        let scale = amax / 127.0;
        let inv = if amax > 0.0 && amax.is_finite() { 127.0 / amax } else { 0.0 };
        codes.extend(row.iter().map(|&v| ((v * inv).round().clamp(-127.0, 127.0) + Q8_ZERO) as u8));
        scales.push(scale);
    }
}

impl LlamaCache {
    /// An empty cache for `n_layers` layers of `n_kv_heads × head_dim`, holding up to
    /// `capacity` positions. `capacity == 0` is an error.
    pub(crate) fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        if capacity == 0 {
            return Err(CandleBackendError::invalid(
                "cache capacity",
                capacity,
                "must hold at least one position",
            ));
        }
        let cursor = CacheCursor::new(capacity);
        let allocated = cursor.initial_allocation();
        let shape = (n_kv_heads, allocated, head_dim);
        let mut keys = Vec::with_capacity(n_layers);
        let mut values = Vec::with_capacity(n_layers);
        let mut scales = Vec::new();
        for _ in 0..n_layers {
            keys.push(Tensor::zeros(shape, dtype, device)?);
            values.push(Tensor::zeros(shape, dtype, device)?);
            if dtype == DType::U8 {
                let zeros = || Tensor::zeros((n_kv_heads, allocated), DType::F32, device);
                scales.push((zeros()?, zeros()?));
            }
        }
        Ok(Self { keys, values, scales, cursor })
    }

    /// Positions the buffers hold now (`seq_len() <= allocated() <= capacity()`).
    pub fn allocated(&self) -> usize {
        self.keys.first().map_or(0, |k| k.dims().get(1).copied().unwrap_or(0))
    }

    /// Bytes the buffers take now (keys, values and Q8 scales of every layer).
    pub fn allocated_bytes(&self) -> usize {
        let bytes = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        self.keys.iter().chain(&self.values).map(bytes).sum::<usize>()
            + self.scales.iter().map(|(k, v)| bytes(k) + bytes(v)).sum::<usize>()
    }

    /// Make room for `n` more positions: checked against the capacity
    /// ([`CacheError::CapacityExceeded`]), then the buffers grow when they are too small
    /// (twice the size, at least `seq_len() + n`, at most the capacity; the valid rows
    /// copied). A failed growth leaves the cache as it was.
    pub(crate) fn reserve(&mut self, n: usize) -> Result<()> {
        let needed = self.cursor.reserve(n)?.end;
        let allocated = self.allocated();
        let grown = self.cursor.grown_allocation(allocated, needed);
        if grown == allocated {
            return Ok(());
        }
        let len = self.cursor.len();
        let grow = |t: &Tensor| -> Result<Tensor> {
            let mut dims = t.dims().to_vec();
            dims[1] = grown;
            let fresh = Tensor::zeros(dims, t.dtype(), t.device())?;
            if len > 0 {
                fresh.slice_set(&t.narrow(1, 0, len)?.contiguous()?, 1, 0)?;
            }
            Ok(fresh)
        };
        let keys = self.keys.iter().map(grow).collect::<Result<Vec<_>>>()?;
        let values = self.values.iter().map(grow).collect::<Result<Vec<_>>>()?;
        let scales = self.scales.iter().map(|(k, v)| Ok((grow(k)?, grow(v)?))).collect::<Result<Vec<_>>>()?;
        (self.keys, self.values, self.scales) = (keys, values, scales);
        Ok(())
    }

    /// The element type of the stored keys and values (`U8` codes for
    /// [`KvDtype::Q8`](crate::KvDtype::Q8)).
    pub fn dtype(&self) -> DType {
        self.keys.first().map_or(DType::F32, Tensor::dtype)
    }

    /// The keys of layer `layer` over positions `0..seq_len()`, as f32
    /// `(n_kv_heads, seq_len, head_dim)` (an f16 cache widened, a Q8 cache decoded):
    /// for inspection and tests; a copy.
    pub fn layer_keys(&self, layer: usize) -> Result<Tensor> {
        let Some(kc) = self.keys.get(layer) else {
            return Err(CandleBackendError::invalid("layer", layer, "cache holds fewer layers"));
        };
        let k = kc.narrow(1, 0, self.cursor.len())?;
        match self.scales.get(layer) {
            Some((ks, _)) if kc.dtype() == DType::U8 => {
                crate::model::dequantize_q8(&k, &ks.narrow(1, 0, self.cursor.len())?)
            }
            _ => Ok(k.to_dtype(DType::F32)?.force_contiguous()?),
        }
    }

    /// Number of layers this cache was built for.
    pub fn n_layers(&self) -> usize {
        self.keys.len()
    }

    /// Write `k`, `v` (each `(n_kv_heads, n, head_dim)` f32, contiguous) of layer
    /// `layer` at positions `seq_len()..seq_len() + n`, and return the views over
    /// `0..seq_len() + n`. The length itself is only advanced by [`Self::commit`], so a
    /// failing forward pass leaves the cache as it was.
    pub(crate) fn write_and_view(&self, layer: usize, k: &Tensor, v: &Tensor) -> Result<KvView> {
        let (h, n, d) = k.dims3()?;
        let (Some(kc), Some(vc)) = (self.keys.get(layer), self.values.get(layer)) else {
            return Err(CandleBackendError::invalid(
                "layer",
                layer,
                "cache holds fewer layers than the model",
            ));
        };
        let at = self.cursor.reserve(n)?;
        if at.end > kc.dims()[1] {
            return Err(CandleBackendError::invalid(
                "cache positions",
                at.end,
                "exceed the allocated buffers: reserve them first",
            ));
        }
        let visible = at.end;
        let scales = if kc.dtype() == DType::U8 {
            let Some((ks, vs)) = self.scales.get(layer) else {
                return Err(CandleBackendError::invalid("layer", layer, "Q8 cache without scales"));
            };
            let (mut codes, mut row_scales) = (Vec::new(), Vec::new());
            for (x, cache, scale_cache) in [(k, kc, ks), (v, vc, vs)] {
                quantize_q8(&x.flatten_all()?.to_vec1::<f32>()?, d, &mut codes, &mut row_scales);
                let device = cache.device();
                cache.slice_set(&Tensor::from_slice(&codes, (h, n, d), device)?, 1, at.start)?;
                scale_cache.slice_set(&Tensor::from_slice(&row_scales, (h, n), device)?, 1, at.start)?;
            }
            Some((ks.narrow(1, 0, visible)?, vs.narrow(1, 0, visible)?))
        } else {
            kc.slice_set(&k.to_dtype(kc.dtype())?, 1, at.start)?;
            vc.slice_set(&v.to_dtype(vc.dtype())?, 1, at.start)?;
            None
        };
        Ok(KvView { k: kc.narrow(1, 0, visible)?, v: vc.narrow(1, 0, visible)?, scales })
    }

    /// [`write_and_view`](Self::write_and_view) from rows as the projections lay them
    /// out: `n` positions, row `t` at `k.0[t · k.1..]` (`(slice, row stride)`), its KV
    /// head `h` at `+ h · head_dim` — straight into the f32 or f16 buffers on the CPU,
    /// one in-place pass per buffer, each value rounded as `to_dtype` rounds it (the same
    /// bits as the tensor path, without its transposes, copies and conversions per
    /// sequence). `None` (nothing written) for a Q8 cache or one off the CPU: the caller
    /// takes the tensor path.
    pub(crate) fn write_rows_and_view(
        &self,
        layer: usize,
        k: (&[f32], usize),
        v: (&[f32], usize),
        n: usize,
    ) -> Result<Option<KvView>> {
        let (Some(kc), Some(vc)) = (self.keys.get(layer), self.values.get(layer)) else {
            return Err(CandleBackendError::invalid(
                "layer",
                layer,
                "cache holds fewer layers than the model",
            ));
        };
        if !kc.device().is_cpu() || !matches!(kc.dtype(), DType::F32 | DType::F16) {
            return Ok(None);
        }
        let (heads, allocated, d) = kc.dims3()?;
        let at = self.cursor.reserve(n)?;
        if at.end > allocated {
            return Err(CandleBackendError::invalid(
                "cache positions",
                at.end,
                "exceed the allocated buffers: reserve them first",
            ));
        }
        for (cache, rows) in [(kc, k), (vc, v)] {
            let width = heads * d;
            if n > 0 && rows.0.len() < (n - 1) * rows.1 + width {
                return Err(CandleBackendError::invalid(
                    "cache rows",
                    rows.0.len(),
                    "shorter than the positions written",
                ));
            }
            cache.inplace_op1(&WriteRows { rows, n, heads, d, allocated, at: at.start })?;
        }
        let visible = at.end;
        Ok(Some(KvView { k: kc.narrow(1, 0, visible)?, v: vc.narrow(1, 0, visible)?, scales: None }))
    }

    /// Advance the length by `n` after a successful forward pass.
    pub(crate) fn commit(&mut self, n: usize) -> Result<(), CacheError> {
        self.cursor.commit(n)
    }

    /// Drop positions `start..start + n` of every layer and move the later ones down
    /// by `n` (a context shift). `rotate(layer, keys)` turns `(n_kv_heads, m, head_dim)`
    /// f32 keys of `layer` into the keys of the same tokens `n` positions earlier; values move unchanged.
    /// An f16 or Q8 cache rounds the rotated keys back to its element type (Q8 with
    /// fresh row scales). Errors: the range past `seq_len()`; a failure after the
    /// range check can leave layers partly shifted (the length is only moved at the
    /// end, so the caller sees the old length and must clear the cache).
    pub(crate) fn shift(
        &mut self,
        start: usize,
        n: usize,
        rotate: impl Fn(usize, &Tensor) -> Result<Tensor>,
    ) -> Result<()> {
        let m = self.cursor.shift(start, n)?;
        if n == 0 || m == 0 {
            self.cursor.truncate(start + m)?;
            return Ok(());
        }
        let (mut codes, mut row_scales) = (Vec::new(), Vec::new());
        for layer in 0..self.keys.len() {
            let (kc, vc) = (&self.keys[layer], &self.values[layer]);
            let (h, _, d) = kc.dims3()?;
            let tail = |t: &Tensor| t.narrow(1, start + n, m);
            if kc.dtype() == DType::U8 {
                let Some((ks, vs)) = self.scales.get(layer) else {
                    return Err(CandleBackendError::invalid("layer", layer, "Q8 cache without scales"));
                };
                let keys = rotate(layer, &crate::model::dequantize_q8(&tail(kc)?, &tail(ks)?)?)?;
                quantize_q8(&keys.flatten_all()?.to_vec1::<f32>()?, d, &mut codes, &mut row_scales);
                let device = kc.device();
                kc.slice_set(&Tensor::from_slice(&codes, (h, m, d), device)?, 1, start)?;
                ks.slice_set(&Tensor::from_slice(&row_scales, (h, m), device)?, 1, start)?;
                vc.slice_set(&tail(vc)?.force_contiguous()?, 1, start)?;
                vs.slice_set(&tail(vs)?.force_contiguous()?, 1, start)?;
            } else {
                let keys = rotate(layer, &tail(kc)?.to_dtype(DType::F32)?)?.to_dtype(kc.dtype())?;
                kc.slice_set(&keys.force_contiguous()?, 1, start)?;
                vc.slice_set(&tail(vc)?.force_contiguous()?, 1, start)?;
            }
        }
        self.cursor.truncate(start + m)?;
        Ok(())
    }
}

impl CursorCache for LlamaCache {
    fn cursor(&self) -> &CacheCursor {
        &self.cursor
    }

    fn cursor_mut(&mut self) -> &mut CacheCursor {
        &mut self.cursor
    }
}

impl ForkableCache for LlamaCache {
    /// Copies only the `seq_len()` valid positions of each layer into fresh (lazily
    /// zeroed) buffers of the same capacity: O(seq_len), not O(capacity).
    fn fork(&self) -> Result<Self, CacheError> {
        let backend = |e: candle_core::Error| CacheError::Backend(e.to_string());
        let copy = |t: &Tensor| -> Result<Tensor, CacheError> {
            let fresh = Tensor::zeros(t.shape(), t.dtype(), t.device()).map_err(backend)?;
            if !self.cursor.is_empty() {
                let valid =
                    t.narrow(1, 0, self.cursor.len()).and_then(|v| v.contiguous()).map_err(backend)?;
                fresh.slice_set(&valid, 1, 0).map_err(backend)?;
            }
            Ok(fresh)
        };
        Ok(Self {
            keys: self.keys.iter().map(copy).collect::<Result<_, _>>()?,
            values: self.values.iter().map(copy).collect::<Result<_, _>>()?,
            scales: self.scales.iter().map(|(k, v)| Ok((copy(k)?, copy(v)?))).collect::<Result<_, _>>()?,
            cursor: self.cursor,
        })
    }
}

/// [`LlamaCache::write_rows_and_view`]'s in-place write into one `(heads, allocated,
/// head_dim)` buffer.
struct WriteRows<'a> {
    rows: (&'a [f32], usize),
    n: usize,
    heads: usize,
    d: usize,
    allocated: usize,
    at: usize,
}

impl candle_core::InplaceOp1 for WriteRows<'_> {
    fn name(&self) -> &'static str {
        "perpetua-write-kv-rows"
    }

    fn cpu_fwd(
        &self,
        storage: &mut candle_core::CpuStorage,
        layout: &candle_core::Layout,
    ) -> candle_core::Result<()> {
        fn write<T>(
            w: &WriteRows<'_>,
            buf: &mut [T],
            start: usize,
            convert: impl Fn(f32) -> T,
        ) -> candle_core::Result<()> {
            let (rows, stride) = w.rows;
            for h in 0..w.heads {
                for t in 0..w.n {
                    let from = t * stride + h * w.d;
                    let to = start + (h * w.allocated + w.at + t) * w.d;
                    let (Some(src), Some(dst)) = (rows.get(from..from + w.d), buf.get_mut(to..to + w.d))
                    else {
                        candle_core::bail!(
                            "kv rows: position {} of head {h} is outside the buffers",
                            w.at + t
                        )
                    };
                    for (o, &x) in dst.iter_mut().zip(src) {
                        *o = convert(x);
                    }
                }
            }
            Ok(())
        }
        if !layout.is_contiguous() || layout.dims() != [self.heads, self.allocated, self.d] {
            candle_core::bail!("kv rows: the cache buffer's layout {layout:?} is not its own")
        }
        let start = layout.start_offset();
        match storage {
            candle_core::CpuStorage::F32(buf) => write(self, buf, start, |x| x),
            candle_core::CpuStorage::F16(buf) => write(self, buf, start, half::f16::from_f32),
            _ => candle_core::bail!("kv rows: a cache buffer neither f32 nor f16"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use perpetua_kv_cache::KvCache;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Append(usize),
        Truncate(usize),
        Fork,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![(1usize..5).prop_map(Op::Append), (0usize..12).prop_map(Op::Truncate), Just(Op::Fork),]
    }

    /// Values `(2 heads, n positions, 3 dims)` tagged with a running counter.
    fn block(n: usize, counter: &mut f32) -> (Tensor, Vec<f32>) {
        let mut data = Vec::with_capacity(2 * n * 3);
        for _ in 0..2 * n * 3 {
            *counter += 1.0;
            data.push(*counter);
        }
        (Tensor::from_vec(data.clone(), (2, n, 3), &Device::Cpu).unwrap(), data)
    }

    proptest! {
        /// Against a Vec model: appends land after `seq_len`, truncation keeps exactly the
        /// prefix (never clamps), capacity is enforced, forks are independent copies.
        #[test]
        fn cache_behaves_like_a_truncatable_vec(ops in proptest::collection::vec(op(), 1..30)) {
            let cap = 10;
            let mut cache = LlamaCache::new(1, 2, 3, cap, DType::F32, &Device::Cpu).unwrap();
            // model[h] holds per-position rows of head h.
            let mut model: Vec<Vec<[f32; 3]>> = vec![Vec::new(), Vec::new()];
            let mut counter = 0.0;
            for op in ops {
                match op {
                    Op::Append(n) => {
                        let (k, data) = block(n, &mut counter);
                        if cache.seq_len() + n > cap {
                            let full = matches!(cache.reserve(n), Err(CandleBackendError::Cache(CacheError::CapacityExceeded { .. })));
                            prop_assert!(full);
                            continue;
                        }
                        cache.reserve(n).unwrap();
                        let view = cache.write_and_view(0, &k, &k).unwrap();
                        prop_assert_eq!(view.k.dims(), &[2, cache.seq_len() + n, 3]);
                        cache.commit(n).unwrap();
                        for (h, rows) in model.iter_mut().enumerate() {
                            for p in 0..n {
                                let o = (h * n + p) * 3;
                                rows.push([data[o], data[o + 1], data[o + 2]]);
                            }
                        }
                    }
                    Op::Truncate(len) => {
                        let before = cache.seq_len();
                        let r = cache.truncate(len);
                        if len > before {
                            prop_assert!(r.is_err());
                            prop_assert_eq!(cache.seq_len(), before);
                        } else {
                            prop_assert!(r.is_ok());
                            for rows in &mut model { rows.truncate(len); }
                        }
                    }
                    Op::Fork => {
                        let fork = cache.fork().unwrap();
                        prop_assert_eq!(fork.seq_len(), cache.seq_len());
                        cache = fork; // continue on the fork; the parent is dropped
                    }
                }
                prop_assert_eq!(cache.seq_len(), model[0].len());
                let visible: Vec<f32> = cache.keys[0]
                    .narrow(1, 0, cache.seq_len()).unwrap()
                    .flatten_all().unwrap().to_vec1().unwrap();
                let expected: Vec<f32> = model.iter().flatten().flatten().copied().collect();
                prop_assert_eq!(visible, expected);
            }
        }
    }

    #[test]
    fn q8_rows_keep_non_finite_values_visible() {
        let (mut codes, mut scales) = (Vec::new(), Vec::new());
        let rows = [0.0, 0.0, 1.0, -2.0, f32::NAN, 1.0, f32::INFINITY, 3.0, 0.5, -0.25];
        quantize_q8(&rows, 2, &mut codes, &mut scales);
        assert_eq!((scales[0], &codes[0..2]), (0.0, &[128, 128][..]), "zero row");
        assert_eq!(scales[1], 2.0 / 127.0);
        assert_eq!(&codes[2..4], &[128 + 64, 1], "1 → round(63.5) = 64; −2 → −127");
        assert!(scales[2].is_nan(), "NaN row");
        assert!(scales[3].is_infinite(), "inf row");
        assert_eq!(scales[4], 0.5 / 127.0);
        assert_eq!(&codes[8..10], &[255, 128 - 64]);
    }

    /// Rows written straight from the projection layout (strided rows, heads side by
    /// side) hold the same bits as the tensor path's transposed, converted copy, in f32
    /// and f16 buffers, across a growth of the buffers; a Q8 cache declines.
    #[test]
    fn rows_written_in_place_equal_the_tensor_path() {
        let (heads, d, stride) = (2, 4, 11);
        let values = |n: usize, seed: f32| -> Vec<f32> {
            (0..n * stride)
                .map(|i| ((i as f32 + seed) * 0.731).sin() * 3.0 + 1e-3 / (1.0 + i as f32))
                .collect()
        };
        for dtype in [DType::F32, DType::F16] {
            let mut direct = LlamaCache::new(1, heads, d, 600, dtype, &Device::Cpu).unwrap();
            let mut tensors = LlamaCache::new(1, heads, d, 600, dtype, &Device::Cpu).unwrap();
            for (step, n) in [3, 1, 260, 2].into_iter().enumerate() {
                let (k, v) = (values(n, step as f32), values(n, 100.0 + step as f32));
                direct.reserve(n).unwrap();
                tensors.reserve(n).unwrap();
                let got = direct.write_rows_and_view(0, (&k, stride), (&v, stride), n).unwrap().unwrap();
                let as_tensor = |x: &[f32]| {
                    let rows: Vec<f32> = x.chunks(stride).flat_map(|r| r[..heads * d].to_vec()).collect();
                    Tensor::from_vec(rows, (n, heads, d), &Device::Cpu)
                        .unwrap()
                        .transpose(0, 1)
                        .unwrap()
                        .contiguous()
                        .unwrap()
                };
                let want = tensors.write_and_view(0, &as_tensor(&k), &as_tensor(&v)).unwrap();
                let bits = |t: &Tensor| -> Vec<u32> {
                    t.to_dtype(DType::F32)
                        .unwrap()
                        .flatten_all()
                        .unwrap()
                        .to_vec1::<f32>()
                        .unwrap()
                        .iter()
                        .map(|x| x.to_bits())
                        .collect()
                };
                assert_eq!(bits(&got.k), bits(&want.k), "{dtype:?} keys after step {step}");
                assert_eq!(bits(&got.v), bits(&want.v), "{dtype:?} values after step {step}");
                direct.commit(n).unwrap();
                tensors.commit(n).unwrap();
            }
        }
        let q8 = LlamaCache::new(1, heads, d, 8, DType::U8, &Device::Cpu).unwrap();
        assert!(q8.write_rows_and_view(0, (&[0.0; 8], 8), (&[0.0; 8], 8), 1).unwrap().is_none());
    }

    #[test]
    fn zero_capacity_is_rejected() {
        assert!(LlamaCache::new(1, 1, 2, 0, DType::F32, &Device::Cpu).is_err());
    }

    /// The buffers grow past `INITIAL_POSITIONS` by doubling (never past the
    /// capacity), keep every valid row bit for bit in f32, f16 and Q8, and a fork, a
    /// truncation and a shift after a growth see the same rows.
    #[test]
    fn buffers_grow_by_doubling_and_keep_every_row() {
        for dtype in [DType::F32, DType::F16, DType::U8] {
            let cap = 600;
            let mut cache = LlamaCache::new(2, 2, 32, cap, dtype, &Device::Cpu).unwrap();
            assert_eq!(cache.allocated(), perpetua_kv_cache::INITIAL_POSITIONS);
            let small = cache.allocated_bytes();
            let mut written = 0;
            for n in [200, 50, 30, 100, 150, 70] {
                cache.reserve(n).unwrap();
                let k = Tensor::rand(-1.0_f32, 1.0, (2, n, 32), &Device::Cpu).unwrap();
                let before: Vec<Vec<f32>> = (0..2).map(|l| keys_of(&cache, l)).collect();
                for layer in 0..2 {
                    cache.write_and_view(layer, &k, &k).unwrap();
                }
                cache.commit(n).unwrap();
                written += n;
                // Rows written before this append are unchanged by any growth.
                for (layer, old) in before.iter().enumerate() {
                    let now = keys_of(&cache, layer);
                    for h in 0..2 {
                        let (old_len, new_len) = (old.len() / 64, now.len() / 64);
                        let row = |v: &[f32], len: usize, t: usize| {
                            v[(h * len + t) * 32..(h * len + t + 1) * 32].to_vec()
                        };
                        for t in 0..old_len {
                            assert_eq!(
                                row(old, old_len, t),
                                row(&now, new_len, t),
                                "{dtype:?} layer {layer} head {h} row {t}"
                            );
                        }
                    }
                }
                assert!(cache.allocated() >= written && cache.allocated() <= cap, "{}", cache.allocated());
            }
            assert_eq!(written, 600);
            assert_eq!(cache.allocated(), cap, "grown to the capacity, not past it");
            assert!(cache.allocated_bytes() > 2 * small);
            assert!(matches!(
                cache.reserve(1),
                Err(CandleBackendError::Cache(CacheError::CapacityExceeded { .. }))
            ));
            let fork = cache.fork().unwrap();
            assert_eq!(keys_of(&fork, 1), keys_of(&cache, 1));
            cache.truncate(300).unwrap();
            assert_eq!(cache.allocated(), cap, "truncation keeps the buffers");
        }
    }

    fn keys_of(cache: &LlamaCache, layer: usize) -> Vec<f32> {
        cache.layer_keys(layer).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
    }
}
