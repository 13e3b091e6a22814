//! [`run_tasks`]: independent tasks on candle's CPU thread pool, each writing a
//! fixed-width slice of the output (the attention kernel's work items, the few-row
//! linear kernel's feature blocks); [`for_each_chunk`]: the same for tasks that write
//! their own chunk of a caller's buffer in place (RoPE, the MLP activation).

use std::cell::RefCell;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

thread_local! {
    /// One task's output (see [`run_tasks`]).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
    /// All tasks' outputs, shared across the pool's threads (see [`run_tasks`]).
    static SHARED: RefCell<Vec<AtomicU32>> = const { RefCell::new(Vec::new()) };
}

/// `out[i·width..(i + 1)·width]` ← the `width` values `task(i, ·)` writes, for every
/// `i < n`, run on candle's CPU thread pool (`candle_core::utils::barrier_pool`; the
/// calling thread takes tasks too, from a shared cursor).
///
/// Why candle's pool and not rayon's: the quantized matmuls before and after attention
/// run on it, and its workers spin for a while (`CANDLE_BARRIER_POOL_SPIN_LIMIT`, 25,000
/// pauses by default) before parking. With attention on rayon, that spinning took a core
/// from rayon's workers on every layer (a third of all samples at position 4,000 with 2
/// threads); on the same pool the spin is what makes the hand-off cheap.
///
/// Each task writes into a per-thread scratch slice, copied into a shared buffer of
/// atomics (relaxed stores; the pool's completion barrier orders them before the
/// reads), so no `unsafe` is needed to share the output and steady state allocates
/// nothing. Tasks must not run candle operations themselves: the pool admits one
/// caller at a time, and the calling thread (which runs tasks too) holds it.
pub(crate) fn run_tasks(n: usize, width: usize, out: &mut Vec<f32>, task: impl Fn(usize, &mut [f32]) + Sync) {
    let mut shared = SHARED.with_borrow_mut(std::mem::take);
    if shared.len() < n * width {
        shared.resize_with(n * width, || AtomicU32::new(0));
    }
    let cells = &shared[..n * width];
    candle_core::utils::barrier_pool().execute_chunked(n, |range| {
        SCRATCH.with_borrow_mut(|p| {
            p.clear();
            p.resize(width, 0.0);
            for i in range {
                task(i, p);
                for (cell, x) in cells[i * width..(i + 1) * width].iter().zip(p.iter()) {
                    cell.store(x.to_bits(), Ordering::Relaxed);
                }
            }
        });
    });
    out.clear();
    out.extend(cells.iter().map(|c| f32::from_bits(c.load(Ordering::Relaxed))));
    SHARED.with_borrow_mut(|slot| *slot = shared);
}

/// `f(i, chunk)` for every `chunk`-long piece `i` of `out` (the last may be shorter), on
/// candle's pool (the calling thread takes pieces too). Each piece sits behind its own
/// lock, taken once by the one task that writes it: uncontended, and no `unsafe` to
/// share the buffer. Tasks must not run candle operations themselves (see
/// [`run_tasks`]).
pub(crate) fn for_each_chunk(out: &mut [f32], chunk: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    if out.is_empty() || chunk == 0 {
        return;
    }
    let pieces: Vec<Mutex<&mut [f32]>> = out.chunks_mut(chunk).map(Mutex::new).collect();
    candle_core::utils::barrier_pool().execute_chunked(pieces.len(), |range| {
        for i in range {
            let mut piece = pieces[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            f(i, &mut piece);
        }
    });
}
