//! `perpetua analyze` (trace → block statistics and plots) and `perpetua eval`
//! (strategy comparison on a prompt set).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use perpetua::analysis::blocks::{BlockStats, block_means, blocks_before_eos, blocks_before_eos_runs};
use perpetua::analysis::eval::{EvalConfig, EvalReport, PLAIN, run_eval};
use perpetua::analysis::{TraceRow, plot, trace};
use perpetua::candle::{Llama, LlamaTokenizer, default_model_path};
use perpetua::generator::Generator;
use perpetua::sampling::SamplingConfig;

use crate::args::{AnalyzeArgs, EvalArgs, PlotFormat};

fn block_table(blocks: &[BlockStats]) -> String {
    let mut s = String::from(
        "| block | steps | p(EOS) | EOS information (bits) | entropy (nats) | varentropy | chosen p |\n|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for b in blocks {
        let _ = writeln!(
            s,
            "| {} | {} | {:.3e} | {:.2} | {:.3} | {:.3} | {:.3} |",
            b.block, b.n, b.p_eos, b.eos_information_bits, b.entropy, b.varentropy, b.chosen_prob
        );
    }
    s
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}

/// The last EOS event of `rows`, if any.
fn last_event(rows: &[TraceRow]) -> Option<usize> {
    rows.iter().rposition(TraceRow::is_eos_event)
}

pub fn analyze(args: &AnalyzeArgs) -> Result<()> {
    if let Some(&bad) = args.block_size.iter().find(|&&b| b == 0) {
        bail!("--block-size must be at least 1 (got {bad})");
    }
    if args.blocks_before_eos == 0 {
        bail!("--blocks-before-eos must be at least 1");
    }
    if args.steps == 0 {
        bail!("--steps must be at least 1");
    }
    let rows = trace::read_path(&args.trace).with_context(|| format!("reading {}", args.trace.display()))?;
    if rows.is_empty() {
        bail!("{} holds no trace rows", args.trace.display());
    }
    let events = rows.iter().filter(|r| r.is_eos_event()).count();
    println!("{}: {} steps, {} EOS events", args.trace.display(), rows.len(), events);
    if let Some(dir) = &args.out {
        create_dir(dir)?;
    }
    for &size in &args.block_size {
        let forward = block_means(&rows, size)?;
        println!("\n## blocks of {size} steps from the start\n\n{}", block_table(&forward));
        let before = blocks_before_eos(&rows, size, args.blocks_before_eos)?;
        if !before.is_empty() {
            println!("## blocks of {size} steps before EOS ({events} events)\n\n{}", block_table(&before));
        }
        if let Some(dir) = &args.out {
            for ext in args.format.extensions() {
                let (blocks, name) =
                    if before.is_empty() { (&forward, "blocks") } else { (&before, "blocks_before_eos") };
                let path = dir.join(format!("{name}_{size}.{ext}"));
                plot::blocks_figure(
                    blocks,
                    &format!("{} — blocks of {size}", file_name(&args.trace)),
                    &path,
                )?;
                println!("wrote {}", path.display());
            }
        }
    }
    if let (Some(dir), Some(event)) = (&args.out, last_event(&rows)) {
        for ext in args.format.extensions() {
            let path = dir.join(format!("before_eos_tokens.{ext}"));
            plot::before_eos_figure(&rows, event, args.steps, 4, &path)?;
            println!("wrote {}", path.display());
        }
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default()
}

fn read_prompts(path: &Path, limit: Option<usize>) -> Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading prompts from {}", path.display()))?;
    let prompts: Vec<String> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(String::from)
        .take(limit.unwrap_or(usize::MAX))
        .collect();
    if prompts.is_empty() {
        bail!("{} holds no prompts", path.display());
    }
    Ok(prompts)
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    if args.prompts_limit == Some(0) {
        bail!("--prompts-limit must be at least 1");
    }
    if args.max_batch == 0 {
        bail!("--max-batch 0: at least 1 sequence per forward pass");
    }
    let prompts = read_prompts(&args.prompts, args.prompts_limit)?;
    let model_path = match &args.model {
        Some(p) => p.clone(),
        None => default_model_path()?,
    };
    if !model_path.exists() {
        bail!("model not found at {}: run `perpetua models fetch` (or pass --model)", model_path.display());
    }
    let sampling = SamplingConfig {
        temperature: Some(args.temperature),
        top_k: Some(args.top_k),
        ..SamplingConfig::default()
    };
    sampling.validate()?;
    let config = EvalConfig {
        prompts,
        strategies: args.strategies.clone(),
        seeds: args.seeds.clone(),
        max_new_tokens: args.max_new_tokens,
        chat_template: true,
        runs_dir: Some(args.runs.clone().unwrap_or_else(|| args.out.join("runs"))),
        fingerprint: format!(
            "model={} exact_weights={} kv_cache={:?} temperature={} top_k={}",
            file_name(&model_path),
            args.exact_weights,
            args.kv_cache,
            args.temperature,
            args.top_k
        ),
    };
    config.validate()?;

    let options = crate::args::load_options(args.exact_weights, args.kv_cache);
    let model =
        Llama::load(&model_path, &options).with_context(|| format!("loading {}", model_path.display()))?;
    let tokenizer = LlamaTokenizer::load(&model_path)?;
    let mut generator = Generator::builder(model)
        .tokenizer(tokenizer)
        .chain(sampling.chain()?)
        .max_batch(args.max_batch)
        .build()?;

    let total = config.total_runs();
    let bar = indicatif::ProgressBar::new(total as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{elapsed_precise} [{bar:30}] {pos}/{len} runs, eta {eta} {msg}",
        )
        .map_err(|e| anyhow::anyhow!("progress style: {e}"))?
        .progress_chars("=> "),
    );
    let t0 = std::time::Instant::now();
    let report = run_eval(&mut generator, &config, &mut |p| {
        bar.set_position(p.done as u64);
        bar.set_message(format!(
            "(last: prompt {} {} → {} tokens, {}{:.0} tok/s)",
            p.last.prompt,
            p.last.strategy,
            p.last.new_tokens,
            if p.resumed { "kept, " } else { "" },
            p.last.decode_tok_s
        ));
        tracing::info!(
            "run {}/{}: {:?}",
            p.done,
            p.total,
            (p.last.prompt, &p.last.strategy, p.last.new_tokens)
        );
    })?;
    bar.finish();
    let elapsed = t0.elapsed();

    create_dir(&args.out)?;
    let suffix = args.section.as_deref().map(|s| format!("-{s}")).unwrap_or_default();
    let json_path = args.out.join(format!("eval{suffix}.json"));
    std::fs::write(&json_path, report.to_json()?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    println!("{}", report.markdown_table());
    println!(
        "{total} runs ({} kept from {}) in {:.1} min; wrote {}",
        report.resumed,
        config.runs_dir.as_deref().unwrap_or(Path::new("-")).display(),
        elapsed.as_secs_f64() / 60.0,
        json_path.display()
    );

    let figures = write_eval_figures(&report, &args.out, &suffix, PlotFormat::Both)?;
    for f in &figures.files {
        println!("wrote {}", f.display());
    }
    if let Some(md) = &args.markdown {
        let body = markdown_report(&report, args, &model_path, elapsed, &figures, md)?;
        if let Some(parent) = md.parent().filter(|p| !p.as_os_str().is_empty()) {
            create_dir(parent)?;
        }
        let text = match &args.section {
            None => body,
            Some(name) => {
                let old = std::fs::read_to_string(md).unwrap_or_else(|_| DOC_HEAD.to_string());
                replace_section(&old, name, &body)
            }
        };
        std::fs::write(md, text).with_context(|| format!("writing {}", md.display()))?;
        println!("wrote {}", md.display());
    }
    Ok(())
}

/// The start of an evaluation document that sections are written into.
const DOC_HEAD: &str = "# Evaluation\n\nGenerated by `cargo xtask eval`; each section is rewritten by the command named in it.\n";

/// `doc` with the section `name` (between `<!-- eval:NAME -->` and `<!-- /eval:NAME -->`)
/// replaced by `body`, or appended when the markers are missing.
fn replace_section(doc: &str, name: &str, body: &str) -> String {
    let (open, close) = (format!("<!-- eval:{name} -->"), format!("<!-- /eval:{name} -->"));
    let block = format!("{open}\n{}\n{close}", body.trim_end());
    match (doc.find(&open), doc.find(&close)) {
        (Some(a), Some(b)) if b > a => format!("{}{block}{}", &doc[..a], &doc[b + close.len()..]),
        _ => format!("{}\n{block}\n", doc.trim_end()),
    }
}

/// The CPU's model name (`/proc/cpuinfo`), recorded with every figure.
pub(crate) fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string())
}

struct Figures {
    files: Vec<PathBuf>,
    comparison: PathBuf,
    blocks: Option<(PathBuf, Vec<BlockStats>, usize)>,
    before_eos: Option<PathBuf>,
}

const EVAL_BLOCK: usize = 25;
const EVAL_BLOCKS_BACK: usize = 8;

fn write_eval_figures(report: &EvalReport, out: &Path, suffix: &str, format: PlotFormat) -> Result<Figures> {
    let mut files = Vec::new();
    for ext in format.extensions() {
        let p = out.join(format!("comparison{suffix}.{ext}"));
        plot::comparison_figure(&report.summaries, &p)?;
        files.push(p);
    }
    // Diagnostics before EOS on the unaltered process: the plain runs' natural EOS.
    let plain: Vec<&[TraceRow]> = report
        .runs
        .iter()
        .zip(&report.traces)
        .filter(|(r, _)| r.strategy == PLAIN)
        .map(|(_, t)| t.as_slice())
        .collect();
    let events = plain.iter().filter(|t| last_event(t).is_some()).count();
    let blocks = blocks_before_eos_runs(&plain, EVAL_BLOCK, EVAL_BLOCKS_BACK)?;
    let mut blocks_figure = None;
    if !blocks.is_empty() {
        for ext in format.extensions() {
            let p = out.join(format!("blocks_before_eos{suffix}.{ext}"));
            plot::blocks_figure(
                &blocks,
                &format!("Plain runs: {EVAL_BLOCK}-step blocks before EOS ({events} events)"),
                &p,
            )?;
            files.push(p);
        }
        blocks_figure = Some((out.join(format!("blocks_before_eos{suffix}.png")), blocks, events));
    }
    // Token-wise view: the longest plain run that ended at EOS.
    let longest = plain.iter().filter_map(|t| last_event(t).map(|e| (t, e))).max_by_key(|(_, e)| *e);
    let mut before = None;
    if let Some((rows, event)) = longest {
        for ext in format.extensions() {
            let p = out.join(format!("before_eos_tokens{suffix}.{ext}"));
            plot::before_eos_figure(rows, event, 40, 4, &p)?;
            files.push(p);
        }
        before = Some(out.join(format!("before_eos_tokens{suffix}.png")));
    }
    Ok(Figures {
        files,
        comparison: out.join(format!("comparison{suffix}.png")),
        blocks: blocks_figure,
        before_eos: before,
    })
}

/// `target` relative to the directory of `from` (both relative to the working
/// directory), for links in the Markdown report.
fn relative(target: &Path, from: &Path) -> String {
    let base = from.parent().unwrap_or(Path::new(""));
    target.strip_prefix(base).unwrap_or(target).to_string_lossy().replace('\\', "/")
}

fn markdown_report(
    report: &EvalReport,
    args: &EvalArgs,
    model: &Path,
    elapsed: std::time::Duration,
    figures: &Figures,
    md: &Path,
) -> Result<String> {
    let c = &report.config;
    let mut s = String::new();
    let heading = if args.section.is_some() { "##" } else { "#" };
    let sub = if args.section.is_some() { "###" } else { "##" };
    let title = match &args.section {
        Some(name) => format!("{heading} {name}: {} new tokens per run\n", c.max_new_tokens),
        None => format!("{heading} Evaluation: what each perpetual strategy costs and buys\n"),
    };
    let _ = writeln!(s, "{title}");
    let mut command = format!(
        "perpetua eval --prompts {}{} --max-new-tokens {} --seeds {} --strategies {}",
        args.prompts.display(),
        args.prompts_limit.map(|n| format!(" --prompts-limit {n}")).unwrap_or_default(),
        c.max_new_tokens,
        c.seeds.iter().map(u64::to_string).collect::<Vec<_>>().join(","),
        c.strategies.join(","),
    );
    if let Some(name) = &args.section {
        command.push_str(&format!(" --markdown {} --section {name}", md.display()));
    }
    let _ = writeln!(
        s,
        "Generated by `cargo xtask eval` (`{command}`); do not edit by hand, rerun the command.\n"
    );
    let _ = writeln!(
        s,
        "- Model: `{}` ({}), chat template on. CPU: {} (2 threads).\n- Chain: temperature {}, top-k {} (the paper's setting); every strategy with its defaults (`docs/STRATEGIES.md`).\n- {} prompts ({}) × {} strategies × {} seed(s) = {} runs, budget {} new tokens each; {:.1} minutes on this machine ({} runs kept from an earlier, interrupted run).\n",
        file_name(model),
        if args.exact_weights { "file weights" } else { "Q8_0 re-quantized, the default" },
        cpu_name(),
        args.temperature,
        args.top_k,
        c.prompts.len(),
        args.prompts.display(),
        c.strategies.len(),
        c.seeds.len(),
        report.runs.len(),
        c.max_new_tokens,
        elapsed.as_secs_f64() / 60.0,
        report.resumed,
    );
    let _ = writeln!(s, "{sub} Strategy table\n\n{}", report.markdown_table());
    let _ = writeln!(
        s,
        "Columns: *looped* = share of runs with a 200-word window whose rep-4 > 0.5; freshness is measured on \
         whitespace words in consecutive 200-word windows and averaged over a run's windows, then over runs: rep-n = 1 − distinct \
         n-grams / n-grams, diversity = (1 − rep-2)(1 − rep-3)(1 − rep-4); *worst window* = the lowest window diversity of any \
         run; *× plain* = ratio to plain generation (plain text before its own EOS is the reference; for log p, plain's mean \
         divided by the strategy's, so > 1 means the model finds the text more likely); mean log p = mean natural-log \
         probability of the kept tokens under the model's raw distribution (temperature 1, the base here); passes / kept \
         token = decode forward passes per output token (back steps regenerate); interventions = EOS draws replaced + back \
         steps (loop back steps included); decode tok/s = forward passes per second.\n"
    );
    let _ = writeln!(s, "![strategy comparison]({})\n", relative(&figures.comparison, md));
    let shown: Vec<&String> = if args.show_worst_of.is_empty() {
        c.strategies.last().into_iter().collect()
    } else {
        args.show_worst_of.iter().collect()
    };
    for strategy in shown {
        let worst = report.worst_runs(strategy, args.worst);
        if worst.is_empty() {
            continue;
        }
        let _ = writeln!(s, "{sub} The worst windows of `{strategy}`\n");
        for r in worst {
            let f = r.freshness.as_ref();
            let _ = writeln!(
                s,
                "Prompt {} (\"{}\"), words {}–{} of {}: diversity {:.3}, rep-4 of the run's windows {:.3} on average.\n",
                r.prompt,
                c.prompts.get(r.prompt).map(String::as_str).unwrap_or(""),
                f.map_or(0, |f| f.worst_window),
                f.map_or(0, |f| f.worst_window + perpetua::analysis::metrics::FRESHNESS_WINDOW),
                f.map_or(0, |f| f.words),
                f.map_or(f64::NAN, |f| f.worst_diversity),
                f.map_or(f64::NAN, |f| f.rep[2]),
            );
            let _ = writeln!(s, "> {}\n", r.worst_window_text().replace('\n', " "));
        }
    }
    if let Some((png, blocks, events)) = &figures.blocks {
        let _ = writeln!(
            s,
            "{sub} Before EOS: block-wise statistics of the plain runs\n\nMeans over {EVAL_BLOCK}-step blocks counted back from each natural EOS ({events} events; block −1 ends at the EOS step).\n\n{}\n![blocks before EOS]({})\n",
            block_table(blocks),
            relative(png, md)
        );
        if let (Some(first), Some(last)) = (blocks.first(), blocks.last()) {
            let _ = writeln!(
                s,
                "From block {} to block {}: p(EOS) {:.2e} → {:.2e}, EOS information {:.2} → {:.2} bits, entropy {:.3} → {:.3} nats, varentropy {:.3} → {:.3}.\n",
                first.block,
                last.block,
                first.p_eos,
                last.p_eos,
                first.eos_information_bits,
                last.eos_information_bits,
                first.entropy,
                last.entropy,
                first.varentropy,
                last.varentropy
            );
        }
    }
    if let Some(png) = &figures.before_eos {
        let _ = writeln!(
            s,
            "{sub} Token-wise view before one EOS\n\nThe longest plain run that ended at EOS: p(EOS) and the raw probabilities of the other top candidates at the EOS step over the last 40 steps.\n\n![tokens before EOS]({})\n",
            relative(png, md)
        );
    }
    let suffix = args.section.as_deref().map(|n| format!("-{n}")).unwrap_or_default();
    let _ = writeln!(
        s,
        "Per-run numbers (and texts) are in `{}`.",
        relative(&args.out.join(format!("eval{suffix}.json")), md)
    );
    Ok(s)
}
