//! The `perpetua` binary as a user meets it: `--help` lists every flag with
//! its default, and each invalid flag value gives one line naming the flag and its
//! allowed range, a non-zero exit code and no backtrace. Invalid values are rejected
//! before the model is read, so these run without it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn perpetua(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_perpetua"))
        .args(args)
        .env("RUST_BACKTRACE", "1")
        // A model path that does not exist: nothing here may need the model.
        .env("PERPETUA_MODEL_DIR", "/nonexistent/perpetua-cli-test")
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

#[test]
fn generate_help_lists_every_flag_with_its_default() {
    let (code, help, _) = perpetua(&["generate", "--help"]);
    assert_eq!(code, 0);
    for flag in [
        "--model",
        "--temperature",
        "--top-k",
        "--top-p",
        "--min-p",
        "--repetition-penalty",
        "--frequency-penalty",
        "--presence-penalty",
        "--seed",
        "--max-new-tokens",
        "--stop",
        "--preset",
        "--strategy",
        "--mode",
        "--context-window",
        "--backstep",
        "--config",
        "--json",
        "--trace",
        "--remove-invalid-values",
        "--typical",
        "--top-nsigma",
        "--xtc-probability",
        "--xtc-threshold",
        "--dynatemp-range",
        "--dynatemp-exp",
        "--mirostat",
        "--mirostat-lr",
        "--mirostat-ent",
        "--logit-bias",
        "--ignore-eos",
        "--samplers",
        "--ctx-size",
        "--keep",
        "--n ",
        "--max-batch",
        "--n-probs",
    ] {
        assert!(help.contains(flag), "`{flag}` missing from --help:\n{help}");
    }
    for default in ["[default: 42]", "[default: 512]", "[default: none]", "[default: 10]"] {
        assert!(help.contains(default), "`{default}` missing from --help:\n{help}");
    }
}

#[test]
fn invalid_flag_values_give_one_line_naming_the_flag() {
    let cases: [(&[&str], &str); 11] = [
        (&["--mode", "dynamic+sparkle"], "--mode dynamic+sparkle"),
        (&["--mode", "perpetual+window=2"], "`window` = 2"),
        (&["--temperature", "nan"], "`temperature` = NaN: must be finite and >= 0"),
        (&["--temperature", "-1"], "`temperature` = -1"),
        (&["--top-p", "1.5"], "`top_p` = 1.5: must be in (0, 1]"),
        (&["--top-p", "0"], "`top_p` = 0"),
        (&["--min-p", "-1"], "`min_p` = -1: must be in [0, 1]"),
        (&["--repetition-penalty", "0"], "`repetition_penalty` = 0"),
        (&["--strategy", "backstep", "--backstep", "0"], "--backstep 0"),
        (&["--strategy", "dynamic", "--peak-times", "-2"], "--peak-times -2"),
        (&["--config", "/nonexistent/generation_config.json"], "generation_config.json"),
    ];
    for (flags, named) in cases {
        let mut args = vec!["generate"];
        args.extend_from_slice(flags);
        args.push("hello");
        let (code, stdout, stderr) = perpetua(&args);
        assert_eq!(code, 1, "{flags:?}: exit code; stderr: {stderr}");
        assert!(stdout.is_empty(), "{flags:?}: stdout not empty: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert_eq!(lines.len(), 1, "{flags:?}: expected one line, got:\n{stderr}");
        assert!(lines[0].starts_with("perpetua: error: "), "{flags:?}: {stderr}");
        assert!(lines[0].contains(named), "{flags:?}: `{stderr}` does not name `{named}`");
        assert!(!stderr.contains("backtrace") && !stderr.contains("panicked"), "{flags:?}: {stderr}");
    }
}

#[test]
fn unparsable_values_are_clap_errors_naming_the_flag() {
    let (code, _, stderr) = perpetua(&["generate", "--max-new-tokens", "many", "hello"]);
    assert_eq!(code, 2);
    let first = stderr.lines().next().unwrap();
    assert!(first.contains("'many'") && first.contains("--max-new-tokens"), "{stderr}");
    let (code, _, stderr) = perpetua(&["generate", "--strategy", "forever", "hello"]);
    assert_eq!(code, 2);
    assert!(stderr.lines().next().unwrap().contains("forever"), "{stderr}");
}

/// `--model` takes a Hugging Face checkpoint directory too: the tiny random Qwen2 of the
/// model-families tests (weights, `config.json`, `tokenizer.json` with a chat template)
/// generates the requested number of tokens through the whole CLI path.
/// The tiny random Qwen2 checkpoint of the backend tests (a safetensors directory).
const QWEN2: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-candle/tests/data/families/qwen2");

/// `perpetua generate --model QWEN2 --json FLAGS hello`, which must succeed: its report.
fn generate_json(flags: &[&str]) -> serde_json::Value {
    let mut args = vec!["generate", "--model", QWEN2, "--json"];
    args.extend_from_slice(flags);
    args.push("hello");
    let (code, out, err) = perpetua(&args);
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn a_safetensors_directory_runs_as_model() {
    let report = generate_json(&["--max-new-tokens", "12", "--strategy", "suppress", "--seed", "1"]);
    let out = &report;
    assert_eq!(report["ids"].as_array().map(Vec::len), Some(12), "{out}");
    assert_eq!(report["finish_reason"], "MaxNewTokens", "{out}");
}

/// `--json --n-probs N` adds a `tokens` array: every kept token with its raw
/// log-probability and its N most likely alternatives, best first (back steps of
/// `--strategy backstep` drop the tokens they remove: the array matches `ids`).
#[test]
fn n_probs_adds_the_tokens_with_their_alternatives() {
    let report =
        generate_json(&["--max-new-tokens", "10", "--strategy", "backstep", "--seed", "3", "--n-probs", "3"]);
    let out = &report;
    let ids: Vec<u64> = report["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
    let tokens = report["tokens"].as_array().unwrap_or_else(|| panic!("no tokens: {out}"));
    let token_ids: Vec<u64> = tokens.iter().map(|t| t["id"].as_u64().unwrap()).collect();
    assert_eq!(token_ids, ids, "{out}");
    for t in tokens {
        let top: Vec<f64> =
            t["top_logprobs"].as_array().unwrap().iter().map(|a| a["logprob"].as_f64().unwrap()).collect();
        assert_eq!(top.len(), 3, "{t}");
        assert!(top.windows(2).all(|w| w[0] >= w[1]), "best first: {t}");
        let own = t["logprob"].as_f64().unwrap();
        assert!(own <= 0.0 && own <= top[0] + 1e-6, "{t}");
    }
    // Without --n-probs, no array.
    let report = generate_json(&["--max-new-tokens", "3"]);
    assert!(report.get("tokens").is_none(), "{report}");
}

/// `perpetua models inspect` reads a file's headers: the tiny Qwen3 checkpoint directory
/// and its llama.cpp Q8_0 conversion; a file of an unsupported family is refused naming
/// the key.
#[test]
fn models_inspect_shows_the_architecture_or_the_refusal() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-candle/tests/data/families/qwen3");
    let (code, out, err) = perpetua(&["models", "inspect", dir]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("architecture:  qwen3") && out.contains("q/k norms"), "{out}");
    assert!(out.contains("format:        safetensors") && out.contains("F32 ×"), "{out}");
    let gguf = format!("{dir}/model-q8_0.gguf");
    let (code, out, err) = perpetua(&["models", "inspect", &gguf]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("format:        gguf") && out.contains("Q8_0 ×"), "{out}");
    // An edited config naming an architecture we do not run.
    let scratch = std::env::temp_dir().join(format!("perpetua-cli-inspect-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let config =
        std::fs::read_to_string(format!("{dir}/config.json")).unwrap().replace("\"qwen3\"", "\"gemma\"");
    std::fs::write(scratch.join("config.json"), config).unwrap();
    let (code, _, err) = perpetua(&["models", "inspect", scratch.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(err.contains("unsupported architecture `gemma`"), "{err}");
    let _ = std::fs::remove_dir_all(scratch);
}

/// `perpetua models list` shows, for every GGUF file and checkpoint directory in the
/// model directory, its format, architecture, size and tensor types — or why it would
/// be refused.
#[test]
fn models_list_describes_every_file_in_the_model_directory() {
    let families = concat!(env!("CARGO_MANIFEST_DIR"), "/../backend-candle/tests/data/families");
    let scratch = std::env::temp_dir().join(format!("perpetua-cli-list-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(scratch.join("qwen3-dir")).unwrap();
    std::fs::copy(format!("{families}/gemma3/model-q8_0.gguf"), scratch.join("gemma3.gguf")).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(format!("{families}/qwen3/{f}"), scratch.join("qwen3-dir").join(f)).unwrap();
    }
    std::fs::write(scratch.join("broken.gguf"), b"not a gguf").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_perpetua"))
        .args(["models", "list"])
        .env("PERPETUA_MODEL_DIR", &scratch)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success(), "{text}");
    let line =
        |name: &str| text.lines().find(|l| l.trim_start().starts_with(name)).unwrap_or_default().to_string();
    assert!(line("gemma3.gguf").contains("gguf  gemma3") && line("gemma3.gguf").contains("Q8_0 ×"), "{text}");
    assert!(
        line("qwen3-dir").contains("safetensors  qwen3") && line("qwen3-dir").contains("F32 ×"),
        "{text}"
    );
    assert!(line("broken.gguf").contains("refused: malformed GGUF"), "{text}");
    let _ = std::fs::remove_dir_all(scratch);
}

/// One strategy vocabulary: `--strategy` takes every name `eval --strategies`, mode
/// specs and `strategy_by_name` take (before, its own list rejected `post_eos`,
/// `suppress_masked` and each strategy's own name). The `--backstep 0` error proves the
/// name parsed and reached validation.
#[test]
fn strategy_takes_every_name_of_the_shared_vocabulary() {
    for name in ["dynamic", "backstep_with_schedule", "backstep"] {
        let (code, _, stderr) = perpetua(&["generate", "--strategy", name, "--backstep", "0", "hello"]);
        assert_eq!(code, 1, "--strategy {name}: {stderr}");
        assert!(stderr.contains("--backstep 0"), "--strategy {name}: {stderr}");
    }
    for name in ["post_eos", "post-eos", "suppress_masked", "suppress_eos", "plain", "none", "resume_turn"] {
        let (_, _, stderr) = perpetua(&["generate", "--strategy", name, "--temperature", "-1", "hello"]);
        assert!(stderr.contains("`temperature` = -1"), "--strategy {name} did not parse: {stderr}");
    }
}
