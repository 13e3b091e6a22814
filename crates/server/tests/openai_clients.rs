//! `perpetua-server` with real clients on a free loopback port: `curl` and the official
//! `openai` Python package (in `target/openai-venv`, made by `cargo xtask ci`) against
//! the real SmolLM2 — chat and completions, streamed and not, `n = 2`, `stop`, seed
//! reproducibility, a perpetual request reaching `max_tokens` without EOS, malformed
//! and unknown-field bodies, a wrong API key, a client that disconnects mid-stream
//! (its generation stops: the server's counters say so). On a slowed fake model: a
//! full queue is answered 503 in OpenAI's error shape.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use perpetua_candle::{Llama, LlamaTokenizer, LoadOptions};
use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_generator::{Generator, Tokenizer};
use perpetua_server::{Server, ServerConfig, StatsSnapshot};
use serde_json::Value;

const KEY: &str = "sk-test-key";
const MODEL: &str = "smollm2";

/// Serve `server` on a free loopback port from a runtime on its own thread.
fn spawn(server: Server) -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            server.serve(listener).await.unwrap();
        });
    });
    addr
}

/// `curl -s` with `args`; returns (HTTP status, body).
fn curl(args: &[&str]) -> (u16, String) {
    let out = Command::new("curl")
        .args(["-s", "--max-time", "120", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("curl must be installed (Debian: apt install curl)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.trim().parse().unwrap(), body.to_string())
}

fn post(addr: SocketAddr, path: &str, key: &str, body: &str) -> (u16, String) {
    let url = format!("http://{addr}{path}");
    let auth = format!("Authorization: Bearer {key}");
    curl(&["-N", "-H", &auth, "-H", "Content-Type: application/json", "-d", body, &url])
}

fn stats(addr: SocketAddr) -> StatsSnapshot {
    let (status, body) =
        curl(&["-H", &format!("Authorization: Bearer {KEY}"), &format!("http://{addr}/stats")]);
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn error_of(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
    v["error"].clone()
}

fn venv_python() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let python = root.join("target/openai-venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: `cargo xtask ci` creates it (pip install openai)",
        python.display()
    );
    python
}

#[test]
fn real_clients_against_the_real_model() {
    let path = perpetua_candle::default_model_path().unwrap();
    assert!(path.exists(), "run `cargo xtask fetch-model` first");
    let model = Llama::load(&path, &LoadOptions::default()).unwrap();
    let tokenizer = LlamaTokenizer::from_gguf(&path).unwrap();
    let generator = Generator::builder(model).tokenizer(tokenizer.clone()).max_batch(4).build().unwrap();
    let server = Server::start(generator, tokenizer, ServerConfig::new(MODEL).api_key(KEY)).unwrap();
    let addr = spawn(server);

    // curl: health without a key; models and completions with it.
    let (status, body) = curl(&[&format!("http://{addr}/health")]);
    assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        KEY,
        r#"{"messages":[{"role":"user","content":"Hi"}],"max_tokens":6,"seed":1}"#,
    );
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 6);

    // curl -N: a streamed completion is SSE `data:` lines ending with [DONE].
    let (status, body) =
        post(addr, "/v1/completions", KEY, r#"{"prompt":"The sea","max_tokens":5,"seed":2,"stream":true}"#);
    assert_eq!(status, 200, "{body}");
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"), "{body}");
    assert_eq!(chunks.iter().filter(|c| !c["choices"][0]["finish_reason"].is_null()).count(), 1);

    // Errors, in OpenAI's shape.
    let (status, body) = post(addr, "/v1/chat/completions", KEY, r#"{"messages": [ "#);
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_of(&body)["type"], "invalid_request_error");
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        KEY,
        r#"{"messages":[{"role":"user","content":"Hi"}],"temprature":0.5}"#,
    );
    assert_eq!((status, error_of(&body)["param"].as_str()), (400, Some("temprature")), "{body}");
    let (status, body) = post(
        addr,
        "/v1/chat/completions",
        KEY,
        r#"{"messages":[{"role":"user","content":"Hi"}],"top_p":1.5}"#,
    );
    assert_eq!((status, error_of(&body)["param"].as_str()), (400, Some("top_p")), "{body}");
    let (status, body) =
        post(addr, "/v1/chat/completions", "wrong", r#"{"messages":[{"role":"user","content":"Hi"}]}"#);
    assert_eq!((status, error_of(&body)["code"].as_str()), (401, Some("invalid_api_key")), "{body}");

    // The official Python client.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/openai_client.py");
    let out = Command::new(venv_python())
        .arg(&script)
        .args([format!("http://{addr}/v1"), KEY.to_string(), MODEL.to_string()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "openai client failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["perpetual_tokens"], 48, "{summary}");
    eprintln!("openai client: {summary}");

    // A client that goes away mid-stream: its generation stops.
    let before = stats(addr);
    let body = r#"{"messages":[{"role":"user","content":"Write a long story."}],"max_tokens":4000,"stream":true,"perpetual":true,"seed":3}"#;
    let mut stream = TcpStream::connect(addr).unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0_u8; 4096];
    // Read until the first content chunk (after the perpetual holdback), then hang up.
    while !String::from_utf8_lossy(&seen).contains("\"content\"") {
        let n = stream.read(&mut buf).unwrap();
        assert!(n > 0, "the server closed the stream: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&buf[..n]);
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let s = stats(addr);
        if s.cancelled > before.cancelled && s.running == 0 {
            break s;
        }
        assert!(Instant::now() < deadline, "the generation did not stop after the disconnect: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let generated = after.tokens - before.tokens;
    assert!(generated < 1000, "{generated} tokens generated for a client that left: {after:?}");
    eprintln!("disconnect: cancelled after {generated} tokens; stats {after:?}");
}

#[test]
fn a_full_queue_is_answered_503_and_disconnects_free_it() {
    let model = FakeModel::new(ByteTokenizer::VOCAB_SIZE)
        .with_eos(ByteTokenizer::EOS)
        .with_forward_delay(Duration::from_millis(20));
    assert!(ByteTokenizer::new().eos_ids().contains(&ByteTokenizer::EOS));
    let generator = Generator::builder(model).tokenizer(ByteTokenizer::new()).max_batch(1).build().unwrap();
    let config = ServerConfig::new("fake").max_queue(1).max_body_bytes(4096);
    let server = Server::start(generator, ByteTokenizer::new(), config).unwrap();
    let addr = spawn(server);
    // A body over the limit: 413, in OpenAI's shape.
    let big = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(8192));
    let (status, text) =
        curl(&["-H", "Content-Type: application/json", "-d", &big, &format!("http://{addr}/v1/completions")]);
    assert_eq!((status, error_of(&text)["type"].as_str()), (413, Some("invalid_request_error")), "{text}");
    let body = r#"{"prompt":"abc","max_tokens":2000,"ignore_eos":true,"stream":true}"#;
    // One runs (the batch is 1 wide), one waits, the third finds the queue full.
    let start = || {
        Command::new("curl")
            .args(["-s", "-N", "-o", "/dev/null", "-H", "Content-Type: application/json", "-d", body])
            .arg(format!("http://{addr}/v1/completions"))
            .spawn()
            .unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let wait_for = |what: &dyn Fn(&StatsSnapshot) -> bool| loop {
        let s = stats(addr);
        if what(&s) {
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut clients = vec![start()];
    wait_for(&|s| s.running == 1);
    clients.push(start());
    wait_for(&|s| s.queued == 1);
    let (status, text) =
        curl(&["-H", "Content-Type: application/json", "-d", body, &format!("http://{addr}/v1/completions")]);
    assert_eq!((status, error_of(&text)["type"].as_str()), (503, Some("server_busy")), "{text}");
    for c in &mut clients {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    wait_for(&|s| s.running == 0 && s.queued == 0 && s.cancelled == 2);
    let s = stats(addr);
    assert_eq!((s.rejected, s.cancelled, s.completed), (1, 2, 0), "{s:?}");
}
