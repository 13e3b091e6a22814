//! Per-token trace rows: built from a [`Generation`]'s [`StepTrace`]s, written and read
//! as CSV and JSON.

use std::io::{Read, Write};

use perpetua_generator::{Alternative, Generation, StepTrace, Tokenizer, TraceEvent};
use serde::{Deserialize, Serialize};

use crate::{AnalysisError, Result};

/// One generated step, as exported.
///
/// `position` counts steps in the order they ran (back steps regenerate positions, so
/// `index` — the generated index the step wrote to — can repeat while `position`
/// does not).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TraceRow {
    /// Step number, 0-based, in execution order.
    pub position: usize,
    /// Generated index the step wrote to (or, for EOS events, would have).
    pub index: usize,
    /// Token id appended (or the EOS id drawn for `eos` / `backstep` rows).
    pub token_id: u32,
    /// The token's text (lossy UTF-8 of its bytes; empty without a tokenizer).
    pub text: String,
    /// `Σ p(EOS)` under the raw distribution.
    pub p_eos: f64,
    /// EOS information content `−log₂ p_eos`, bits.
    pub eos_information_bits: f64,
    /// Entropy of the raw distribution, nats.
    pub entropy: f64,
    /// Varentropy of the raw distribution, nats².
    pub varentropy: f64,
    /// Raw probability of the token.
    pub chosen_prob: f64,
    /// Sampling temperature of the step.
    pub temperature: f64,
    /// `token`, `eos_avoided`, `backstep:<removed>` or `eos`.
    pub event: String,
    /// Top raw candidates `id:probability` joined by `;`, most probable first.
    pub top: String,
}

impl TraceRow {
    /// Whether this step drew an EOS (natural end, avoided, or turned into a back step).
    pub fn is_eos_event(&self) -> bool {
        self.event != "token" && self.loop_backstep_removed().is_none()
    }

    /// Tokens removed when this step's token completed a loop the strategy then cut
    /// (`loop_backstep:<removed>`, the token at `index` included).
    pub fn loop_backstep_removed(&self) -> Option<usize> {
        self.event.strip_prefix("loop_backstep:")?.parse().ok()
    }

    /// Tokens removed when this step's EOS became a back step (`backstep:<removed>`).
    pub fn backstep_removed(&self) -> Option<usize> {
        self.event.strip_prefix("backstep:")?.parse().ok()
    }

    /// The top candidates as `(id, probability)`; malformed entries are skipped.
    pub fn top_candidates(&self) -> Vec<(u32, f64)> {
        self.top
            .split(';')
            .filter_map(|e| {
                let (id, p) = e.split_once(':')?;
                Some((id.parse().ok()?, p.parse().ok()?))
            })
            .collect()
    }
}

/// The exported name of a trace event.
pub fn event_name(event: TraceEvent) -> String {
    match event {
        TraceEvent::Token => "token".into(),
        TraceEvent::EosAvoided => "eos_avoided".into(),
        TraceEvent::Backstep { removed } => format!("backstep:{removed}"),
        TraceEvent::LoopBackstep { removed } => format!("loop_backstep:{removed}"),
        TraceEvent::Eos => "eos".into(),
        TraceEvent::Resumed { hidden } => format!("resumed:{hidden}"),
    }
}

fn top_string(top: &[Alternative]) -> String {
    top.iter().map(|a| format!("{}:{:.6e}", a.id, f64::from(a.logprob).exp())).collect::<Vec<_>>().join(";")
}

/// Rows of `steps`, with token texts from `tokenizer` when given.
pub fn rows_from_steps(steps: &[StepTrace], tokenizer: Option<&dyn Tokenizer>) -> Vec<TraceRow> {
    steps
        .iter()
        .enumerate()
        .map(|(position, s)| TraceRow {
            position,
            index: s.index,
            token_id: s.token,
            text: tokenizer
                .and_then(|t| t.token_bytes(s.token))
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_default(),
            p_eos: f64::from(s.p_eos),
            eos_information_bits: f64::from(s.eos_information_bits),
            entropy: f64::from(s.entropy),
            varentropy: f64::from(s.varentropy),
            chosen_prob: f64::from(s.chosen_prob),
            temperature: f64::from(s.temperature),
            event: event_name(s.event),
            top: top_string(&s.top),
        })
        .collect()
}

/// Rows of a generation made with tracing on; [`AnalysisError::NoTrace`] otherwise.
pub fn rows_from_generation(
    generation: &Generation,
    tokenizer: Option<&dyn Tokenizer>,
) -> Result<Vec<TraceRow>> {
    let steps = generation.trace.as_deref().ok_or(AnalysisError::NoTrace)?;
    Ok(rows_from_steps(steps, tokenizer))
}

/// Write `rows` as CSV with a header row (RFC 4180 quoting).
pub fn write_csv(rows: &[TraceRow], out: impl Write) -> Result<()> {
    let mut w = csv::Writer::from_writer(out);
    for row in rows {
        w.serialize(row)?;
    }
    w.flush()?;
    Ok(())
}

/// Read rows written by [`write_csv`].
pub fn read_csv(input: impl Read) -> Result<Vec<TraceRow>> {
    let mut r = csv::Reader::from_reader(input);
    r.deserialize().map(|row| row.map_err(AnalysisError::from)).collect()
}

/// Write `rows` as a JSON array.
pub fn write_json(rows: &[TraceRow], out: impl Write) -> Result<()> {
    serde_json::to_writer_pretty(out, rows)?;
    Ok(())
}

/// Read rows written by [`write_json`].
pub fn read_json(input: impl Read) -> Result<Vec<TraceRow>> {
    Ok(serde_json::from_reader(input)?)
}

/// Read a trace file, choosing the format by extension (`.json`, else CSV).
pub fn read_path(path: &std::path::Path) -> Result<Vec<TraceRow>> {
    let file = std::fs::File::open(path).map_err(|e| AnalysisError::io(path, e))?;
    let reader = std::io::BufReader::new(file);
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        read_json(reader)
    } else {
        read_csv(reader)
    }
}

/// Write a trace file, choosing the format by extension (`.json`, else CSV).
pub fn write_path(rows: &[TraceRow], path: &std::path::Path) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| AnalysisError::io(path, e))?;
    let writer = std::io::BufWriter::new(file);
    if path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json")) {
        write_json(rows, writer)
    } else {
        write_csv(rows, writer)
    }
}
