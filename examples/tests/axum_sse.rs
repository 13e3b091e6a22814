//! `examples/axum_sse.rs` on the real model, against `curl -N` on loopback: the SSE
//! stream of a perpetual generation, and a client that disconnects mid-stream stops
//! the generation (the generator comes back with `Cancelled`, far short of its budget,
//! and serves the next request); while it is lent, another request gets 503.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[allow(dead_code)]
#[path = "../axum_sse.rs"]
mod axum_sse;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use perpetua::generator::FinishReason;

/// HTTP status of a plain `curl` GET.
fn status_of(url: &str) -> String {
    let out =
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", url]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `curl -N URL`: its first `n` `data:` lines; then `while_open` runs with the stream
/// still open, and the client is killed.
fn curl_first_events(url: &str, n: usize, while_open: impl FnOnce()) -> Vec<String> {
    let mut child = Command::new("curl")
        .args(["-N", "-s", url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("curl (the test's HTTP client) runs");
    let mut lines = Vec::new();
    let mut reader = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    while lines.iter().filter(|l: &&String| l.starts_with("data:")).count() < n {
        line.clear();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        lines.push(line.trim_end().to_string());
    }
    while_open();
    child.kill().unwrap();
    child.wait().unwrap();
    lines
}

#[test]
fn a_perpetual_generation_streams_over_sse_and_stops_when_the_client_goes() {
    let (done_tx, done_rx) = mpsc::channel();
    let done_tx = std::sync::Mutex::new(done_tx);
    let state = axum_sse::AppState::new(axum_sse::generator(7).expect("the model loads"), move |g| {
        let _ = done_tx.lock().unwrap().send((g.finish_reason.clone(), g.ids.len()));
    });
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = listener.local_addr().unwrap();
    runtime.spawn(async move { axum::serve(listener, axum_sse::app(state)).await });

    // A budget of 4,000 tokens; the client reads 8 events and goes away.
    let url = format!("http://{addr}/generate?prompt=Tell+me+a+story+about+a+lighthouse&tokens=4000");
    // While it streams, the generator is lent: a second request is refused (503).
    let mut busy = String::new();
    let lines = curl_first_events(&url, 8, || busy = status_of(&format!("http://{addr}/generate?prompt=x")));
    assert_eq!(busy, "503");
    println!("curl -N {url}:\n{}", lines.join("\n"));
    let data: Vec<serde_json::Value> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| serde_json::from_str(d).expect("each event is one JSON object"))
        .collect();
    assert_eq!(data.len(), 8, "{lines:?}");
    assert!(lines.iter().any(|l| l == "event: token"), "{lines:?}");
    let first = data.iter().find(|d| d.get("text").is_some()).expect("a token event");
    assert_eq!(first["index"], 0);

    let (reason, tokens) = done_rx.recv_timeout(Duration::from_secs(60)).expect("the generation ended");
    println!("after the disconnect: {reason:?} after {tokens} tokens");
    assert_eq!(reason, FinishReason::Cancelled);
    assert!((8..200).contains(&tokens), "{tokens} tokens: the generation did not stop with its client");

    // The generator is back: the next request is served to its end.
    let lines = curl_first_events(&format!("http://{addr}/generate?prompt=Hi&tokens=6"), usize::MAX, || ());
    assert!(lines.iter().any(|l| l == "event: finished"), "{lines:?}");
    let (reason, tokens) = done_rx.recv_timeout(Duration::from_secs(60)).unwrap();
    assert_eq!((reason, tokens), (FinishReason::MaxNewTokens, 6));

    // Refusals: a budget out of range.
    assert_eq!(status_of(&format!("http://{addr}/generate?prompt=x&tokens=0")), "400");
}
