//! `cargo xtask gpu [wgpu|cuda]`: build and run the GPU paths a machine without a GPU
//! can.
//!
//! - `wgpu`: burn's `wgpu` backend *runs* on Mesa's software Vulkan (lavapipe): when
//!   `vulkaninfo` finds no device, `apt-get install mesa-vulkan-drivers libvulkan1
//!   vulkan-tools` (as root, or through `sudo -n`); then the burn tests that matter for a
//!   GPU port — logits parity with the candle CPU backend in f32 (`burn_parity`), the
//!   kv-cache conformance kit (`conformance`) and the perpetual real-model test
//!   (`perpetual_burn`) — with `BURN_DEVICE=wgpu`, so every one of them runs its real
//!   WGSL shaders there.
//! - `cuda`: CUDA 13.5's compiler, headers and libraries from PyPI (`nvidia-cuda-nvcc`,
//!   `-crt`, `-runtime`, `nvidia-nvvm`, `-cccl`, `-nvrtc`, `nvidia-cublas`,
//!   `nvidia-curand`) in `target/cuda-venv`; then candle's `cuda` feature (its kernels
//!   compiled to PTX by nvcc) and burn's `cuda` backend are *built* (the libraries: no
//!   binary is linked, as there is no driver library here). `CUDA_COMPUTE_CAP`
//!   (default 90, Hopper) picks the PTX target. burn's needs more than PyPI: its
//!   `cubecl-llvm` build script downloads a prebuilt LLVM from GitHub releases.
//!
//! Without an argument, both. The wgpu tests build in `target/` beside `cargo xtask
//! ci`'s (one more feature set); the CUDA builds in `target/gpu` (candle itself changes).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

/// burn's wgpu backend, added to the tests' feature set (`crate::TEST_FEATURES`): the
/// dependencies shared with `cargo xtask ci` build once (cargo keeps each feature set's
/// artifacts apart).
const WGPU_FEATURES: &str = "perpetua/burn-wgpu,perpetua-burn/wgpu";

/// The CUDA 13.5 pieces from PyPI (each installs under `nvidia/cu13/`).
const CUDA_PACKAGES: &[&str] = &[
    "nvidia-cuda-nvcc==13.5.37",
    "nvidia-cuda-crt==13.5.37",
    "nvidia-cuda-runtime==13.5.37",
    "nvidia-nvvm==13.5.37",
    "nvidia-cuda-cccl==13.3.5.0.6",
    "nvidia-cuda-nvrtc==13.5.37",
    "nvidia-cublas==13.10.0.20",
    "nvidia-curand==10.4.4.72",
];

/// cudarc 0.19's newest CUDA API (its bindings are chosen by version; 13.5 is not
/// listed yet): the driver API of 13.4 is what the 13.5 toolkit provides too.
const CUDARC_VERSION: &str = "13040";

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

fn cargo_in(target: &Path, args: &[&str], envs: &[(&str, String)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    eprintln!("xtask: gpu: cargo {}", args.join(" "));
    let mut cmd = Command::new(&cargo);
    cmd.args(args).env("CARGO_TARGET_DIR", target);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let status = cmd.status().with_context(|| format!("running {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

fn wgpu() -> Result<()> {
    crate::fetch_model()?;
    if vulkan_device().is_none() {
        install_vulkan()?;
    }
    let device = vulkan_device()
        .context("vulkaninfo still lists no Vulkan device after installing Mesa's lavapipe")?;
    eprintln!("xtask: gpu: Vulkan device: {device}");
    let target = PathBuf::from("target");
    let envs = [("BURN_DEVICE", "wgpu".to_string())];
    let features = format!("{},{WGPU_FEATURES}", crate::TEST_FEATURES);
    let mut args = vec!["test", "--workspace", "--features", features.as_str()];
    for test in ["burn_parity", "perpetual_burn", "conformance"] {
        args.extend(["--test", test]);
    }
    args.extend(["--", "--nocapture", "--test-threads", "1"]);
    cargo_in(&target, &args, &envs)
}

/// `target/cuda-venv` with the CUDA pieces; returns the toolkit root (`nvidia/cu13`).
fn cuda_toolkit() -> Result<PathBuf> {
    let venv = PathBuf::from("target").join("cuda-venv");
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
    eprintln!("xtask: gpu: installing the CUDA 13.5 toolkit pieces into {} (pip, ~1.3 GB)", venv.display());
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
    let path = format!("{}:{}", toolkit.join("bin").display(), std::env::var("PATH").unwrap_or_default());
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".to_string());
    let home = toolkit.display().to_string();
    let envs = [
        ("PATH", path),
        ("CUDA_ROOT", home.clone()),
        ("CUDA_PATH", home.clone()),
        ("CUDA_HOME", home),
        ("CUDA_COMPUTE_CAP", cap),
        ("CUDARC_CUDA_VERSION", CUDARC_VERSION.to_string()),
    ];
    let target = PathBuf::from("target").join("gpu");
    cargo_in(&target, &["build", "-p", "perpetua-candle", "--features", "cuda"], &envs)?;
    eprintln!("xtask: gpu: candle's CUDA build finished");
    // burn's CUDA runtime (cubecl-cuda 0.11) pulls cubecl-llvm, whose build script
    // downloads a prebuilt LLVM from GitHub releases: it builds only with that reachable.
    cargo_in(
        &target,
        &["build", "-p", "perpetua-burn", "--no-default-features", "--features", "cuda"],
        &envs,
    )
    .context(
        "burn's `cuda` build failed; on a machine that reaches only package registries this is \
             cubecl-llvm's build script (tracel-llvm-bundler) failing to download LLVM from \
             github.com/tracel-ai/tracel-llvm/releases",
    )?;
    eprintln!("xtask: gpu: the CUDA builds finished (compiled, not linked or run: no GPU here)");
    Ok(())
}
