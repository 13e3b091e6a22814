//! Analysis and evaluation for perpetua: what moves before an EOS, and what each EOS
//! strategy costs and buys.
//!
//! - [`trace`]: one [`TraceRow`] per generated step (position, token, text, p(EOS),
//!   EOS information content, entropy, varentropy, chosen-token probability,
//!   temperature, event, top raw candidates), from a [`Generation`](perpetua_generator::Generation)
//!   made with [`GeneratorBuilder::trace`](perpetua_generator::GeneratorBuilder::trace),
//!   written and read as CSV or JSON.
//! - [`blocks`]: block-wise means (block sizes 25 / 50 / 100 by default) from the start
//!   of a trace or counted back from each EOS event.
//! - [`metrics`]: distinct-n, repeated-n-gram rate, mean log-probability.
//! - [`plot`] (feature `plots`, default): PNG and SVG charts with `plotters`, text drawn
//!   from an embedded DejaVu Sans subset (no system fonts needed): the 2×2 block
//!   figure, the token-wise view before an EOS, strategy comparison bars.
//! - [`eval`]: prompts × strategies × seeds over any backend, aggregated into a
//!   Markdown table and JSON.
//!
//! ```
//! use perpetua_analysis::{blocks::block_means, trace};
//! use perpetua_generator::testing::{ByteTokenizer, FakeModel};
//! use perpetua_generator::Generator;
//!
//! let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS);
//! let mut generator = Generator::builder(model)
//!     .tokenizer(ByteTokenizer::new())
//!     .max_new_tokens(60)
//!     .trace(true)
//!     .build()?;
//! let out = generator.generate("Once upon a time")?;
//! let rows = trace::rows_from_generation(&out, Some(&ByteTokenizer::new()))?;
//! assert_eq!(rows.len(), out.counts.forward_passes);
//!
//! let mut csv = Vec::new();
//! trace::write_csv(&rows, &mut csv)?;
//! assert_eq!(trace::read_csv(csv.as_slice())?, rows);
//!
//! let blocks = block_means(&rows, 25)?;
//! assert_eq!(blocks.iter().map(|b| b.n).sum::<usize>(), rows.len());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod blocks;
pub mod eval;
pub mod metrics;
#[cfg(feature = "plots")]
pub mod plot;
pub mod trace;

pub use trace::TraceRow;

use std::path::{Path, PathBuf};

/// Errors of the analysis crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AnalysisError {
    /// A parameter is out of its range.
    #[error("invalid {name} = {value}: {reason}")]
    InvalidParameter {
        /// The parameter.
        name: &'static str,
        /// Its value.
        value: String,
        /// The allowed range.
        reason: &'static str,
    },
    /// The generation was made without [`trace(true)`](perpetua_generator::GeneratorBuilder::trace).
    #[error("the generation has no trace: build the generator with .trace(true)")]
    NoTrace,
    /// Nothing to analyse or plot.
    #[error("no data: {0}")]
    NoData(&'static str),
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// Malformed CSV.
    #[error("trace CSV: {0}")]
    Csv(#[from] csv::Error),
    /// Malformed JSON.
    #[error("JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A chart could not be drawn.
    #[error("plot: {0}")]
    Plot(String),
    /// Generation failed during an evaluation run.
    #[error("evaluation run (prompt {prompt}, strategy {strategy}, seed {seed}): {source}")]
    Generate {
        /// Prompt index.
        prompt: usize,
        /// Strategy name.
        strategy: String,
        /// Seed.
        seed: u64,
        /// The cause.
        source: Box<perpetua_generator::GenerateError>,
    },
}

impl AnalysisError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        Self::Io { path: path.to_path_buf(), source }
    }
}

impl From<std::io::Error> for AnalysisError {
    fn from(source: std::io::Error) -> Self {
        Self::Io { path: PathBuf::from("<stream>"), source }
    }
}

/// Result alias of this crate.
pub type Result<T, E = AnalysisError> = std::result::Result<T, E>;
