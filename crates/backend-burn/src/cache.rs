//! The truncatable key/value cache of the burn llama model, grown on demand up to its capacity.

use burn_tensor::{DType, Device, Tensor};
use perpetua_kv_cache::{CacheCursor, CacheError, CursorCache, ForkableCache};

/// Keys and values of every layer, each a `(n_kv_heads, allocated, head_dim)` tensor on
/// the model's device. Memory grows with the work, not with the context (a GPU would
/// otherwise commit the whole context per sequence): a new cache allocates
/// [`INITIAL_POSITIONS`] (or its capacity, if smaller), and an append that needs more
/// reallocates the layer at twice the size (at least what it needs, at most the
/// capacity), copying the valid rows. Appending writes rows `len..len + n` in place
/// (`slice_assign` on a tensor this cache owns alone); truncation only moves the
/// length (O(1), no copy); rows past the length are never read.
///
/// A [`fork`](ForkableCache::fork) shares the buffers (burn tensors are reference
/// counted); whichever of the two writes first copies its layers then, so forking
/// itself is cheap and the two caches stay independent.
#[derive(Debug, Clone)]
pub struct LlamaCache {
    /// Per layer `(keys, values)`; `None` only transiently while a layer is written.
    layers: Vec<Option<(Tensor<3>, Tensor<3>)>>,
    cursor: CacheCursor,
    n_kv_heads: usize,
    head_dim: usize,
}

pub use perpetua_kv_cache::INITIAL_POSITIONS;

impl LlamaCache {
    pub(crate) fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Self {
        let cursor = CacheCursor::new(capacity);
        let first = cursor.initial_allocation();
        let zeros = || Tensor::<3>::zeros([n_kv_heads, first, head_dim], (device, DType::F32));
        let layers = (0..n_layers).map(|_| Some((zeros(), zeros()))).collect();
        Self { layers, cursor, n_kv_heads, head_dim }
    }

    /// Number of layers this cache holds.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
    }

    /// Positions allocated now (per layer): grows by doubling up to the capacity.
    pub fn allocated(&self) -> usize {
        self.layers.iter().flatten().map(|(k, _)| k.dims()[1]).max().unwrap_or(0)
    }

    /// The keys of layer `layer` at positions `0..seq_len()`, `(n_kv_heads, seq_len,
    /// head_dim)` (after RoPE), or `None` for a layer index out of range: for tests and
    /// inspection.
    pub fn layer_keys(&self, layer: usize) -> Option<Tensor<3>> {
        let (keys, _) = self.layers.get(layer)?.as_ref()?;
        Some(keys.clone().slice([0..self.n_kv_heads, 0..self.cursor.len(), 0..self.head_dim]))
    }

    /// `(n_kv_heads, head_dim)` of the model this cache was made for.
    pub(crate) fn geometry(&self) -> (usize, usize) {
        (self.n_kv_heads, self.head_dim)
    }

    /// Room for `n` more positions, or [`CacheError::CapacityExceeded`].
    pub(crate) fn ensure_room(&self, n: usize) -> Result<(), CacheError> {
        self.cursor.reserve(n).map(|_| ())
    }

    /// Write keys/values `(n_kv_heads, n, head_dim)` of layer `layer` at positions
    /// `len..len + n` (not yet committed) and return views of positions
    /// `0..len + n`. The caller checked [`ensure_room`](Self::ensure_room).
    pub(crate) fn write_and_view(
        &mut self,
        layer: usize,
        k: Tensor<3>,
        v: Tensor<3>,
    ) -> Result<(Tensor<3>, Tensor<3>), CacheError> {
        let n = k.dims()[1];
        let std::ops::Range { start, end } = self.cursor.reserve(n)?;
        let slot = self
            .layers
            .get_mut(layer)
            .ok_or_else(|| CacheError::Backend(format!("layer {layer} is not in this cache")))?;
        let (keys, values) =
            slot.take().ok_or_else(|| CacheError::Backend(format!("layer {layer} was left mid-write")))?;
        let (kv, hd) = (self.n_kv_heads, self.head_dim);
        let allocated = keys.dims()[1];
        let size = self.cursor.grown_allocation(allocated, end);
        let (keys, values) = if size > allocated {
            // Grow (`CacheCursor::grown_allocation`); only the valid rows `0..start` are
            // copied.
            let device = keys.device();
            let grow = |t: Tensor<3>| {
                let fresh = Tensor::<3>::zeros([kv, size, hd], (&device, DType::F32));
                if start == 0 {
                    fresh
                } else {
                    fresh.slice_assign([0..kv, 0..start, 0..hd], t.slice([0..kv, 0..start, 0..hd]))
                }
            };
            (grow(keys), grow(values))
        } else {
            (keys, values)
        };
        let keys = keys.slice_assign([0..kv, start..end, 0..hd], k);
        let values = values.slice_assign([0..kv, start..end, 0..hd], v);
        let views =
            (keys.clone().slice([0..kv, 0..end, 0..hd]), values.clone().slice([0..kv, 0..end, 0..hd]));
        *slot = Some((keys, values));
        Ok(views)
    }

    /// Make `n` written positions part of the cache.
    pub(crate) fn commit(&mut self, n: usize) -> Result<(), CacheError> {
        self.cursor.commit(n)
    }

    /// Drop positions `start..start + n` of every layer and move the later ones down by
    /// `n` (a context shift). `rotate` turns `(m, n_kv_heads, head_dim)` keys into the
    /// keys of the same tokens `n` positions earlier; values move unchanged.
    pub(crate) fn shift(
        &mut self,
        start: usize,
        n: usize,
        rotate: impl Fn(usize, Tensor<3>) -> Tensor<3>,
    ) -> Result<(), CacheError> {
        let len = self.cursor.len();
        let m = self.cursor.shift(start, n)?;
        if self.layers.iter().any(Option::is_none) {
            return Err(CacheError::Backend("cannot shift a cache left mid-write".into()));
        }
        if n > 0 && m > 0 {
            let (kv, hd) = (self.n_kv_heads, self.head_dim);
            for (layer, slot) in self.layers.iter_mut().enumerate() {
                let Some((keys, values)) = slot.take() else { continue };
                let tail = |t: &Tensor<3>| t.clone().slice([0..kv, start + n..len, 0..hd]);
                let rotated = rotate(layer, tail(&keys).swap_dims(0, 1)).swap_dims(0, 1);
                let moved = tail(&values);
                let keys = keys.slice_assign([0..kv, start..start + m, 0..hd], rotated);
                let values = values.slice_assign([0..kv, start..start + m, 0..hd], moved);
                *slot = Some((keys, values));
            }
        }
        self.cursor.truncate(start + m)
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
    fn fork(&self) -> Result<Self, CacheError> {
        if self.layers.iter().any(Option::is_none) {
            return Err(CacheError::Backend("cannot fork a cache left mid-write".into()));
        }
        Ok(self.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use burn_tensor::{Device, Distribution, Tensor};

    use super::{INITIAL_POSITIONS, LlamaCache};

    fn rows(n: usize, device: &Device) -> Tensor<3> {
        Tensor::<3>::random([2, n, 4], Distribution::Uniform(-1.0, 1.0), device)
    }

    fn values(t: Tensor<3>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    /// The cache allocates 256 positions, doubles as appends need (at least what one
    /// needs, at most the capacity), and keeps every written row through each growth.
    #[test]
    fn grows_on_demand_and_keeps_the_rows() {
        let device = Device::default();
        let mut cache = LlamaCache::new(1, 2, 4, 600, &device);
        assert_eq!(cache.allocated(), INITIAL_POSITIONS);
        let mut written = Vec::new();
        for (n, allocated) in [(200, 256), (100, 512), (300, 600)] {
            let (k, v) = (rows(n, &device), rows(n, &device));
            written.push((k.clone(), v.clone()));
            let (keys, _) = cache.write_and_view(0, k, v).unwrap();
            cache.commit(n).unwrap();
            assert_eq!(cache.allocated(), allocated);
            let expected = Tensor::cat(written.iter().map(|(k, _)| k.clone()).collect(), 1);
            assert_eq!(values(keys), values(expected));
        }
        // Full: one more position is a capacity error, and nothing moved.
        assert!(cache.ensure_room(1).is_err());
        assert_eq!(cache.allocated(), 600);
        // A small capacity allocates only that.
        assert_eq!(LlamaCache::new(1, 2, 4, 10, &device).allocated(), 10);
    }
}
