//! The SIMD primitives of the CPU kernels: whole-vector arithmetic on `[f32; LANES]`
//! arrays that LLVM turns into one AVX instruction each (fused multiply-add, fixed-order
//! reductions, a vectorisable `exp`), the KV element types the attention kernel reads,
//! and a prefetch hint. Every reduction runs in a fixed order, so results do not depend
//! on how work is split (batch invariance).

/// Width of the kernels' vectors: one AVX register of f32.
pub(crate) const LANES: usize = 8;

/// An element type the KV cache may store: `f32`, or `f16` (half the bytes per
/// position and half the cache memory).
pub(crate) trait KvElem: Copy + Send + Sync {
    /// The value as f32 (exact for both types).
    fn get(self) -> f32;

    /// `LANES` values as f32: a plain load for f32; for f16 one `vcvtph2ps` under
    /// `target-cpu=native` (F16C), so the conversion happens in registers, with no
    /// widened copy of the rows written to memory and read back.
    #[inline(always)]
    fn lanes(x: &[Self; LANES]) -> [f32; LANES] {
        std::array::from_fn(|l| x[l].get())
    }
}

impl KvElem for f32 {
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
}

impl KvElem for half::f16 {
    #[inline(always)]
    fn get(self) -> f32 {
        self.to_f32()
    }
}

/// Q8 codes (`KvDtype::Q8`): the code minus its zero point, before the row's scale,
/// which the kernel applies per row (to the score, and to the softmax weight).
impl KvElem for u8 {
    #[inline(always)]
    fn get(self) -> f32 {
        f32::from(self) - crate::cache::Q8_ZERO
    }
}

/// `Σ a_i b_i` over equal-length slices, in `LANES` independent partial sums (so the
/// compiler vectorises it), then reduced in a fixed order. Also the few-row linear
/// kernel's dot product (`model.rs`). (Measured: splitting the sum over 4 × `LANES`
/// accumulators to shorten the dependency chain vectorised worse and ran 3× slower on
/// 64-wide heads; `cargo bench -p perpetua-benches --bench kernels -- dot`.)
#[inline]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0_f32; LANES];
    let (ac, ar) = a.split_at(a.len() - a.len() % LANES);
    let (bc, br) = b.split_at(ac.len());
    for (x, y) in ac.chunks_exact(LANES).zip(bc.chunks_exact(LANES)) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0;
    for (x, y) in ar.iter().zip(br) {
        tail += x * y;
    }
    acc.iter().sum::<f32>() + tail
}

/// `a·b + c`: one fused multiply-add (a single rounding) where the target has FMA
/// (`target-cpu=native` on any x86 since Haswell, aarch64), else a multiply and an add.
/// Chosen at compile time, so a build is deterministic. (Rust never contracts
/// `a * b + c` by itself; with separate instructions the kernel loops paid for twice
/// the arithmetic, with the add's latency on every accumulator chain.)
#[inline(always)]
pub(crate) fn fmadd(a: f32, b: f32, c: f32) -> f32 {
    if cfg!(target_feature = "fma") { a.mul_add(b, c) } else { a * b + c }
}

/// [`fmadd`] lane by lane: one vector FMA.
#[inline(always)]
pub(crate) fn fmadd_lanes(a: [f32; LANES], b: [f32; LANES], c: [f32; LANES]) -> [f32; LANES] {
    std::array::from_fn(|l| fmadd(a[l], b[l], c[l]))
}

/// `Σ_l v[l]` in the fixed order `((v0+v1)+(v2+v3)) + ((v4+v5)+(v6+v7))`: the order
/// [`sum_lanes_of_rows`] uses, so a score is the same bits whichever of the two
/// computes it.
#[inline(always)]
pub(crate) fn sum_lanes(v: [f32; LANES]) -> f32 {
    ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]))
}

/// The pairwise sums of `a` and `b` in the layout of x86's `vhaddps` (pairs within each
/// 128-bit half), which LLVM emits for it.
#[inline(always)]
pub(crate) fn hadd(a: [f32; LANES], b: [f32; LANES]) -> [f32; LANES] {
    [a[0] + a[1], a[2] + a[3], b[0] + b[1], b[2] + b[3], a[4] + a[5], a[6] + a[7], b[4] + b[5], b[6] + b[7]]
}

/// `[sum_lanes(a[0]), …, sum_lanes(a[P − 1])]`, bit for bit, as a transposing
/// reduction: per four rows, three horizontal adds and one add instead of four separate
/// reductions (`P` a multiple of 4).
#[inline(always)]
pub(crate) fn sum_lanes_of_rows<const P: usize>(a: &[[f32; LANES]; P]) -> [f32; P] {
    let mut out = [0.0; P];
    for (o, a) in out.chunks_exact_mut(4).zip(a.chunks_exact(4)) {
        // g = [lo(a0), lo(a1), lo(a2), lo(a3) | hi(a0), …, hi(a3)], lo = (v0+v1)+(v2+v3).
        let g = hadd(hadd(a[0], a[1]), hadd(a[2], a[3]));
        for (i, o) in o.iter_mut().enumerate() {
            *o = g[i] + g[i + 4];
        }
    }
    out
}

/// Hint the CPU to bring `s[i]`'s cache line into L1 (nothing if `i` is out of range or
/// the target is not x86-64).
#[inline(always)]
#[allow(unsafe_code)]
pub(crate) fn prefetch<T>(s: &[T], i: usize) {
    #[cfg(target_arch = "x86_64")]
    if let Some(x) = s.get(i) {
        // SAFETY: `prefetcht0` is a hint: it never faults and changes no program state,
        // and the address is that of an element of `s`.
        unsafe {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>((x as *const T).cast())
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (s, i);
}

/// `e^x` for `x <= 0` (softmax after subtracting the maximum), branch-free so loops
/// over it vectorise: Cody–Waite range reduction `x = n·ln 2 + r`, `|r| <= ln 2 / 2`,
/// Cephes' degree-5 polynomial for `e^r`, and `2^n` built in the exponent bits.
/// Relative error about 1 ulp; `x < −87` gives `e^−87` (≈ 1.6e−38, negligible next to
/// the maximum's 1); NaN stays NaN.
#[inline(always)]
pub(crate) fn exp_nonpositive(x: f32) -> f32 {
    exp_nonpositive_lanes([x; LANES])[0]
}

/// [`exp_nonpositive`] of `LANES` values, each step written as a whole-vector
/// operation for LLVM's vectoriser. [`exp_nonpositive`] is this function's lane 0, so
/// scalar and vector callers get the same bits.
#[inline(always)]
pub(crate) fn exp_nonpositive_lanes(x: [f32; LANES]) -> [f32; LANES] {
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    const C: [f32; 6] = [1.987_569_1e-4, 1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 1.666_666_5e-1, 0.5];
    use std::array::from_fn as lanes;
    let x: [f32; LANES] = lanes(|l| if x[l] < -87.0 { -87.0 } else { x[l] }); // NaN fails the test and passes through
    let n: [f32; LANES] = lanes(|l| (x[l] * std::f32::consts::LOG2_E + 0.5).floor());
    let r: [f32; LANES] = lanes(|l| fmadd(-n[l], LN2_LO, fmadd(-n[l], LN2_HI, x[l])));
    let p: [f32; LANES] = lanes(|l| {
        let r = r[l];
        let mut p = fmadd(C[0], r, C[1]);
        p = fmadd(p, r, C[2]);
        p = fmadd(p, r, C[3]);
        p = fmadd(p, r, C[4]);
        fmadd(p, r, C[5])
    });
    let y: [f32; LANES] = lanes(|l| fmadd(p[l] * r[l], r[l], r[l] + 1.0));
    // 2^n without a float→int conversion (Rust's saturating `as i32` does not
    // vectorise on x86): n + 127 + 2^23 is exact for n in [−125, 0] and holds n + 127 in
    // its low mantissa bits; shifted by 23 they become the exponent field, and the
    // magic's own bits fall off the top.
    lanes(|l| y[l] * f32::from_bits((n[l] + (127.0 + 8_388_608.0)).to_bits() << 23))
}
