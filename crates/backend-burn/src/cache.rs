//! The preallocated, truncatable key/value cache of the burn llama model.

use burn_tensor::{DType, Device, Tensor};
use perpetua_kv_cache::{CacheCursor, CacheError, CursorCache, ForkableCache};

/// Keys and values of every layer, each a `(n_kv_heads, capacity, head_dim)` tensor on
/// the model's device, preallocated once. Appending writes rows `len..len + n` in place
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

impl LlamaCache {
    pub(crate) fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Self {
        let zeros = || Tensor::<3>::zeros([n_kv_heads, capacity, head_dim], (device, DType::F32));
        let layers = (0..n_layers).map(|_| Some((zeros(), zeros()))).collect();
        Self { layers, cursor: CacheCursor::new(capacity), n_kv_heads, head_dim }
    }

    /// Number of layers this cache holds.
    pub fn n_layers(&self) -> usize {
        self.layers.len()
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
