//! Block-wise aggregation of trace rows: the mean of each statistic per block of
//! consecutive steps, either from the start of a trace or counted back from each EOS
//! event (the view in which, before an EOS, p(EOS) rises while entropy, varentropy
//! and EOS information content fall).

use serde::{Deserialize, Serialize};

use crate::trace::TraceRow;
use crate::{AnalysisError, Result};

/// Block sizes the issue and the CLI use by default.
pub const DEFAULT_BLOCK_SIZES: [usize; 3] = [25, 50, 100];

/// Means of one block. Non-finite values (an `+inf` information content when
/// `p_eos = 0`) are left out of the mean of that column; `n` counts all rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockStats {
    /// Block number: from the start (0, 1, …) or, for [`blocks_before_eos`], blocks
    /// before the event (−1 is the block ending at the event, −2 the one before, …).
    pub block: i64,
    /// Rows averaged (over all events, for [`blocks_before_eos`]).
    pub n: usize,
    /// Mean `p_eos`.
    pub p_eos: f64,
    /// Mean EOS information content (bits).
    pub eos_information_bits: f64,
    /// Mean entropy (nats).
    pub entropy: f64,
    /// Mean varentropy (nats²).
    pub varentropy: f64,
    /// Mean chosen-token probability.
    pub chosen_prob: f64,
}

#[derive(Default)]
struct Acc {
    n: usize,
    sums: [f64; 5],
    counts: [usize; 5],
}

impl Acc {
    fn add(&mut self, r: &TraceRow) {
        self.n += 1;
        let values = [r.p_eos, r.eos_information_bits, r.entropy, r.varentropy, r.chosen_prob];
        for ((s, c), v) in self.sums.iter_mut().zip(&mut self.counts).zip(values) {
            if v.is_finite() {
                *s += v;
                *c += 1;
            }
        }
    }

    fn finish(&self, block: i64) -> BlockStats {
        let mean =
            |i: usize| if self.counts[i] > 0 { self.sums[i] / self.counts[i] as f64 } else { f64::NAN };
        BlockStats {
            block,
            n: self.n,
            p_eos: mean(0),
            eos_information_bits: mean(1),
            entropy: mean(2),
            varentropy: mean(3),
            chosen_prob: mean(4),
        }
    }
}

fn check_size(size: usize) -> Result<()> {
    if size == 0 {
        return Err(AnalysisError::InvalidParameter {
            name: "block size",
            value: size.to_string(),
            reason: "must be at least 1",
        });
    }
    Ok(())
}

/// Means per block of `size` consecutive rows from the start; the last block may be
/// shorter. Errors when `size == 0`.
///
/// ```
/// use perpetua_analysis::blocks::block_means;
/// # use perpetua_analysis::TraceRow;
/// # let row = |p: f64| TraceRow { position: 0, index: 0, token_id: 1, text: String::new(), p_eos: p,
/// #     eos_information_bits: -p.log2(), entropy: 1.0, varentropy: 0.0, chosen_prob: 0.5,
/// #     temperature: 1.0, event: "token".into(), top: String::new() };
/// let rows = [row(0.1), row(0.3), row(0.5)];
/// let blocks = block_means(&rows, 2)?;
/// assert_eq!(blocks.len(), 2);
/// assert!((blocks[0].p_eos - 0.2).abs() < 1e-12);
/// assert_eq!(blocks[1].n, 1);
/// # Ok::<(), perpetua_analysis::AnalysisError>(())
/// ```
pub fn block_means(rows: &[TraceRow], size: usize) -> Result<Vec<BlockStats>> {
    check_size(size)?;
    Ok(rows
        .chunks(size)
        .enumerate()
        .map(|(i, chunk)| {
            let mut acc = Acc::default();
            chunk.iter().for_each(|r| acc.add(r));
            acc.finish(i as i64)
        })
        .collect())
}

/// Means per block counted back from each EOS event, averaged over events:
/// block −1 holds the `size` steps ending at the event (the event's own step
/// included), block −2 the `size` before them, … up to `n_blocks` blocks. Only steps
/// after the previous event count, so each block mixes no two events' histories.
/// Returned oldest block first. Errors when `size == 0` or `n_blocks == 0`; an empty
/// vector when the trace holds no EOS event.
pub fn blocks_before_eos(rows: &[TraceRow], size: usize, n_blocks: usize) -> Result<Vec<BlockStats>> {
    blocks_before_eos_runs(&[rows], size, n_blocks)
}

/// [`blocks_before_eos`] over several traces (say, one per evaluation run), averaging
/// the events of all of them; no block reaches across two traces.
pub fn blocks_before_eos_runs(runs: &[&[TraceRow]], size: usize, n_blocks: usize) -> Result<Vec<BlockStats>> {
    check_size(size)?;
    if n_blocks == 0 {
        return Err(AnalysisError::InvalidParameter {
            name: "number of blocks",
            value: n_blocks.to_string(),
            reason: "must be at least 1",
        });
    }
    let mut accs: Vec<Acc> = (0..n_blocks).map(|_| Acc::default()).collect();
    let mut any = false;
    for rows in runs {
        let mut previous_event: Option<usize> = None;
        for (e, row) in rows.iter().enumerate() {
            if !row.is_eos_event() {
                continue;
            }
            any = true;
            let floor = previous_event.map_or(0, |p| p + 1);
            for (back, r) in rows[floor..=e].iter().rev().enumerate().take(size * n_blocks) {
                accs[back / size].add(r);
            }
            previous_event = Some(e);
        }
    }
    if !any {
        return Ok(Vec::new());
    }
    Ok(accs
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, a)| a.n > 0)
        .map(|(i, a)| a.finish(-(i as i64) - 1))
        .collect())
}
