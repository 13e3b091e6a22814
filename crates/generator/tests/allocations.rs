//! The decode loop does not allocate per token (beyond amortised growth of the
//! sequence buffers), measured with a counting global allocator.
// A counting allocator needs `unsafe impl GlobalAlloc`; it only forwards to `System`.
#![allow(unsafe_code, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use perpetua_generator::Generator;
use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_sampling::Chain;
use perpetua_sampling::processors::TopK;
use perpetua_sampling::samplers::Multinomial;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every method forwards to `System` with the caller's arguments unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations_for(max_new_tokens: usize) -> usize {
    let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS).with_eos_bias(-100.0);
    let chain = Chain::new(Multinomial).with(TopK::new(40).unwrap());
    let mut g =
        Generator::builder(model).chain(chain).seed(1).max_new_tokens(max_new_tokens).build().unwrap();
    g.generate([1u32, 2, 3]).unwrap(); // warm every buffer once
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    let out = g.generate([1u32, 2, 3]).unwrap();
    assert_eq!(out.ids.len(), max_new_tokens);
    ALLOCATIONS.load(Ordering::Relaxed) - before
}

/// 1000 more tokens cost only the logarithmic growth of the sequence, decoder and
/// output buffers: far fewer allocations than tokens.
#[test]
fn decode_steps_do_not_allocate_per_token() {
    let short = allocations_for(100);
    let long = allocations_for(1100);
    eprintln!("allocations: {short} for 100 tokens, {long} for 1100 tokens");
    assert!(long - short < 60, "{short} allocations for 100 tokens, {long} for 1100");
}
