//! `cargo xtask gpu [wgpu|cuda]`: build and run the GPU paths a machine without a GPU
//! can.
//!
//! - `wgpu`: burn's `wgpu` backend *runs* on Mesa's software Vulkan (lavapipe): when
//!   `vulkaninfo` finds no device, `apt-get install mesa-vulkan-drivers libvulkan1
//!   vulkan-tools` (as root, or through `sudo -n`); then the burn tests that matter for a
//!   GPU port — logits parity with the candle CPU backend in f32 (`burn_parity`), the
//!   kv-cache conformance kit (`conformance`) and the perpetual real-model test
//!   (`perpetual_burn`) — with `BURN_DEVICE=wgpu`, so every one of them runs its real
//!   WGSL shaders there. `cargo xtask ci` runs the same tests less the long ones
//!   (`WGPU_CI_SKIP` in `main.rs`).
//! - `cuda`: CUDA 13.0's compiler, headers and libraries from PyPI (`nvidia-cuda-nvcc`,
//!   `-crt`, `-runtime`, `nvidia-nvvm`, `-cccl`, `-nvrtc`, `nvidia-cublas`,
//!   `nvidia-curand`) in `target/cuda13.0-venv`; then candle's `cuda` feature (its
//!   kernels compiled to PTX by nvcc) with its CUDA tests (`tests/cuda.rs`), and burn's
//!   `cuda` backend, are *built*; the CUDA tests *run* when `nvidia-smi -L` lists a GPU.
//!   13.0, not newer: candle loads its kernels as PTX, which a driver compiles only up
//!   to its own CUDA version (an H200 lent here runs driver 580, CUDA 13.0; PTX from
//!   13.5 would be refused there). `CUDA_COMPUTE_CAP` (default 90, Hopper) picks the
//!   PTX target. burn's needs more than PyPI: its `cubecl-llvm` build script downloads
//!   a prebuilt LLVM from GitHub releases.
//!
//! Without an argument, both. The wgpu tests are `cargo xtask ci`'s own test build
//! (`WGPU_TEST_FEATURES`); the CUDA builds in `target/gpu` (candle itself changes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// The test binaries that matter for a GPU port of the burn backend: logits parity with
/// the candle CPU backend in f32 (`burn_parity`), the perpetual real-model test
/// (`perpetual_burn`) and the kv-cache conformance kit on the real model
/// (`conformance`; the name also matches candle's, skipped by [`crate::CANDLE_CONFORMANCE`]).
const WGPU_TESTS: [&str; 3] = ["burn_parity", "perpetual_burn", "conformance"];

/// The CUDA 13.0 pieces from PyPI (each installs under `nvidia/cu13/`).
const CUDA_PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.0.88",
    "nvidia-cuda-crt==13.0.88",
    "nvidia-cuda-runtime==13.0.96",
    "nvidia-nvvm==13.0.88",
    "nvidia-cuda-cccl==13.0.85",
    "nvidia-cuda-nvrtc==13.0.88",
    "nvidia-cublas==13.0.2.14",
    "nvidia-curand==10.4.0.35",
];

/// The venv holding them (named by version: an older venv of another toolkit is left
/// alone rather than mixed with this one).
const CUDA_VENV: &str = "cuda13.0-venv";

/// cudarc's bindings for the same CUDA version.
const CUDARC_VERSION: &str = "13000";

pub(crate) fn gpu(which: Option<&str>) -> Result<()> {
    match which {
        None => {
            wgpu()?;
            cuda()
        }
        Some("wgpu") => wgpu(),
        Some("cuda") => cuda(),
        Some(other) => bail!("gpu: unknown part `{other}` (wgpu or cuda)"),
    }
}

/// A Vulkan device name from `vulkaninfo --summary`, if any.
fn vulkan_device() -> Option<String> {
    let out = Command::new("vulkaninfo").arg("--summary").stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().find_map(|l| {
        l.trim().strip_prefix("deviceName").map(|rest| rest.trim_start_matches([' ', '=']).trim().to_string())
    })
}

fn install_vulkan() -> Result<()> {
    let packages = ["mesa-vulkan-drivers", "libvulkan1", "vulkan-tools"];
    let root =
        Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    let run = |args: &[&str]| -> Result<bool> {
        let mut cmd = if root { Command::new(args[0]) } else { Command::new("sudo") };
        if !root {
            cmd.arg("-n").arg(args[0]);
        }
        let status = cmd.args(&args[1..]).env("DEBIAN_FRONTEND", "noninteractive").status();
        Ok(status.is_ok_and(|s| s.success()))
    };
    eprintln!("xtask: gpu: no Vulkan device: installing {} (apt)", packages.join(" "));
    let mut install = vec!["apt-get", "install", "-y", "-q"];
    install.extend(packages);
    if !run(&install)? {
        // A fresh machine may have no package lists yet.
        let _ = run(&["apt-get", "update", "-q"])?;
        if !run(&install)? {
            bail!(
                "could not install {}: run `apt-get install {}` as root (Debian/Ubuntu), then rerun",
                packages.join(" "),
                packages.join(" ")
            );
        }
    }
    Ok(())
}

/// `dir` in front of the search path in environment variable `var`.
fn prepended(var: &str, dir: &Path) -> String {
    match std::env::var(var) {
        Ok(rest) if !rest.is_empty() => format!("{}:{rest}", dir.display()),
        _ => dir.display().to_string(),
    }
}

/// A Vulkan device for the wgpu tests: the machine's, or Mesa's lavapipe installed
/// (apt) when `vulkaninfo` lists none; its name is printed.
pub(crate) fn vulkan() -> Result<()> {
    if vulkan_device().is_none() {
        install_vulkan()?;
    }
    let device = vulkan_device()
        .context("vulkaninfo still lists no Vulkan device after installing Mesa's lavapipe")?;
    eprintln!("xtask: gpu: Vulkan device: {device}");
    Ok(())
}

/// The wgpu tests, built with [`WGPU_TEST_FEATURES`] (the same build as `cargo xtask
/// ci`'s tests), run with `BURN_DEVICE=wgpu`; `skip`: test-name filters left out.
pub(crate) fn wgpu_tests(skip: &[&str]) -> Result<()> {
    let envs = [("BURN_DEVICE", "wgpu".to_string())];
    let features = crate::WGPU_TEST_FEATURES;
    let mut args = vec!["test", "--workspace", "--features", features];
    for test in WGPU_TESTS {
        args.extend(["--test", test]);
    }
    args.extend(["--", "--nocapture", "--test-threads", "1"]);
    for name in skip {
        args.extend(["--skip", name]);
    }
    crate::cargo_with(&args, &envs)
}

/// All of the wgpu tests (`cargo xtask ci` runs a subset: [`crate::WGPU_CI_SKIP`]).
fn wgpu() -> Result<()> {
    crate::fetch_model()?;
    vulkan()?;
    wgpu_tests(&[crate::CANDLE_CONFORMANCE])
}

/// `target/cuda13.0-venv` with the CUDA pieces; returns the toolkit root (`nvidia/cu13`).
fn cuda_toolkit() -> Result<PathBuf> {
    let venv = PathBuf::from("target").join(CUDA_VENV);
    let python = venv.join("bin").join("python");
    let root = |python: &Path| -> Option<PathBuf> {
        let out = Command::new(python)
            .args(["-c", "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))"])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        dir.join("bin").join("nvcc").exists().then_some(dir)
    };
    if python.exists()
        && let Some(dir) = root(&python)
    {
        return Ok(dir);
    }
    crate::create_venv(&venv, "the CUDA build")?;
    eprintln!("xtask: gpu: installing the CUDA 13.0 toolkit pieces into {} (pip, ~1.3 GB)", venv.display());
    let status = Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "--disable-pip-version-check"])
        .args(CUDA_PACKAGES)
        .stdout(Stdio::from(std::io::stderr()))
        .status()
        .context("running pip install")?;
    if !status.success() {
        bail!("`pip install {}` failed ({status})", CUDA_PACKAGES.join(" "));
    }
    root(&python).context("nvcc is missing from the installed nvidia-cuda-nvcc")
}

fn cuda() -> Result<()> {
    let toolkit = std::fs::canonicalize(cuda_toolkit()?)?;
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let home = toolkit.display().to_string();
    let target = PathBuf::from("target").join("gpu");
    let envs = [
        ("CARGO_TARGET_DIR", target.display().to_string()),
        ("PATH", prepended("PATH", &toolkit.join("bin"))),
        ("CUDA_ROOT", home.clone()),
        ("CUDA_PATH", home.clone()),
        ("CUDA_HOME", home),
        ("CUDA_COMPUTE_CAP", cap),
        ("CUDARC_CUDA_VERSION", CUDARC_VERSION.to_string()),
    ];
    crate::cargo_with(&["build", "-p", "perpetua-candle", "--features", "cuda"], &envs)?;
    // candle links cudarc's libraries dynamically (`-lcuda -lcublas …`): the wheels ship
    // them only under their versioned names, and libcuda is the driver's.
    let link = std::fs::canonicalize(link_dir(&toolkit.join("lib"), &target)?)?;
    let libraries = [
        ("LIBRARY_PATH", prepended("LIBRARY_PATH", &link)),
        ("LD_LIBRARY_PATH", prepended("LD_LIBRARY_PATH", &toolkit.join("lib"))),
    ];
    let envs = [&envs[..], &libraries].concat();
    let candle_tests = ["test", "-p", "perpetua-candle", "--features", "cuda", "--test", "cuda"];
    crate::cargo_with(&[&candle_tests[..], &["--no-run"]].concat(), &envs)?;
    eprintln!("xtask: gpu: candle's CUDA build finished (with its CUDA tests)");
    if let Some(gpus) = nvidia_gpus() {
        if let Some(driver) = driver_major() {
            // The driver compiles candle's PTX only up to its own CUDA version: 580 is
            // the first with CUDA 13.0, the toolkit the kernels were compiled with.
            if driver < MIN_DRIVER {
                bail!(
                    "the NVIDIA driver here is {driver}.x, older than {MIN_DRIVER} (CUDA 13.0): it would refuse \
                     the kernels' PTX; update the driver to run the CUDA tests (the build itself finished)"
                );
            }
        }
        eprintln!("xtask: gpu: nvidia-smi lists {gpus}: running the CUDA tests");
        crate::fetch_model()?;
        crate::cargo_with(
            &[&candle_tests[..], &["--", "--nocapture", "--test-threads", "1"]].concat(),
            &envs,
        )?;
    } else {
        eprintln!(
            "xtask: gpu: no NVIDIA GPU here (`nvidia-smi -L` lists none): the CUDA tests are built, not run"
        );
    }
    // burn's CUDA runtime (cubecl-cuda 0.11) pulls cubecl-llvm, whose build script
    // downloads a prebuilt LLVM from GitHub releases: it builds only with that reachable.
    crate::cargo_with(
        &["build", "-p", "perpetua-burn", "--no-default-features", "--features", "cuda"],
        &envs,
    )
    .context(
        "burn's `cuda` build failed; on a machine that reaches only package registries this is \
             cubecl-llvm's build script (tracel-llvm-bundler) failing to download LLVM from \
             github.com/tracel-ai/tracel-llvm/releases",
    )?;
    eprintln!("xtask: gpu: the CUDA builds finished");
    Ok(())
}

/// `target/cuda-link`: what `-lcublas -lcublasLt -lcudart -lcurand -lnvrtc -lcuda` need
/// at link time — links to the wheels' versioned libraries (`lib`), and a stub
/// `libcuda.so` (soname `libcuda.so.1`) defining the driver functions the compiled
/// libraries in `target` call, as the CUDA toolkit's own `stubs/libcuda.so` does: the
/// stub is only linked against; at run time the driver's `libcuda.so.1` is loaded
/// (a machine with a driver often has no unversioned `libcuda.so` to link with).
fn link_dir(lib: &Path, target: &Path) -> Result<PathBuf> {
    let dir = PathBuf::from("target").join("cuda-link");
    std::fs::create_dir_all(&dir)?;
    for (name, versioned) in [
        ("libcublas.so", "libcublas.so.13"),
        ("libcublasLt.so", "libcublasLt.so.13"),
        ("libcudart.so", "libcudart.so.13"),
        ("libnvrtc.so", "libnvrtc.so.13"),
        ("libcurand.so", "libcurand.so.10"),
    ] {
        let to = lib.join(versioned);
        if !to.exists() {
            bail!("{} is missing from the CUDA wheels", to.display());
        }
        let at = dir.join(name);
        let _ = std::fs::remove_file(&at);
        std::os::unix::fs::symlink(&to, &at)?;
    }
    // Every driver function any compiled library calls (cudarc's own, and cudarc code
    // inlined into candle's).
    let deps = target.join("debug").join("deps");
    let rlibs: Vec<PathBuf> = std::fs::read_dir(&deps)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "rlib"))
        .collect();
    if rlibs.is_empty() {
        bail!("no compiled libraries in {}", deps.display());
    }
    let out = Command::new("nm").arg("-u").args(&rlibs).output().context("running nm")?;
    if !out.status.success() {
        bail!("nm failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim());
    }
    let mut symbols: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().last())
        .filter(|s| s.len() > 2 && s.starts_with("cu") && s.as_bytes()[2].is_ascii_uppercase())
        .map(str::to_string)
        .collect();
    symbols.sort();
    symbols.dedup();
    if symbols.is_empty() {
        bail!("nm found no CUDA driver functions in the libraries of {}", deps.display());
    }
    let source = dir.join("libcuda-stub.c");
    let text: String = symbols.iter().map(|s| format!("void {s}(void) {{}}\n")).collect();
    std::fs::write(&source, text)?;
    let stub = dir.join("libcuda.so");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&stub)
        .arg(&source)
        .status()
        .context("running cc for the libcuda stub")?;
    if !status.success() {
        bail!("building the libcuda stub failed ({status})");
    }
    eprintln!("xtask: gpu: linking against a stub libcuda.so ({} driver functions)", symbols.len());
    Ok(dir)
}

/// The first driver release with CUDA 13.0 (the toolkit of [`CUDA_PACKAGES`]).
const MIN_DRIVER: u32 = 580;

/// The driver's major version (`nvidia-smi --query-gpu=driver_version`: `580.159.04`).
fn driver_major() -> Option<u32> {
    let out = Command::new("nvidia-smi")
        .args(["--query-gpu=driver_version", "--format=csv,noheader"])
        .stderr(Stdio::null())
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout).lines().next()?.trim().split('.').next()?.parse().ok()
}

/// The GPUs `nvidia-smi -L` lists, one per line, if it runs and lists any.
fn nvidia_gpus() -> Option<String> {
    let out = Command::new("nvidia-smi").arg("-L").stderr(Stdio::null()).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && text.starts_with("GPU")).then(|| text.replace('\n', "; "))
}
