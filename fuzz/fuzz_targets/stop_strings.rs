//! The stop-string matcher on arbitrary stop strings and streamed text pieces.
//! Invariants: no panic; `find` reports exactly the earliest occurrence (ties to the
//! first-listed string) of any stop string, as a naive search of the whole text does,
//! at the first call where one exists; `held_back` is a char boundary and a proper
//! prefix of some stop string.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use perpetua_generator::StopStrings;

fn naive(stops: &[String], text: &str) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize)> = None;
    for (k, s) in stops.iter().enumerate() {
        if let Some(start) = text.find(s.as_str()) {
            if best.is_none_or(|(b, _)| start < b) {
                best = Some((start, k));
            }
        }
    }
    best
}

fn run(u: &mut Unstructured<'_>) -> arbitrary::Result<()> {
    // Small alphabets make matches likely; one string in four is arbitrary Unicode.
    let alphabet = ["a", "b", "é", "\n", "🙂", " "];
    let mut piece = |u: &mut Unstructured<'_>| -> arbitrary::Result<String> {
        if u.ratio(1, 4)? {
            return String::arbitrary(u);
        }
        let n = u.int_in_range(0..=5u8)?;
        let mut s = String::new();
        for _ in 0..n {
            s.push_str(alphabet[usize::from(u.int_in_range(0..=5u8)?)]);
        }
        Ok(s)
    };
    let mut stops = Vec::new();
    for _ in 0..u.int_in_range(0..=4u8)? {
        stops.push(piece(u)?);
    }
    let Ok(matcher) = StopStrings::new(stops.clone()) else {
        assert!(stops.iter().any(String::is_empty), "only empty stop strings are rejected: {stops:?}");
        return Ok(());
    };
    let mut text = String::new();
    let mut searched = 0;
    for _ in 0..u.int_in_range(0..=12u8)? {
        text.push_str(&piece(u)?);
        let found = matcher.find(&text, searched);
        assert_eq!(found, naive(&stops, &text), "text {text:?}, stops {stops:?}, searched {searched}");
        if found.is_some() {
            return Ok(());
        }
        let held = matcher.held_back(&text);
        assert!(held < text.len() + 1 && text.is_char_boundary(text.len() - held));
        if held > 0 {
            let tail = &text[text.len() - held..];
            assert!(stops.iter().any(|s| s.len() > held && s.starts_with(tail)), "held {tail:?} for {stops:?}");
        }
        searched = text.len();
    }
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let _ = run(&mut Unstructured::new(data));
});
