//! The CUDA device, run for real: compiled only with `--features cuda`, and then every
//! test here needs an NVIDIA GPU and its driver — without one they FAIL (never skip).
//! `cargo xtask gpu cuda` builds them, and runs them when `nvidia-smi -L` lists a GPU.
//!
//! - Every model family's tiny checkpoint (f32) on CUDA against transformers' logits
//!   with the CPU tests' bound (1e-4): a prefill and 8 decode steps, every position of
//!   one pass, a chunk after earlier positions, a ragged batch of three prefills in one
//!   pass; the kv-cache conformance
//!   kit on a CUDA cache; the Q8_0 conversions within the quantization's error.
//! - SmolLM2 Q4_1 on CUDA, the file's quantization kept (`LoadOptions::on`), against
//!   the CPU on the same file: logits over three prompts and 32 greedy steps each.
//! - Decode and prefill rates on CUDA against the CPU in the same run, single sequence
//!   and a batch of 8; the memory report against what the driver says the process
//!   holds; a perpetual generation through the `Generator` on CUDA.
#![cfg(feature = "cuda")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::OnceLock;
use std::time::Instant;

use common::{
    argmax, decode_diffs, family_dir as dir, family_reference as reference, max_abs_diff, model_path,
};
use perpetua_candle::{Attention, CandleBackendError, Device, KvDtype, Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::testing::ModelHarness;
use perpetua_generator::{ChatMessage, FinishReason, Generator, KvCache, LanguageModel, PerpetualMode};
use perpetua_kv_cache::testing::{ConformanceConfig, run_all};
use perpetua_sampling::Chain;
use perpetua_sampling::processors::TopK;
use perpetua_sampling::samplers::Multinomial;

/// One device for the process: each `Device::new_cuda` would load candle's kernels anew.
fn cuda() -> Device {
    static DEVICE: OnceLock<Device> = OnceLock::new();
    DEVICE
        .get_or_init(|| {
            Device::new_cuda(0).expect("a CUDA device: these tests need an NVIDIA GPU and its driver")
        })
        .clone()
}

const FAMILIES: [&str; 8] =
    ["llama3", "llama-linear", "mistral", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];
const GGUF_FAMILIES: [&str; 7] = ["llama3", "llama-linear", "qwen2", "qwen3", "phi3", "gemma2", "gemma3"];
const TOLERANCE: f32 = 1e-4;

/// The file's weights bit for bit and an f32 cache, on CUDA.
fn exact_on_cuda() -> LoadOptions {
    LoadOptions { kv_dtype: KvDtype::F32, ..LoadOptions::on(cuda()) }
}

/// Every family's checks run before any assertion, so one run reports all of them.
#[test]
fn every_family_on_cuda_matches_transformers() {
    let mut failures = Vec::new();
    let mut check = |what: String, diff: f32, bound: f32| {
        println!("{what}: max |Δlogit| {diff:.2e}");
        if diff.is_nan() || diff > bound {
            failures.push(format!("{what}: {diff} > {bound}"));
        }
    };
    for family in FAMILIES {
        let r = reference(family);
        let model = Llama::load(dir(family), &exact_on_cuda()).unwrap();
        assert!(model.device().is_cuda(), "{family}: loaded on {:?}", model.device());
        let worst = decode_diffs(&model, &r).into_iter().fold(0.0, f32::max);
        check(format!("{family} (cuda, prefill + 8 decode steps)"), worst, TOLERANCE);

        let mut cache = model.new_cache().unwrap();
        let mut out = Vec::new();
        model.forward_all(&r.tokens, &mut cache, &mut out).unwrap();
        check(
            format!("{family} (cuda, all {} positions of one pass)", r.tokens.len()),
            max_abs_diff(&out, &r.full.concat()),
            TOLERANCE,
        );

        // 7 positions, then a chunk of 13 (sliding windows cut across the chunk).
        let mut cache = model.new_cache().unwrap();
        model.forward(&r.tokens[..7], &mut cache, &mut out).unwrap();
        model.forward_all(&r.tokens[7..], &mut cache, &mut out).unwrap();
        check(
            format!("{family} (cuda, 7 positions then a chunk of 13)"),
            max_abs_diff(&out, &r.full[7..].concat()),
            TOLERANCE,
        );

        // Three ragged prefills in one pass: each item's last row against transformers.
        let lens = [3, r.prefill, r.tokens.len()];
        let mut caches: Vec<_> = lens.iter().map(|_| model.new_cache().unwrap()).collect();
        let mut items: Vec<(&[u32], &mut _)> =
            lens.iter().zip(caches.iter_mut()).map(|(&n, c)| (&r.tokens[..n], c)).collect();
        let logits = model.forward_logits_batch(&mut items).map_err(|(_, e)| e).unwrap();
        let rows: Vec<Vec<f32>> = logits.to_vec2().unwrap();
        let worst =
            lens.iter().zip(&rows).map(|(&n, row)| max_abs_diff(row, &r.full[n - 1])).fold(0.0, f32::max);
        check(format!("{family} (cuda, ragged batch of prefills {lens:?})"), worst, TOLERANCE);
        for (&n, cache) in lens.iter().zip(&caches) {
            assert_eq!(cache.seq_len(), n, "{family}");
        }
    }
    for family in GGUF_FAMILIES {
        let r = reference(family);
        let model = Llama::load(dir(family).join("model-f32.gguf"), &exact_on_cuda()).unwrap();
        let worst = decode_diffs(&model, &r).into_iter().fold(0.0, f32::max);
        check(format!("{family} GGUF F32 (cuda)"), worst, TOLERANCE);
        if !family.starts_with("gemma") {
            // As the CPU test: the quantization's error, 6 % of the logits' spread.
            let q8 = Llama::load(dir(family).join("model-q8_0.gguf"), &LoadOptions::on(cuda())).unwrap();
            let worst = decode_diffs(&q8, &r).into_iter().fold(0.0, f32::max);
            let spread = r.logits.iter().flatten().fold(0.0f32, |m, &x| m.max(x.abs()));
            check(
                format!("{family} GGUF Q8_0 (cuda, f16 cache; logits up to {spread:.1})"),
                worst,
                0.06 * spread,
            );
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn the_kv_cache_conformance_kit_passes_on_cuda() {
    for family in ["llama3", "qwen3", "gemma3"] {
        let options = LoadOptions { cache_capacity: Some(64), ..exact_on_cuda() };
        let model = Llama::load(dir(family), &options).unwrap();
        let config = ConformanceConfig {
            truncate_to: 9,
            tokens: reference(family).tokens,
            tolerance: 1e-4,
            small_capacity: 24,
        };
        let report = run_all(&mut ModelHarness(model), &config).unwrap();
        println!("{family} (cuda): conformance kit passed, max |Δlogit| {:.1e}", report.max_abs_diff());
    }
    // The 8-bit cache is CPU-only: asked for on CUDA, a typed refusal at load.
    match Llama::load(dir("llama3"), &LoadOptions { kv_dtype: KvDtype::Q8, ..LoadOptions::on(cuda()) }) {
        Err(CandleBackendError::InvalidParameter { name, .. }) => {
            assert_eq!(name, "kv_dtype");
            println!("a Q8 cache on cuda: refused (InvalidParameter kv_dtype)");
        }
        other => panic!("a Q8 cache on CUDA must be refused, got {:?}", other.map(|_| "a model")),
    }
}

const PROMPTS: [&str; 3] = [
    "The capital of France is",
    "def fibonacci(n):\n    if n < 2:\n        return n",
    "<|im_start|>user\nWrite a haiku about rain, with 3 lines.<|im_end|>\n<|im_start|>assistant\n",
];

/// The rank of token `id` in `logits` (0 = the largest).
fn rank(logits: &[f32], id: u32) -> usize {
    let v = logits[id as usize];
    logits.iter().filter(|&&x| x > v).count()
}

/// SmolLM2's Q4_1 file on CUDA against the same file on the CPU. Both multiply
/// quantized weights, with different kernels (candle's CUDA mat-vec quantizes the
/// activations to Q8_1 like the CPU; its prefill dequantizes to f32 for cuBLAS), so the
/// logits differ by rounding. For scale, the CPU's own default path (Q8_0 re-quantized,
/// fused attention, f16 cache) is compared with the same exact CPU run. Both sides are
/// fed the exact CPU run's greedy token, so one near-tie does not make the rest
/// diverge. Bounds: the greedy token agrees at ≥ 90 % of the positions and the CPU's
/// pick is among CUDA's top 3 everywhere.
#[test]
fn smollm2_on_cuda_matches_the_cpu_on_the_same_file() {
    let path = model_path();
    let tok = LlamaTokenizer::from_gguf(&path).unwrap();
    let exact =
        Llama::load(&path, &LoadOptions { cache_capacity: Some(512), ..LoadOptions::exact() }).unwrap();
    let others = [
        ("cuda", Llama::load(&path, &LoadOptions { cache_capacity: Some(512), ..exact_on_cuda() }).unwrap()),
        (
            "cpu default",
            Llama::load(&path, &LoadOptions { cache_capacity: Some(512), ..LoadOptions::default() }).unwrap(),
        ),
    ];
    // Per other: (max |Δ|, greedy agreements, worst rank of the exact pick).
    let mut stats = [(0.0f32, 0usize, 0usize); 2];
    let mut total = 0;
    for prompt in PROMPTS {
        let ids = tok.encode_ids(prompt, false).unwrap();
        let mut ec = exact.new_cache().unwrap();
        let mut el = Vec::new();
        exact.forward(&ids, &mut ec, &mut el).unwrap();
        let mut caches: Vec<_> = others.iter().map(|(_, m)| m.new_cache().unwrap()).collect();
        let mut logits: Vec<Vec<f32>> = vec![Vec::new(); others.len()];
        for (((_, m), c), l) in others.iter().zip(&mut caches).zip(&mut logits) {
            m.forward(&ids, c, l).unwrap();
        }
        for _ in 0..32 {
            let next = argmax(&el);
            for (l, st) in logits.iter().zip(&mut stats) {
                st.0 = st.0.max(max_abs_diff(&el, l));
                st.1 += usize::from(argmax(l) == next);
                st.2 = st.2.max(rank(l, next));
            }
            total += 1;
            exact.forward(&[next], &mut ec, &mut el).unwrap();
            for (((_, m), c), l) in others.iter().zip(&mut caches).zip(&mut logits) {
                m.forward(&[next], c, l).unwrap();
            }
        }
        assert!(caches.iter().all(|c| c.seq_len() == ec.seq_len()));
    }
    for ((name, _), (worst, agree, worst_rank)) in others.iter().zip(stats) {
        println!(
            "SmolLM2 Q4_1, {name} vs the exact CPU run (3 prompts, prefill + 32 steps each): greedy token agrees at \
             {agree}/{total} positions, the exact pick at worst rank {worst_rank}, max |Δlogit| {worst:.3}"
        );
    }
    let (worst, agree, worst_rank) = stats[0];
    assert!(!worst.is_nan());
    assert!(agree * 100 >= total * 90, "greedy agreement {agree}/{total}");
    assert!(worst_rank <= 2, "the CPU's greedy token ranks {worst_rank} on CUDA");
}

/// MiB of GPU memory the driver says this process holds (`nvidia-smi`), if it says.
fn process_gpu_mib() -> Option<u64> {
    let out = std::process::Command::new("nvidia-smi")
        .args(["--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"])
        .output()
        .ok()?;
    let me = std::process::id().to_string();
    String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
        let (pid, mib) = l.split_once(',')?;
        (pid.trim() == me).then(|| mib.trim().parse().ok()).flatten()
    })
}

/// Prefill `prompt`, then `steps` greedy decode steps (logits to the host each step, as
/// generation does). Returns (prefill tok/s, decode tok/s).
fn rates(model: &Llama, prompt: &[u32], steps: usize) -> (f64, f64) {
    let mut cache = model.new_cache().unwrap();
    let mut out = Vec::new();
    let t = Instant::now();
    model.forward(prompt, &mut cache, &mut out).unwrap();
    let prefill = prompt.len() as f64 / t.elapsed().as_secs_f64();
    let t = Instant::now();
    for _ in 0..steps {
        let next = argmax(&out);
        model.forward(&[next], &mut cache, &mut out).unwrap();
    }
    (prefill, steps as f64 / t.elapsed().as_secs_f64())
}

/// `width` sequences (ragged prompts) decoding `steps` greedy steps together, one
/// batched pass per step: aggregate decode tok/s.
fn batch_rate(model: &Llama, prompts: &[Vec<u32>], steps: usize) -> f64 {
    let mut caches: Vec<_> = prompts.iter().map(|_| model.new_cache().unwrap()).collect();
    let mut next: Vec<u32> = prompts
        .iter()
        .zip(caches.iter_mut())
        .map(|(p, c)| {
            let mut out = Vec::new();
            model.forward(p, c, &mut out).unwrap();
            argmax(&out)
        })
        .collect();
    let t = Instant::now();
    for _ in 0..steps {
        let tokens: Vec<[u32; 1]> = next.iter().map(|&t| [t]).collect();
        let mut items: Vec<(&[u32], &mut _)> =
            tokens.iter().zip(caches.iter_mut()).map(|(t, c)| (&t[..], c)).collect();
        let logits: Vec<Vec<f32>> =
            model.forward_logits_batch(&mut items).map_err(|(_, e)| e).unwrap().to_vec2().unwrap();
        next = logits.iter().map(|row| argmax(row)).collect();
    }
    (prompts.len() * steps) as f64 / t.elapsed().as_secs_f64()
}

/// Rates are printed, never asserted (CUDA against the CPU of the same machine, same
/// run); what is asserted is that the runs complete on the device.
#[test]
fn smollm2_rates_and_memory_on_cuda_against_the_cpu() {
    let path = model_path();
    let tok = LlamaTokenizer::from_gguf(&path).unwrap();
    let dev = cuda();
    let context = process_gpu_mib();
    let gpu =
        Llama::load(&path, &LoadOptions { cache_capacity: Some(2048), ..LoadOptions::on(dev) }).unwrap();
    let loaded = process_gpu_mib();
    let cpu =
        Llama::load(&path, &LoadOptions { cache_capacity: Some(2048), ..LoadOptions::default() }).unwrap();
    let text = "The history of the printing press begins in the fifteenth century, when ".repeat(20);
    let long = tok.encode_ids(&text, false).unwrap();
    let short = tok.encode_ids(PROMPTS[0], false).unwrap();
    rates(&gpu, &short, 8); // warm-up: module loading, cuBLAS handles
    rates(&cpu, &short, 4);
    let (gpu_prefill, _) = rates(&gpu, &long, 0);
    let (cpu_prefill, _) = rates(&cpu, &long, 0);
    let (_, gpu_decode) = rates(&gpu, &short, 256);
    let (_, cpu_decode) = rates(&cpu, &short, 64);
    // The same run with the per-head, per-position reference attention (the default
    // on CUDA before `Attention::Batched`).
    let reference = Llama::load(
        &path,
        &LoadOptions {
            cache_capacity: Some(2048),
            attention: Attention::Reference,
            ..LoadOptions::on(cuda())
        },
    )
    .unwrap();
    rates(&reference, &short, 8);
    let (ref_prefill, _) = rates(&reference, &long, 0);
    let (_, ref_decode) = rates(&reference, &short, 128);
    println!(
        "cuda, reference attention: prefill {ref_prefill:.0} tok/s, decode {ref_decode:.1} tok/s; batched attention \
         {:.1}x prefill, {:.2}x decode",
        gpu_prefill / ref_prefill,
        gpu_decode / ref_decode
    );
    drop(reference);
    let threads = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "prefill ({} tokens): cuda {gpu_prefill:.0} tok/s, cpu ({threads} threads) {cpu_prefill:.0} tok/s: {:.1}x",
        long.len(),
        gpu_prefill / cpu_prefill
    );
    println!(
        "decode (greedy, logits to the host each step): cuda {gpu_decode:.1} tok/s (256 steps), cpu {cpu_decode:.1} tok/s (64 steps): {:.2}x",
        gpu_decode / cpu_decode
    );

    assert!(long.len() >= 174, "{} prompt tokens", long.len());
    let ragged: Vec<Vec<u32>> = (0..8).map(|i| long[..20 + 22 * i].to_vec()).collect();
    let one = batch_rate(&gpu, &ragged[..1], 128);
    let eight = batch_rate(&gpu, &ragged, 128);
    let cpu_eight = batch_rate(&cpu, &ragged, 16);
    println!(
        "batched decode (ragged 20-174-token prompts, 128 steps): cuda batch 1 {one:.1} tok/s, batch 8 {eight:.1} tok/s \
         ({:.2}x); cpu batch 8 {cpu_eight:.1} tok/s (16 steps)",
        eight / one
    );

    let report = gpu.memory_report();
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("memory report (cuda): {report}");
    let after = process_gpu_mib();
    match (context, loaded, after) {
        (Some(c), Some(l), Some(a)) => println!(
            "driver: process holds {c} MiB before the load, {l} MiB after it ({} MiB for the model — when this \
             test runs alone in its process; the report says {:.1} MiB), {a} MiB after the runs (caches of 8 \
             sequences freed or pooled; one sequence's 2,048-position cache: {:.1} MiB)",
            l.saturating_sub(c),
            mib(report.model_bytes()),
            mib(report.with_cache(2048) - report.model_bytes()),
        ),
        other => println!("driver: nvidia-smi gave no per-process figure ({other:?})"),
    }
    assert!(gpu_decode > 0.0 && eight > 0.0);
}

/// A perpetual generation (method 4: back steps at EOS with the temperature schedule)
/// through the `Generator` on CUDA: 256 tokens, no EOS among them.
#[test]
fn a_perpetual_generation_runs_on_cuda() {
    let path = model_path();
    let tok = LlamaTokenizer::from_gguf(&path).unwrap();
    let model =
        Llama::load(&path, &LoadOptions { cache_capacity: Some(1024), ..LoadOptions::on(cuda()) }).unwrap();
    let mut generator = Generator::builder(model)
        .tokenizer(tok)
        .chain(Chain::new(Multinomial).with(TopK::new(20).unwrap()))
        .perpetual(PerpetualMode::parse("dynamic").unwrap())
        .max_new_tokens(256)
        .seed(7)
        .build()
        .unwrap();
    let eos = generator.eos_ids().to_vec();
    let out = generator
        .generate(vec![ChatMessage::user("Write a short story about a lighthouse keeper.")])
        .unwrap();
    let c = &out.counts;
    println!(
        "perpetual on cuda: {} tokens ({:?}), {} EOS avoided, {} back steps, {} loop back steps, {} tokens \
         regenerated, decode {:.1} tok/s\n{}",
        out.ids.len(),
        out.finish_reason,
        c.eos_avoided,
        c.backsteps,
        c.loop_backsteps,
        c.tokens_removed,
        out.decode_tokens_per_second(),
        out.text
    );
    assert_eq!(out.ids.len(), 256);
    assert_eq!(out.finish_reason, FinishReason::MaxNewTokens);
    assert!(out.ids.iter().all(|id| !eos.contains(id)), "an EOS id in the output");
}
