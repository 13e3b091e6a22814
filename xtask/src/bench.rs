//! `cargo xtask bench [--quick]`: end-to-end benchmark on the default model against
//! candle-transformers and llama.cpp.
//!
//! Every measurement runs in its own process (peak RSS per contender, no shared thread
//! pools), 2 threads each, the same GGUF and the same prompt token ids, contenders
//! alternating over the rounds; the best round counts per metric. The Rust contenders
//! are `benches/examples/e2e.rs` (built with `cargo build --release`, the workspace's
//! `-C target-cpu=native`); llama.cpp is `xtask/bench_llama_cpp.py` on
//! `llama-cpp-python` (built with `GGML_NATIVE=ON`, AMX excepted) in a virtual environment under
//! `target/bench-venv`. The full run rewrites the marked section of
//! `docs/PERFORMANCE.md`; `--quick` writes `target/bench/BENCH.md`. Raw JSON:
//! `target/bench/`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use perpetua_benches::record::{BenchRecord, DecodeRecord, PerpetualRecord, thousands};
use serde_json::{Value, json};

/// The llama.cpp binding, pinned.
const LLAMA_CPP_PYTHON: &str = "llama-cpp-python==0.3.36";
/// Threads for every contender.
const THREADS: usize = 2;
/// Positions of the long-context decode measurement.
/// Positions of the long-context decode measurement; filling the cache to each is also
/// the long-prompt prefill measurement (512 and 2,000 tokens).
const POSITIONS: [usize; 4] = [100, 512, 2_000, 6_000];
/// Greedy decode steps timed at each position.
const POSITION_STEPS: usize = 32;
/// Markers of the generated section in docs/PERFORMANCE.md.
const START: &str = "<!-- xtask-bench:start -->";
const END: &str = "<!-- xtask-bench:end -->";
const HEADING: &str = "## `cargo xtask bench`: end to end against candle-transformers and llama.cpp";

const PERPETUA: &str = "perpetua";
const PERPETUA_EXACT: &str = "perpetua-exact";
const CANDLE: &str = "candle-transformers";
const LLAMA_CPP: &str = "llama.cpp";

struct Config {
    quick: bool,
    rounds: usize,
    new_tokens: usize,
    perpetual_tokens: usize,
    /// New tokens per sequence of the batched-generation rows.
    batch_tokens: usize,
}

/// Batch widths of the batched-generation rows (1: the single-sequence rate, same code).
const BATCHES: [usize; 3] = [1, 4, 8];

struct Paths {
    root: PathBuf,
    out_dir: PathBuf,
    e2e: PathBuf,
    python: PathBuf,
    script: PathBuf,
    tokens: PathBuf,
    model: PathBuf,
}

/// The venv, the release `e2e` binary and the shared token ids: what every bench needs.
fn setup(model: PathBuf) -> Result<(Paths, Value)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| anyhow!("xtask has no parent directory"))?
        .to_path_buf();
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => root.join(dir),
        None => root.join("target"),
    };
    let out_dir = target.join("bench");
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;

    let python = ensure_venv(&target)?;
    crate::cargo(&["build", "--release", "-p", "perpetua-benches", "--example", "e2e"])?;
    let paths = Paths {
        e2e: target.join("release").join("examples").join("e2e"),
        script: root.join("xtask").join("bench_llama_cpp.py"),
        tokens: out_dir.join("tokens.json"),
        root,
        out_dir,
        python,
        model,
    };

    let tokens = run_json(
        Command::new(&paths.e2e)
            .arg("--mode")
            .arg("tokens")
            .arg("--model")
            .arg(&paths.model)
            .arg("--out")
            .arg(&paths.tokens),
        "e2e --mode tokens",
    )?;
    Ok((paths, tokens))
}

/// `cargo xtask bench --long [TOKENS [WINDOW]]`: one perpetual run of
/// `new_tokens` sampled tokens (EOS masked) through a `window`-position context, perpetua
/// rolling by cache shifts against llama.cpp's own context shift, same machine, same run,
/// one after the other. Writes `target/bench/long.json` and `target/bench/LONG.md`.
pub fn long(model: PathBuf, new_tokens: usize, window: usize) -> Result<()> {
    let started = Instant::now();
    let (paths, _) = setup(model)?;
    let load = |v: Value| v.as_str().map_or_else(|| "unknown".to_string(), str::to_string);
    let load_before = load(load_average());
    let (n, w) = (new_tokens.to_string(), window.to_string());
    let mut runs = Vec::new();
    for contender in [PERPETUA, LLAMA_CPP] {
        let v = contender_run(&paths, contender, "long", &["--new-tokens", &n, "--window", &w])?;
        eprintln!(
            "xtask: bench --long: {contender}: {} tokens in {:.1} s ({:.2} tok/s), {} rolls, {:.3} s rolling",
            count(v.new_tokens),
            num(v.run_s),
            num(v.tok_s),
            count(v.rolls),
            num(v.roll_s)
        );
        runs.push(v);
    }
    let load_after = load(load_average());
    let (cpu, cores, flags) = cpu_facts();
    let mut md = String::new();
    writeln!(
        md,
        "**A {new_tokens}-token perpetual run through a {window}-position context** (`cargo xtask bench --long \
         {new_tokens} {window}`, {:.1} min; {cpu}, {cores} logical cores, SIMD: {flags}; {THREADS} threads each; \
         load average before {load_before}, after {load_after}). Sampled (top-k 20, T 1.0, seed 1), EOS masked; \
         perpetua rolls by `ContextRoll::Shift`, llama.cpp by `llama_memory_seq_rm` + `llama_memory_seq_add` \
         (its re-rotation of the kept keys runs inside its next decode, so it counts in its tok/s, not in its \
         roll time); both keep the prompt and drop half of the rest per roll.\n",
        started.elapsed().as_secs_f64() / 60.0
    )?;
    writeln!(
        md,
        "| contender | new tokens | wall s | tok/s | ÷ llama.cpp | rolls | s per roll | RSS after the first roll, MiB | peak RSS MiB |"
    )?;
    writeln!(md, "|---|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let base = runs.iter().find(|v| v.contender == LLAMA_CPP).and_then(|v| v.tok_s);
    for v in &runs {
        let rss = match (v.rss_after_first_roll_min_mib, v.rss_after_first_roll_max_mib) {
            (Some(lo), Some(hi)) => format!("{lo:.0}–{hi:.0}"),
            _ => "–".to_string(),
        };
        writeln!(
            md,
            "| {} | {} | {:.1} | {:.2} | {} | {} | {:.4} | {rss} | {:.0} |",
            v.contender,
            count(v.new_tokens),
            num(v.run_s),
            num(v.tok_s),
            fmt_ratio(v.tok_s, base),
            count(v.rolls),
            num(v.roll_s_each),
            num(v.peak_rss_mib),
        )?;
    }
    let json_path = paths.out_dir.join("long.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(&runs)?)
        .with_context(|| format!("writing {}", json_path.display()))?;
    let md_path = paths.out_dir.join("LONG.md");
    std::fs::write(&md_path, &md).with_context(|| format!("writing {}", md_path.display()))?;
    println!("{md}");
    eprintln!("xtask: bench --long: wrote {} and {}", md_path.display(), json_path.display());
    Ok(())
}

/// Run the benchmark. `model` is the fetched default model.
pub fn bench(quick: bool, model: PathBuf) -> Result<()> {
    let started = Instant::now();
    let config = if quick {
        Config { quick, rounds: 1, new_tokens: 32, perpetual_tokens: 500, batch_tokens: 32 }
    } else {
        Config { quick, rounds: 3, new_tokens: 128, perpetual_tokens: 2_000, batch_tokens: 256 }
    };
    let load_before = load_average();
    let (paths, tokens) = setup(model)?;
    eprintln!(
        "xtask: bench: prompt {} tokens, filler {} tokens ({})",
        tokens["prompt_tokens"],
        tokens["filler_tokens"],
        paths.tokens.display()
    );

    let mut runs: Vec<BenchRecord> = Vec::new();
    let mut record = |mut v: BenchRecord, round: usize| {
        v.round = Some(round);
        // Long-prompt prefill rate: the filled positions ÷ the fill time (every contender
        // fills exactly `position` ids before its first timed decode step).
        if let (Some(p), Some(s)) = (v.position, v.fill_s)
            && s > 0.0
        {
            v.fill_tok_s = Some(p as f64 / s);
        }
        eprintln!("xtask: bench: {}", summary(&v));
        runs.push(v);
    };
    for round in 0..config.rounds {
        eprintln!("xtask: bench: round {}/{}", round + 1, config.rounds);
        for mode in ["greedy", "sampled"] {
            for contender in rotated(&[PERPETUA, PERPETUA_EXACT, CANDLE, LLAMA_CPP], round) {
                if mode == "sampled" && contender == PERPETUA_EXACT {
                    continue;
                }
                let n = config.new_tokens.to_string();
                record(contender_run(&paths, contender, mode, &["--new-tokens", &n])?, round);
            }
        }
        for position in POSITIONS {
            for contender in rotated(&[PERPETUA, CANDLE, LLAMA_CPP], round) {
                let (p, s) = (position.to_string(), POSITION_STEPS.to_string());
                record(
                    contender_run(&paths, contender, "position", &["--position", &p, "--steps", &s])?,
                    round,
                );
            }
        }
        let n = config.perpetual_tokens.to_string();
        record(contender_run(&paths, PERPETUA, "perpetual", &["--new-tokens", &n])?, round);
        let n = config.batch_tokens.to_string();
        for batch in BATCHES {
            let b = batch.to_string();
            let args = ["--batch", b.as_str(), "--new-tokens", &n, "--spec", "perpetual", "--check"];
            record(contender_run(&paths, PERPETUA, "generate-batch", &args)?, round);
            let args = ["--batch", b.as_str(), "--new-tokens", &n];
            record(contender_run(&paths, LLAMA_CPP, "batch", &args)?, round);
        }
    }
    let load_after = load_average();
    let elapsed = started.elapsed().as_secs_f64();

    let raw = json!({
        "quick": config.quick,
        "rounds": config.rounds,
        "new_tokens": config.new_tokens,
        "perpetual_tokens": config.perpetual_tokens,
        "batch_tokens": config.batch_tokens,
        "threads": THREADS,
        "elapsed_s": elapsed,
        "load_average_before": load_before,
        "load_average_after": load_after,
        "tokens": tokens,
        "runs": runs,
    });
    let raw_path = paths.out_dir.join(if quick { "results-quick.json" } else { "results.json" });
    std::fs::write(&raw_path, serde_json::to_string_pretty(&raw)?)
        .with_context(|| format!("writing {}", raw_path.display()))?;

    let markdown = report(&config, &paths, &raw, &runs)?;
    println!("{markdown}");
    if quick {
        let path = paths.out_dir.join("BENCH.md");
        std::fs::write(&path, &markdown).with_context(|| format!("writing {}", path.display()))?;
        eprintln!(
            "xtask: bench: wrote {} and {} ({:.1} min)",
            path.display(),
            raw_path.display(),
            elapsed / 60.0
        );
    } else {
        let path = paths.root.join("docs").join("PERFORMANCE.md");
        write_section(&path, &markdown)?;
        eprintln!(
            "xtask: bench: rewrote the marked section of {} and wrote {} ({:.1} min)",
            path.display(),
            raw_path.display(),
            elapsed / 60.0
        );
    }
    Ok(())
}

/// `items` rotated left by `round`: contenders alternate who goes first.
fn rotated<'a>(items: &[&'a str], round: usize) -> Vec<&'a str> {
    let mut v = items.to_vec();
    let len = v.len();
    v.rotate_left(round % len);
    v
}

/// One contender process; its JSON object.
fn contender_run(paths: &Paths, contender: &str, mode: &str, extra: &[&str]) -> Result<BenchRecord> {
    let mut cmd = if contender == LLAMA_CPP {
        let mut cmd = Command::new(&paths.python);
        cmd.arg(&paths.script).arg("--threads").arg(THREADS.to_string());
        cmd
    } else {
        let mut cmd = Command::new(&paths.e2e);
        cmd.arg("--contender").arg(contender);
        cmd
    };
    cmd.arg("--mode")
        .arg(mode)
        .arg("--model")
        .arg(&paths.model)
        .arg("--tokens-file")
        .arg(&paths.tokens)
        .args(extra)
        .env("RAYON_NUM_THREADS", THREADS.to_string())
        .env("CANDLE_NUM_THREADS", THREADS.to_string())
        .env("OMP_NUM_THREADS", THREADS.to_string());
    let what = format!("{contender} --mode {mode} {}", extra.join(" "));
    let v = run_json(&mut cmd, &what)?;
    let mut record: BenchRecord =
        serde_json::from_value(v).with_context(|| format!("{what}: not a bench record"))?;
    if contender == LLAMA_CPP {
        record.contender = LLAMA_CPP.to_string();
    }
    Ok(record)
}

/// Run `cmd`, stderr passed through; parse the last line of its stdout as JSON.
fn run_json(cmd: &mut Command, what: &str) -> Result<Value> {
    let output = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("starting {what}"))?;
    if !output.status.success() {
        bail!("{what} failed ({})", output.status);
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .ok_or_else(|| anyhow!("{what} printed nothing"))?;
    serde_json::from_str(line).with_context(|| format!("{what}: not JSON: {line}"))
}

/// One progress line per run.
fn summary(v: &BenchRecord) -> String {
    let name = format!("{} {}", v.contender, v.mode);
    if let Some(skipped) = &v.skipped {
        return format!("{name} at {}: {skipped}", count(v.position));
    }
    match (v.mode.as_str(), &v.perpetual) {
        ("position", _) => format!(
            "{name} at {}: decode {:.1} tok/s (fill {:.1} s)",
            count(v.position),
            num(v.decode.decode_tok_s),
            num(v.fill_s)
        ),
        ("perpetual", Some(p)) => format!(
            "{name}: {} forward passes, {} back steps; {:.2} ms/pass vs plain {:.2} ms/pass",
            count(p.run.forward_passes),
            p.backsteps,
            1e3 * p.wall_s / (p.run.forward_passes.unwrap_or(0).max(1) as f64),
            1e3 * p.plain_wall_s / (p.plain.forward_passes.unwrap_or(0).max(1) as f64),
        ),
        _ => format!(
            "{name}: prefill {:.1} tok/s, decode {:.1} tok/s, peak RSS {:.0} MiB",
            num(v.decode.prefill_tok_s),
            num(v.decode.decode_tok_s),
            num(v.peak_rss_mib)
        ),
    }
}

/// A measured value, NaN when absent (prints as `NaN`).
fn num(x: Option<f64>) -> f64 {
    x.unwrap_or(f64::NAN)
}

/// A measured count, `?` when absent.
fn count(x: Option<usize>) -> String {
    x.map_or_else(|| "?".to_string(), |x| x.to_string())
}

fn load_average() -> Value {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| json!(s.split_whitespace().take(3).collect::<Vec<_>>().join(" ")))
        .unwrap_or(Value::Null)
}

// --- the Python environment -------------------------------------------------------

fn python_imports_llama_cpp(python: &Path) -> bool {
    Command::new(python)
        .args(["-c", "import llama_cpp, numpy"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// llama.cpp's default build: every instruction set of this CPU.
const NATIVE: &str = "-DGGML_NATIVE=ON";

/// CMake arguments for llama.cpp: [`NATIVE`], except on a CPU whose flags list AMX.
/// There a native build's batched matmuls (any prompt of more than a few tokens) died
/// with SIGILL in this project's VMs, which advertise AMX without enabling its tile
/// state; such CPUs get the same AVX-512 instruction sets spelled out, AMX off.
fn llama_cpp_cmake_args() -> &'static str {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if cpuinfo.contains(" amx_tile") {
        "-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON \
         -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
         -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
    } else {
        NATIVE
    }
}

/// `target/bench-venv` with llama-cpp-python and numpy; reused when it imports them.
fn ensure_venv(target: &Path) -> Result<PathBuf> {
    let venv = target.join("bench-venv");
    let python = venv.join("bin").join("python");
    if python.exists() && python_imports_llama_cpp(&python) {
        eprintln!("xtask: bench: reusing {} (imports llama_cpp)", venv.display());
        return Ok(python);
    }
    crate::create_venv(&venv, "the llama.cpp contender")?;
    match cached_wheel().filter(|_| llama_cpp_cmake_args() == NATIVE) {
        Some(wheel) => eprintln!(
            "xtask: bench: installing {LLAMA_CPP_PYTHON} and numpy into {} (pip will reuse the cached wheel {})",
            venv.display(),
            wheel.display()
        ),
        None => eprintln!(
            "xtask: bench: installing {LLAMA_CPP_PYTHON} and numpy into {}: pip builds llama.cpp from the \
             sdist with CMAKE_ARGS={} — this takes several minutes",
            venv.display(),
            llama_cpp_cmake_args()
        ),
    }
    // pip's progress goes to stderr: stdout carries only the report. A CPU that
    // advertises AMX gets an explicit AVX-512 build without it (and no cached wheel,
    // which pip keys by version only): see `llama_cpp_cmake_args`.
    let cmake_args = llama_cpp_cmake_args();
    let mut pip = Command::new(&python);
    pip.args(["-m", "pip", "install", "--disable-pip-version-check", LLAMA_CPP_PYTHON, "numpy"]);
    if cmake_args != NATIVE {
        eprintln!("xtask: bench: this CPU advertises AMX: building llama.cpp with CMAKE_ARGS={cmake_args}");
        pip.arg("--no-cache-dir");
    }
    let status = pip
        .env("CMAKE_ARGS", cmake_args)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!(
            "`pip install {LLAMA_CPP_PYTHON} numpy` failed ({status}); a source build needs a C++ compiler and cmake"
        );
    }
    if !python_imports_llama_cpp(&python) {
        bail!("{} still cannot `import llama_cpp, numpy` after pip install", python.display());
    }
    Ok(python)
}

/// A cached llama-cpp-python 0.3.36 wheel in pip's cache, if any.
fn cached_wheel() -> Option<PathBuf> {
    let cache = match std::env::var_os("PIP_CACHE_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => match std::env::var_os("XDG_CACHE_HOME") {
            Some(dir) => PathBuf::from(dir).join("pip"),
            None => PathBuf::from(std::env::var_os("HOME")?).join(".cache").join("pip"),
        },
    };
    find_file(&cache.join("wheels"), "llama_cpp_python-0.3.36-", 8)
}

fn find_file(dir: &Path, prefix: &str, depth: usize) -> Option<PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if depth > 0
                && let Some(found) = find_file(&path, prefix, depth - 1)
            {
                return Some(found);
            }
        } else if entry.file_name().to_string_lossy().starts_with(prefix) {
            return Some(path);
        }
    }
    None
}

// --- the report -------------------------------------------------------------------

/// A metric of a run.
type Metric = fn(&BenchRecord) -> Option<f64>;

/// The best (largest) `metric` over the runs of `contender` in `mode`.
fn best(
    runs: &[BenchRecord],
    contender: &str,
    mode: &str,
    metric: Metric,
    position: Option<usize>,
) -> Option<f64> {
    select(runs, contender, mode, position).filter_map(metric).reduce(f64::max)
}

fn select<'a>(
    runs: &'a [BenchRecord],
    contender: &'a str,
    mode: &'a str,
    position: Option<usize>,
) -> impl Iterator<Item = &'a BenchRecord> + 'a {
    runs.iter().filter(move |v| {
        v.contender == contender && v.mode == mode && position.is_none_or(|p| v.position == Some(p))
    })
}

fn fmt_rate(x: Option<f64>) -> String {
    x.map_or_else(|| "–".to_string(), |x| format!("{x:.1}"))
}

/// Best prefill rate of `contender`: the chat prompt's (`None`) or the fill to `position`.
fn prefill_rate(runs: &[BenchRecord], contender: &str, position: Option<usize>) -> Option<f64> {
    match position {
        None => best(runs, contender, "greedy", |v| v.decode.prefill_tok_s, None),
        Some(p) => best(runs, contender, "position", |v| v.fill_tok_s, Some(p)),
    }
}

fn fmt_ratio(x: Option<f64>, base: Option<f64>) -> String {
    match (x, base) {
        (Some(x), Some(b)) if b > 0.0 => format!("{:.2}×", x / b),
        _ => "–".to_string(),
    }
}

fn cpu_facts() -> (String, usize, String) {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = info
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown".to_string(), |(_, v)| v.trim().to_string());
    let cores = info.lines().filter(|l| l.starts_with("processor")).count();
    let flags: Vec<&str> = info
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.split_whitespace().collect())
        .unwrap_or_default();
    let simd = ["avx", "avx2", "fma", "f16c", "avx512f", "avx512_vnni", "avx_vnni"]
        .iter()
        .filter(|f| flags.contains(f))
        .copied()
        .collect::<Vec<_>>()
        .join(", ");
    (model, cores, simd)
}

fn command_line(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(|| "unknown".to_string(), |o| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// `version` of `package` in Cargo.lock.
fn locked_version(root: &Path, package: &str) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let needle = format!("name = \"{package}\"");
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line.trim() == needle
            && let Some(v) = lines.next().and_then(|l| l.trim().strip_prefix("version = "))
        {
            return v.trim_matches('"').to_string();
        }
    }
    "unknown".to_string()
}

/// Leading ids two runs share.
fn common_prefix(a: &BenchRecord, b: &BenchRecord) -> Option<(usize, usize)> {
    let (a, b) = (a.ids.as_ref()?, b.ids.as_ref()?);
    let n = a.len().min(b.len());
    Some((a.iter().zip(b).take_while(|(x, y)| x == y).count(), n))
}

fn report(config: &Config, paths: &Paths, raw: &Value, runs: &[BenchRecord]) -> Result<String> {
    let rounds = config.rounds;
    let mut md = String::new();
    let (cpu, cores, simd) = cpu_facts();
    let date = command_line("date", &["-u", "+%Y-%m-%d %H:%M UTC"]);
    let rustc = command_line(&std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string()), &["--version"]);
    let llama = select(runs, LLAMA_CPP, "greedy", None).next();
    let versions = llama.and_then(|v| v.versions.as_ref());
    let field = |k: &str| versions.and_then(|v| v[k].as_str()).unwrap_or("unknown").to_string();
    let model_name = paths.model.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let prompt_tokens = raw["tokens"]["prompt_tokens"].as_u64().unwrap_or(0);

    if config.quick {
        writeln!(md, "# `cargo xtask bench --quick` (smoke test: not for quoting)\n")?;
    }
    if config.quick {
        writeln!(
            md,
            "_Generated by `cargo xtask bench --quick` on {date} (every run rewrites this file)._\n"
        )?;
    } else {
        writeln!(
            md,
            "_Generated by `cargo xtask bench` on {date}; rerun it to refresh (everything between the \
             markers is rewritten)._\n"
        )?;
    }
    writeln!(md, "**Setup.**")?;
    writeln!(
        md,
        "- Machine: {cpu}, {cores} logical cores (SIMD: {simd}); **{THREADS} threads for every contender**. \
         Load average (1/5/15 min) before {} and after {}.",
        raw["load_average_before"].as_str().unwrap_or("?"),
        raw["load_average_after"].as_str().unwrap_or("?")
    )?;
    writeln!(
        md,
        "- Model: `{model_name}` (SmolLM2-135M-Instruct, Q4_1 GGUF, `perpetua_candle::default_model_path()`), \
         the same file for all."
    )?;
    writeln!(
        md,
        "- Prompt: \"Write a book about a dog that can talk and is a detective.\" through the chat template, \
         {prompt_tokens} token ids, written once to `target/bench/tokens.json` and read by every contender \
         (llama.cpp gets the same ids as a list). Decode: {} new tokens (EOS never ends a run). Long-context \
         rows fill the cache with a story text tokenized and repeated, then time {POSITION_STEPS} greedy steps.",
        config.new_tokens
    )?;
    writeln!(
        md,
        "- Contenders, each measurement in its own process (peak RSS = that process's `VmHWM`), alternating \
         over {rounds} round(s), best round per metric:"
    )?;
    writeln!(
        md,
        "  - **perpetua**: `Generator` on the candle backend, default `LoadOptions` (Q4_1 → Q8_0 at load, \
         fused attention); greedy (`Greedy`) and sampled (T 1.0, top-k 20, seed 1). **perpetua exact**: \
         `LoadOptions::exact()` (the file's Q4_1, reference attention: bit parity with candle-transformers), greedy."
    )?;
    writeln!(
        md,
        "  - **candle-transformers {}**: `quantized_llama::ModelWeights` + `LogitsProcessor` loop \
         (`Sampling::ArgMax`; `Sampling::TopK {{ k: 20, temperature: 1.0 }}`, seed 1).",
        locked_version(&paths.root, "candle-transformers")
    )?;
    writeln!(
        md,
        "  - **llama.cpp** via llama-cpp-python {} (Python {}): greedy = argmax of the last logits after \
         `eval([tok])`; sampled = its own sampler chain (`generate`, top_k=20, temp=1.0, seed 1); \
         `n_threads` = `n_threads_batch` = {THREADS}; KV cache f16, `n_ctx` sized to the run.",
        field("llama_cpp_python"),
        field("python")
    )?;
    writeln!(
        md,
        "- Build flags: **same flags** — the Rust contenders are built by `cargo build --release` with the \
         workspace's `-C target-cpu=native` (`.cargo/config.toml`), llama.cpp with `CMAKE_ARGS={}` \
         (`GGML_NATIVE=ON`, or this CPU's AVX-512 sets without AMX where it advertises AMX: see \
         `xtask/src/bench.rs`). llama.cpp's system info: `{}`. {rustc}; candle-core {}.",
        llama_cpp_cmake_args(),
        field("system_info"),
        locked_version(&paths.root, "candle-core")
    )?;
    writeln!(md, "- Commands:\n")?;
    writeln!(md, "```text")?;
    writeln!(md, "cargo xtask bench{}", if config.quick { " --quick" } else { "" })?;
    writeln!(md, "# each measurement, one process (RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2):")?;
    writeln!(
        md,
        "target/release/examples/e2e --contender perpetua|perpetua-exact|candle-transformers \\\n    \
         --mode greedy|sampled|position|perpetual --tokens-file target/bench/tokens.json \
         [--new-tokens N] [--position P --steps {POSITION_STEPS}]"
    )?;
    writeln!(
        md,
        "target/bench-venv/bin/python xtask/bench_llama_cpp.py --model MODEL --tokens-file target/bench/tokens.json \\\n    \
         --mode greedy|sampled|position --threads {THREADS} [--new-tokens N] [--position P --steps {POSITION_STEPS}]"
    )?;
    writeln!(md, "```\n")?;
    writeln!(
        md,
        "Raw JSON: `target/bench/{}` (every run). The whole run took {:.1} min.\n",
        if config.quick { "results-quick.json" } else { "results.json" },
        raw["elapsed_s"].as_f64().unwrap_or(f64::NAN) / 60.0
    )?;

    // Prefill / decode / RSS.
    writeln!(
        md,
        "**Prefill, decode and peak RSS** (ratio = this row ÷ the baseline, same mode; for RSS lower is better):\n"
    )?;
    writeln!(
        md,
        "| contender | mode | prefill tok/s | ÷ llama.cpp | ÷ candle-tf | decode tok/s | ÷ llama.cpp | ÷ candle-tf | peak RSS MiB | ÷ llama.cpp | ÷ candle-tf |"
    )?;
    writeln!(md, "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")?;
    let rows = [
        (PERPETUA, "greedy", "perpetua (Q8_0, fused)"),
        (PERPETUA_EXACT, "greedy", "perpetua exact (Q4_1)"),
        (CANDLE, "greedy", "candle-transformers"),
        (LLAMA_CPP, "greedy", "llama.cpp"),
        (PERPETUA, "sampled", "perpetua (Q8_0, fused)"),
        (CANDLE, "sampled", "candle-transformers"),
        (LLAMA_CPP, "sampled", "llama.cpp"),
    ];
    for (contender, mode, label) in rows {
        let get = |c: &str, key: Metric| best(runs, c, mode, key, None);
        let metrics: [(&str, Metric); 3] = [
            ("prefill_tok_s", |v| v.decode.prefill_tok_s),
            ("decode_tok_s", |v| v.decode.decode_tok_s),
            ("peak_rss_mib", |v| v.peak_rss_mib),
        ];
        let cells: Vec<String> = metrics
            .iter()
            .flat_map(|&(name, key)| {
                let x = get(contender, key);
                let value = if name == "peak_rss_mib" {
                    x.map_or_else(|| "–".to_string(), |x| format!("{x:.0}"))
                } else {
                    fmt_rate(x)
                };
                [value, fmt_ratio(x, get(LLAMA_CPP, key)), fmt_ratio(x, get(CANDLE, key))]
            })
            .collect();
        writeln!(md, "| {label} | {mode} | {} |", cells.join(" | "))?;
    }
    writeln!(md)?;
    writeln!(
        md,
        "Prefill: perpetua's `Generator` prefills all prompt tokens but the last ({} here; the first decode \
         step feeds the last), the others all {prompt_tokens}; each rate is its own tokens ÷ its own time. \
         Decode: {} one-token forward passes with sampling (and, for perpetua, incremental detokenization), \
         ÷ their wall time. Peak RSS: `VmHWM` of that row's process (largest over the rounds); \
         llama.cpp's includes the Python interpreter and numpy, and its memory-mapped weights count as \
         resident pages once touched.\n",
        prompt_tokens.saturating_sub(1),
        config.new_tokens
    )?;

    // Greedy agreement.
    let first = |c: &'static str| select(runs, c, "greedy", None).next();
    let mut agreement = Vec::new();
    for (a, b) in [(PERPETUA_EXACT, CANDLE), (PERPETUA, CANDLE), (PERPETUA, LLAMA_CPP), (CANDLE, LLAMA_CPP)] {
        if let (Some(x), Some(y)) = (first(a), first(b))
            && let Some((same, n)) = common_prefix(x, y)
        {
            agreement.push(format!("{a} vs {b}: first {same}/{n}"));
        }
    }
    writeln!(
        md,
        "Greedy token agreement (leading ids in common): {}. Not expected to be total: perpetua's \
         `Generator` prefills all prompt ids but the last and feeds that one in the first decode step, the \
         others prefill all of them in one batch, and batched and one-row kernels round differently; the \
         default path also re-quantizes to Q8_0 and sums attention in another order, and llama.cpp has its \
         own kernels and an f16 KV cache. One near tie flips a token and the texts part.\n",
        agreement.join("; ")
    )?;

    // Long context.
    writeln!(
        md,
        "**Decode at long context** ({POSITION_STEPS} greedy steps after filling the cache to the position \
         with filler ids in chunks of 512; tok/s; perpetua with its default `LoadOptions`):\n"
    )?;
    writeln!(
        md,
        "| position | perpetua | candle-transformers | llama.cpp | perpetua ÷ llama.cpp | perpetua ÷ candle-tf |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|")?;
    for position in POSITIONS {
        let get = |c: &str| best(runs, c, "position", |v| v.decode.decode_tok_s, Some(position));
        let skipped =
            |c: &'static str| select(runs, c, "position", Some(position)).find_map(|v| v.skipped.as_deref());
        let cell = |c: &'static str| match (get(c), skipped(c)) {
            (Some(x), _) => format!("{x:.1}"),
            (None, Some(s)) => s.to_string(),
            (None, None) => "–".to_string(),
        };
        let ours = get(PERPETUA);
        let candle_ratio = match (get(CANDLE), skipped(CANDLE)) {
            (None, Some(s)) => s.to_string(),
            (c, _) => fmt_ratio(ours, c),
        };
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {candle_ratio} |",
            thousands(position),
            cell(PERPETUA),
            cell(CANDLE),
            cell(LLAMA_CPP),
            fmt_ratio(ours, get(LLAMA_CPP)),
        )?;
    }
    writeln!(md)?;

    // Long-prompt prefill.
    writeln!(
        md,
        "**Prefill of long prompts** (filling the cache to the position with filler ids, \
         chunks of 512 for every contender; positions ÷ fill time, tok/s, best round; the 44-token row is \
         the greedy runs' prompt prefill):\n"
    )?;
    writeln!(
        md,
        "| prompt tokens | perpetua | candle-transformers | llama.cpp | perpetua ÷ llama.cpp | perpetua ÷ candle-tf |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---:|---:|")?;
    // The chat prompt (the greedy runs' prefill), then the long fills.
    let prompt = runs.iter().find_map(|v| v.prompt_tokens).unwrap_or(0);
    let rows = std::iter::once((prompt.to_string(), None, "–"))
        .chain(POSITIONS.into_iter().filter(|&p| p >= 512).map(|p| (thousands(p), Some(p), "n/a")));
    for (label, position, missing) in rows {
        let get = |c: &str| prefill_rate(runs, c, position);
        let cell = |x: Option<f64>| x.map_or(missing.to_string(), |x| format!("{x:.1}"));
        writeln!(
            md,
            "| {label} | {} | {} | {} | {} | {} |",
            cell(get(PERPETUA)),
            cell(get(CANDLE)),
            cell(get(LLAMA_CPP)),
            fmt_ratio(get(PERPETUA), get(LLAMA_CPP)),
            fmt_ratio(get(PERPETUA), get(CANDLE)),
        )?;
    }
    writeln!(md)?;

    // Sampling share.
    writeln!(
        md,
        "**Share of a decode step spent sampling** in perpetua's generator (`timings.sampling` ÷ \
         `timings.decode`; lowest over the rounds; goal ≤ 2 %):\n"
    )?;
    writeln!(md, "| mode | sampling per step | decode per step | share | goal ≤ 2 % |")?;
    writeln!(md, "|---|---:|---:|---:|---|")?;
    let mut share_met = true;
    for mode in ["greedy", "sampled"] {
        let pick = select(runs, PERPETUA, mode, None)
            .min_by(|a, b| num(a.decode.sampling_share).total_cmp(&num(b.decode.sampling_share)));
        if let Some(v) = pick {
            let passes = v.decode.forward_passes.unwrap_or(0).max(1) as f64;
            let share = num(v.decode.sampling_share);
            share_met &= share <= 0.02;
            writeln!(
                md,
                "| {mode} | {:.1} µs | {:.2} ms | {:.2} % | {} |",
                1e6 * num(v.decode.sampling_s) / passes,
                1e3 * num(v.decode.decode_s) / passes,
                100.0 * share,
                if share <= 0.02 { "met" } else { "**not met**" }
            )?;
        }
    }
    writeln!(md)?;

    // Perpetual overhead.
    let perpetual: Vec<&PerpetualRecord> =
        select(runs, PERPETUA, "perpetual", None).filter_map(|v| v.perpetual.as_ref()).collect();
    let per_pass =
        |wall_s: f64, run: &DecodeRecord| 1e3 * wall_s / (run.forward_passes.unwrap_or(0).max(1) as f64);
    let best_perpetual = perpetual.iter().map(|v| per_pass(v.wall_s, &v.run)).reduce(f64::min);
    let best_plain = perpetual.iter().map(|v| per_pass(v.plain_wall_s, &v.plain)).reduce(f64::min);
    let mut backstep_held = None;
    if let Some(first) = perpetual.first() {
        let c = &first.run;
        let (passes, generated) = (c.forward_passes.unwrap_or(0), c.generated_tokens.unwrap_or(0));
        let (backsteps, removed) = (first.backsteps, first.tokens_removed);
        let identity = first.identity_generated_plus_removed;
        let exact = first.identity_with_eos_steps;
        let no_reprefill = first.no_reprefill;
        let same_counts = perpetual.iter().all(|v| v.run.forward_passes == c.forward_passes);
        let (p, q) = (best_perpetual, best_plain);
        writeln!(
            md,
            "**Perpetual overhead**: `BackstepWithSchedule` (back step 10, T 1.0, top-k 20, seed 1), {} new tokens, \
             against a plain `StopAtEos` run with `min_new_tokens` = `max_new_tokens` = the perpetual run's forward \
             passes (wall time of `generate`, prefill included, ÷ forward passes; best round):\n",
            thousands(config.perpetual_tokens)
        )?;
        writeln!(md, "| run | forward passes | ms per forward pass | ratio |")?;
        writeln!(md, "|---|---:|---:|---:|")?;
        writeln!(
            md,
            "| perpetual (`BackstepWithSchedule`) | {passes} | {} | {} |",
            p.map_or_else(|| "–".to_string(), |x| format!("{x:.2}")),
            fmt_ratio(p, q)
        )?;
        writeln!(
            md,
            "| plain (`StopAtEos`, same passes) | {} | {} | 1.00× |\n",
            count(first.plain.forward_passes),
            q.map_or_else(|| "–".to_string(), |x| format!("{x:.2}"))
        )?;
        writeln!(
            md,
            "Back steps: {backsteps} ({removed} tokens removed), {generated} tokens kept, finish {}{}. \
             Check `forward_passes == generated tokens + tokens removed by back steps`: {passes} vs {} → **{}**; \
             counting also each back step's own step (the forward pass that drew the EOS and keeps no token): \
             {passes} vs {} → **{}**. No re-prefill (prefill tokens = prompt − 1, no context roll): **{}**.\n",
            first.finish,
            if same_counts { "" } else { " (counts differed between rounds: see the raw JSON)" },
            generated + removed,
            if identity { "held" } else { "did not hold" },
            generated + removed + backsteps,
            if exact { "held" } else { "did not hold" },
            if no_reprefill { "held" } else { "did not hold" },
        )?;
        backstep_held = Some(exact && no_reprefill);
    }

    let batch_goal = batched_generation(&mut md, config, runs)?;

    // Goals.
    let decode: Metric = |v| v.decode.decode_tok_s;
    let ours = best(runs, PERPETUA, "greedy", decode, None);
    let theirs = best(runs, LLAMA_CPP, "greedy", decode, None);
    let ours_s = best(runs, PERPETUA, "sampled", decode, None);
    let theirs_s = best(runs, LLAMA_CPP, "sampled", decode, None);
    let goal = |x: Option<f64>, b: Option<f64>| match (x, b) {
        (Some(x), Some(b)) if b > 0.0 => {
            format!("{:.2}× ({})", x / b, if x / b >= 0.8 { "met" } else { "**not met**" })
        }
        _ => "–".to_string(),
    };
    writeln!(md, "**Issue 10's goals, where this run stands:**\n")?;
    writeln!(
        md,
        "- Decode ≥ 0.8× llama.cpp on the same GGUF and threads: greedy {}, sampled {}.",
        goal(ours, theirs),
        goal(ours_s, theirs_s)
    )?;
    writeln!(md, "- Sampling ≤ 2 % of a decode step: {}.", if share_met { "met" } else { "**not met**" })?;
    writeln!(
        md,
        "- A back step costs only its regenerated forward passes (no re-prefill): {}.",
        match backstep_held {
            Some(true) => "held (counts above)",
            Some(false) => "**did not hold** (counts above)",
            None => "not measured",
        }
    )?;
    writeln!(
        md,
        "- Issue 20: batch 8 ≥ 3× the single-sequence rate (generator, perpetual mode): {batch_goal}."
    )?;
    let prefill_goal = |position: Option<usize>| match (
        prefill_rate(runs, PERPETUA, position),
        prefill_rate(runs, LLAMA_CPP, position),
    ) {
        (Some(o), Some(t)) if t > 0.0 => {
            format!("{:.2}× ({})", o / t, if o >= t { "met" } else { "**not met**" })
        }
        _ => "not measured".to_string(),
    };
    writeln!(
        md,
        "- Issue 24: prefill ≥ 1.0× llama.cpp at 44, 512 and 2,000 tokens: {}, {}, {}.",
        prefill_goal(None),
        prefill_goal(Some(512)),
        prefill_goal(Some(2_000))
    )?;
    if config.quick {
        writeln!(
            md,
            "\n_`--quick`: 1 round, {} decode tokens, a {}-token perpetual run. Smoke-test numbers — on a shared \
             or loaded machine they say that everything runs, not how fast._",
            config.new_tokens, config.perpetual_tokens
        )?;
    }
    Ok(md)
}

/// The batched-generation table (`e2e --mode generate-batch`): aggregate decode rate per
/// batch width, best round, against batch 1 of the same run; returns the issue-20 goal
/// line's verdict.
fn batched_generation(md: &mut String, config: &Config, runs: &[BenchRecord]) -> Result<String> {
    let width = |v: &BenchRecord| v.extra.get("batch").and_then(Value::as_u64).map(|b| b as usize);
    let of = |b: usize| select(runs, PERPETUA, "generate-batch", None).filter(move |v| width(v) == Some(b));
    let best_rate = |b: usize| of(b).filter_map(|v| v.decode.decode_tok_s).reduce(f64::max);
    let base = best_rate(1);
    let theirs = |b: usize| {
        select(runs, LLAMA_CPP, "batch", None)
            .filter(move |v| width(v) == Some(b))
            .filter_map(|v| v.decode.decode_tok_s)
            .reduce(f64::max)
    };
    writeln!(
        md,
        "**Batched generation** (`Generator::generate_batch`, `max_batch` = the batch): ragged prompts of 20–200 \
         filler ids, {} new tokens each, T 1.0 / top-k 20 / seed 1, the recommended perpetual mode; generated \
         tokens ÷ (wall time − prefills), best round; each sequence checked against its solo run:\n",
        thousands(config.batch_tokens)
    )?;
    writeln!(
        md,
        "| batch | aggregate tok/s | × batch 1 | peak RSS MiB | every sequence = its solo run | llama.cpp tok/s | \
         llama.cpp × its batch 1 | perpetua ÷ llama.cpp |"
    )?;
    writeln!(md, "|---:|---:|---:|---:|---|---:|---:|---:|")?;
    for b in BATCHES {
        let rss = of(b).filter_map(|v| v.peak_rss_mib).reduce(f64::max);
        let same = of(b).all(|v| {
            v.extra.get("same_as_solo").and_then(Value::as_array).is_some_and(|a| a.iter().all(|x| x == true))
        });
        writeln!(
            md,
            "| {b} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_rate(best_rate(b)),
            fmt_ratio(best_rate(b), base),
            rss.map_or_else(|| "–".to_string(), |x| format!("{x:.0}")),
            if of(b).next().is_none() {
                "–"
            } else if same {
                "yes"
            } else {
                "**no**"
            },
            fmt_rate(theirs(b)),
            fmt_ratio(theirs(b), theirs(1)),
            fmt_ratio(best_rate(b), theirs(b)),
        )?;
    }
    writeln!(
        md,
        "\nllama.cpp: the same prompts and widths through its low-level `llama_batch` API (one `llama_decode` \
         of every sequence's token per step, `n_seq_max` = the batch), top-k 20 / T 1.0 with EOS masked in \
         numpy, no perpetual strategy (`xtask/bench_llama_cpp.py --mode batch`).\n"
    )?;
    Ok(match (best_rate(8), base) {
        (Some(x), Some(b)) if b > 0.0 => {
            format!("{:.2}× ({})", x / b, if x / b >= 3.0 { "met" } else { "**not met**" })
        }
        _ => "not measured".to_string(),
    })
}

/// Replace what lies between the markers in `path`, appending the section (heading and
/// markers) when the markers are absent.
fn write_section(path: &Path, markdown: &str) -> Result<()> {
    let doc = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let updated = replace_section(&doc, markdown).with_context(|| format!("{}", path.display()))?;
    std::fs::write(path, updated).with_context(|| format!("writing {}", path.display()))
}

/// `doc` with `markdown` between the markers (only that part changes), or with the
/// section appended when it has neither marker.
fn replace_section(doc: &str, markdown: &str) -> Result<String> {
    Ok(match (doc.find(START), doc.find(END)) {
        (Some(s), Some(e)) if s < e => {
            format!("{}{START}\n{}\n{}", &doc[..s], markdown.trim_end(), &doc[e..])
        }
        (None, None) => {
            format!("{}\n\n{HEADING}\n\n{START}\n{}\n{END}\n", doc.trim_end(), markdown.trim_end())
        }
        _ => bail!("the markers {START} / {END} are broken (one missing or out of order)"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn section_is_replaced_between_the_markers_only() {
        let doc = format!("# P\n\nbefore\n\n{HEADING}\n\n{START}\nold\ntext\n{END}\n\nafter\n");
        let out = replace_section(&doc, "new\n").expect("markers present");
        assert_eq!(out, format!("# P\n\nbefore\n\n{HEADING}\n\n{START}\nnew\n{END}\n\nafter\n"));
        // Idempotent.
        assert_eq!(replace_section(&out, "new").expect("markers present"), out);
    }

    #[test]
    fn section_is_appended_when_absent_and_broken_markers_are_errors() {
        let out = replace_section("# P\n\ntext\n", "table").expect("no markers");
        assert_eq!(out, format!("# P\n\ntext\n\n{HEADING}\n\n{START}\ntable\n{END}\n"));
        assert!(replace_section(&format!("x {START} y"), "t").is_err());
        assert!(replace_section(&format!("{END} x {START}"), "t").is_err());
    }

    /// The batched-generation table from e2e records: best round per width, ratio to
    /// batch 1, the solo check, and the goal's verdict.
    #[test]
    fn batched_generation_table_and_goal() {
        let rec = |batch: usize, rate: f64, same: bool| {
            let mut v = BenchRecord {
                contender: PERPETUA.into(),
                mode: "generate-batch".into(),
                peak_rss_mib: Some(200.0 + batch as f64),
                ..BenchRecord::default()
            };
            v.decode.decode_tok_s = Some(rate);
            v.extra.insert("batch".into(), json!(batch));
            v.extra.insert("same_as_solo".into(), json!(vec![same; batch]));
            v
        };
        let config =
            Config { quick: true, rounds: 2, new_tokens: 32, perpetual_tokens: 500, batch_tokens: 256 };
        let llama = |batch: usize, rate: f64| {
            let mut v =
                BenchRecord { contender: LLAMA_CPP.into(), mode: "batch".into(), ..BenchRecord::default() };
            v.decode.decode_tok_s = Some(rate);
            v.extra.insert("batch".into(), json!(batch));
            v
        };
        let runs = vec![
            rec(1, 100.0, true),
            rec(1, 90.0, true),
            rec(4, 200.0, true),
            rec(8, 250.0, false),
            rec(8, 310.0, true),
            llama(1, 50.0),
            llama(8, 200.0),
        ];
        let mut md = String::new();
        let goal = batched_generation(&mut md, &config, &runs).unwrap();
        assert!(md.contains("| 1 | 100.0 | 1.00× | 201 | yes | 50.0 | 1.00× | 2.00× |"), "{md}");
        assert!(md.contains("| 4 | 200.0 | 2.00× | 204 | yes | – | – | – |"), "{md}");
        // Best round 310 (3.1×); one round's sequences differed from their solo runs.
        assert!(md.contains("| 8 | 310.0 | 3.10× | 208 | **no** | 200.0 | 4.00× | 1.55× |"), "{md}");
        assert_eq!(goal, "3.10× (met)");
        let goal = batched_generation(&mut String::new(), &config, &runs[..3]).unwrap();
        assert_eq!(goal, "not measured");
    }

    #[test]
    fn helpers() {
        assert_eq!(thousands(4096), "4,096");
        assert_eq!(thousands(100), "100");
        assert_eq!(thousands(2_000_000), "2,000,000");
        assert_eq!(rotated(&["a", "b", "c"], 1), vec!["b", "c", "a"]);
        assert_eq!(rotated(&["a", "b", "c"], 3), vec!["a", "b", "c"]);
        assert_eq!(fmt_ratio(Some(3.0), Some(2.0)), "1.50×");
        assert_eq!(fmt_ratio(Some(3.0), None), "–");
    }
}
