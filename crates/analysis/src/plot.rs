//! Charts with `plotters`, as PNG or SVG (chosen by the file extension).
//!
//! Text is drawn from a DejaVu Sans subset embedded in the crate (Latin-1, Greek lower
//! case, a few signs; license in `assets/LICENSE-DejaVu.txt`), registered once as
//! plotters' `sans-serif` family: no system fonts or fontconfig are needed.
//!
//! - [`blocks_figure`]: the 2×2 block-wise figure (p(EOS), EOS information content,
//!   entropy, varentropy per block);
//! - [`before_eos_figure`]: the token-wise view before one EOS event (p(EOS) against the
//!   top candidates of the event step, e.g. `"\n"`, over the last `m` steps);
//! - [`comparison_figure`]: strategy comparison bars from an evaluation.

use std::ops::Range;
use std::path::Path;
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use crate::blocks::BlockStats;
use crate::eval::StrategySummary;
use crate::trace::TraceRow;
use crate::{AnalysisError, Result};

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const FAMILY: &str = "sans-serif";

fn ensure_font() -> Result<()> {
    static REGISTERED: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FAMILY, FontStyle::Normal, FONT).map_err(|_| "embedded font is invalid".into())
        })
        .clone()
        .map_err(AnalysisError::Plot)
}

fn plot_err(e: impl std::fmt::Display) -> AnalysisError {
    AnalysisError::Plot(e.to_string())
}

/// Output format, from a path's extension (`png` or `svg`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// PNG bitmap.
    Png,
    /// SVG vector image.
    Svg,
}

impl Format {
    /// The format of `path` (case-insensitive extension); an error for anything else.
    pub fn from_path(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("png") => Ok(Self::Png),
            Some("svg") => Ok(Self::Svg),
            _ => Err(AnalysisError::InvalidParameter {
                name: "plot path",
                value: path.display().to_string(),
                reason: "must end in .png or .svg",
            }),
        }
    }
}

/// Render with the backend `path`'s extension selects.
macro_rules! render {
    ($path:expr, $size:expr, |$root:ident| $body:expr) => {{
        ensure_font()?;
        let path: &Path = $path;
        match Format::from_path(path)? {
            Format::Png => {
                let $root = BitMapBackend::new(path, $size).into_drawing_area();
                $body?;
                $root.present().map_err(plot_err)
            }
            Format::Svg => {
                let $root = SVGBackend::new(path, $size).into_drawing_area();
                $body?;
                $root.present().map_err(plot_err)
            }
        }
    }};
}

/// Finite range of `values` padded by 5% (a unit range around a constant; `0..1`
/// when nothing is finite).
fn padded(values: impl Iterator<Item = f64>) -> Range<f64> {
    let (lo, hi) = values
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    if hi - lo < 1e-12 {
        return lo - 0.5..hi + 0.5;
    }
    let pad = 0.05 * (hi - lo);
    lo - pad..hi + pad
}

/// One line of a chart: legend label, points, colour.
type Series = (String, Vec<(f64, f64)>, RGBColor);

fn line_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    series: &[Series],
) -> Result<()> {
    let x = padded(series.iter().flat_map(|s| s.1.iter().map(|p| p.0)));
    let y = padded(series.iter().flat_map(|s| s.1.iter().map(|p| p.1)));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(34)
        .y_label_area_size(56)
        .build_cartesian_2d(x, y)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .label_style((FAMILY, 12))
        .axis_desc_style((FAMILY, 13))
        .draw()
        .map_err(plot_err)?;
    for (name, points, color) in series {
        let points: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.1.is_finite()).collect();
        let color = *color;
        chart
            .draw_series(LineSeries::new(points.iter().copied(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], color.stroke_width(2)));
        chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(plot_err)?;
    }
    if series.len() > 1 {
        chart
            .configure_series_labels()
            .label_font((FAMILY, 12))
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(plot_err)?;
    }
    Ok(())
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(44, 160, 44),
    RGBColor(255, 127, 14),
    RGBColor(148, 103, 189),
    RGBColor(127, 127, 127),
];

/// The 2×2 block-wise figure: mean p(EOS), EOS information content (bits), entropy
/// and varentropy (nats) per block. `blocks` comes from
/// [`block_means`](crate::blocks::block_means) or
/// [`blocks_before_eos`](crate::blocks::blocks_before_eos) (negative block numbers:
/// blocks before the event).
pub fn blocks_figure(blocks: &[BlockStats], title: &str, path: &Path) -> Result<()> {
    if blocks.is_empty() {
        return Err(AnalysisError::NoData("no blocks to plot"));
    }
    let x_desc = if blocks.iter().any(|b| b.block < 0) { "block before EOS" } else { "block" };
    let panel = |f: fn(&BlockStats) -> f64| -> Vec<(f64, f64)> {
        blocks.iter().map(|b| (b.block as f64, f(b))).collect()
    };
    let panels = [
        ("p(EOS)", panel(|b| b.p_eos)),
        ("EOS information content (bits)", panel(|b| b.eos_information_bits)),
        ("entropy (nats)", panel(|b| b.entropy)),
        ("varentropy (nats²)", panel(|b| b.varentropy)),
    ];
    render!(path, (1100, 820), |root| {
        root.fill(&WHITE).map_err(plot_err)?;
        let root = root.titled(title, (FAMILY, 22)).map_err(plot_err)?;
        for (area, (name, points)) in root.split_evenly((2, 2)).iter().zip(panels) {
            line_panel(area, name, x_desc, &[(name.to_string(), points, PALETTE[0])])?;
        }
        Ok::<(), AnalysisError>(())
    })
}

/// How a token id is labelled in [`before_eos_figure`].
pub fn token_label(rows: &[TraceRow], id: u32) -> String {
    let text = rows
        .iter()
        .find(|r| r.token_id == id && !r.is_eos_event() && !r.text.is_empty())
        .map(|r| r.text.as_str());
    match text {
        Some(t) => format!("{:?}", t),
        None => format!("id {id}"),
    }
}

/// The token-wise view before the EOS event at row `event` (an index into `rows`):
/// p(EOS) and the raw probabilities of the event step's top candidates (EOS excluded,
/// at most `candidates`) over the last `m` steps of the same history (steps after the
/// previous event). A candidate absent from a step's recorded top list is drawn at 0
/// there (its probability was below the list's last entry).
pub fn before_eos_figure(
    rows: &[TraceRow],
    event: usize,
    m: usize,
    candidates: usize,
    path: &Path,
) -> Result<()> {
    let Some(ev) = rows.get(event).filter(|r| r.is_eos_event()) else {
        return Err(AnalysisError::InvalidParameter {
            name: "event row",
            value: event.to_string(),
            reason: "must be the index of an EOS event row of the trace",
        });
    };
    if m == 0 {
        return Err(AnalysisError::InvalidParameter {
            name: "steps",
            value: "0".into(),
            reason: "must be at least 1",
        });
    }
    let floor = rows[..event].iter().rposition(TraceRow::is_eos_event).map_or(0, |p| p + 1);
    let start = event + 1 - m.min(event + 1 - floor);
    let window = &rows[start..=event];
    let x = |i: usize| (i as f64) - (window.len() as f64 - 1.0);
    let mut series = vec![(
        "EOS".to_string(),
        window.iter().enumerate().map(|(i, r)| (x(i), r.p_eos)).collect::<Vec<_>>(),
        PALETTE[1],
    )];
    for (k, (id, _)) in
        ev.top_candidates().into_iter().filter(|&(id, _)| id != ev.token_id).take(candidates).enumerate()
    {
        let points = window
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = r.top_candidates().into_iter().find(|&(c, _)| c == id).map_or(0.0, |(_, p)| p);
                (x(i), p)
            })
            .collect();
        series.push((token_label(rows, id), points, PALETTE[(k + 2) % PALETTE.len()]));
    }
    let title = format!("Before the EOS at step {} ({})", ev.position, ev.event);
    render!(path, (1000, 560), |root| {
        root.fill(&WHITE).map_err(plot_err)?;
        line_panel(&root, &title, "steps before the event (0 = the EOS step)", &series)
    })
}

/// Strategy comparison: four bar panels (share reaching the budget, mean 200-word
/// window diversity, share of runs with a looped window, forward passes per kept
/// token) over `summaries`.
pub fn comparison_figure(summaries: &[StrategySummary], path: &Path) -> Result<()> {
    if summaries.is_empty() {
        return Err(AnalysisError::NoData("no strategies to compare"));
    }
    let metric = |f: fn(&StrategySummary) -> f64| -> Vec<f64> { summaries.iter().map(f).collect() };
    let panels = [
        ("runs reaching the budget (%)", metric(|s| 100.0 * s.reached_budget)),
        ("window diversity (200 words)", metric(|s| s.diversity)),
        ("runs with a looped window (%)", metric(|s| 100.0 * s.looped)),
        ("forward passes per kept token", metric(|s| s.passes_per_token)),
    ];
    let names: Vec<&str> = summaries.iter().map(|s| s.strategy.as_str()).collect();
    render!(path, (1200, 860), |root| {
        root.fill(&WHITE).map_err(plot_err)?;
        for (area, (title, values)) in root.split_evenly((2, 2)).iter().zip(panels) {
            bar_panel(area, title, &names, &values)?;
        }
        Ok::<(), AnalysisError>(())
    })
}

/// A bar's value label: three significant-looking decimals for small values, fewer
/// for large ones.
fn bar_label(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

fn bar_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    names: &[&str],
    values: &[f64],
) -> Result<()> {
    let top = values.iter().copied().filter(|v| v.is_finite()).fold(0.0_f64, f64::max);
    let top = if top > 0.0 { top * 1.12 } else { 1.0 };
    let n = names.len();
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d((0..n.max(2) - 1).into_segmented(), 0.0..top)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n)
        .x_label_formatter(&|x: &SegmentValue<usize>| match x {
            SegmentValue::CenterOf(i) | SegmentValue::Exact(i) => {
                names.get(*i).map(|s| s.replace('_', " ")).unwrap_or_default()
            }
            SegmentValue::Last => String::new(),
        })
        .label_style((FAMILY, 11))
        .draw()
        .map_err(plot_err)?;
    let finite = || values.iter().copied().enumerate().filter(|(_, v)| v.is_finite());
    chart
        .draw_series(finite().map(|(i, v)| {
            let mut bar = Rectangle::new(
                [(SegmentValue::Exact(i), 0.0), (SegmentValue::Exact(i + 1), v)],
                PALETTE[i % PALETTE.len()].filled(),
            );
            bar.set_margin(0, 0, 12, 12);
            bar
        }))
        .map_err(plot_err)?;
    chart
        .draw_series(
            finite().map(|(i, v)| {
                Text::new(bar_label(v), (SegmentValue::CenterOf(i), v + top * 0.02), (FAMILY, 12))
            }),
        )
        .map_err(plot_err)?;
    Ok(())
}
