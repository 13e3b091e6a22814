//! Trace export, block statistics, metrics and evaluation on hand-computed cases and the
//! fake model; chart files decoded back (PNG header and size, SVG parsed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use perpetua_analysis::blocks::{block_means, blocks_before_eos};
use perpetua_analysis::eval::{EvalConfig, run_eval};
use perpetua_analysis::metrics::mean_logprob;
use perpetua_analysis::{AnalysisError, TraceRow, trace};
use perpetua_generator::Generator;
use perpetua_generator::testing::{ByteTokenizer, FakeModel};
use perpetua_perpetual::Backstep;

fn row(position: usize, index: usize, p_eos: f64, event: &str) -> TraceRow {
    TraceRow {
        position,
        index,
        token_id: 65,
        text: "A".into(),
        p_eos,
        eos_information_bits: -p_eos.log2(),
        entropy: 2.0 - p_eos,
        varentropy: 1.0 - p_eos,
        chosen_prob: 0.5,
        temperature: 1.0,
        event: event.into(),
        top: "65:5.0e-1;10:2.5e-1".into(),
    }
}

#[test]
fn csv_and_json_round_trip_awkward_text() {
    let mut rows: Vec<TraceRow> = (0..4).map(|i| row(i, i, 0.1 * i as f64 + 0.05, "token")).collect();
    rows[1].text = "a, \"quoted\"\nline".into();
    rows[2].text = "😀 ünïcode\t".into();
    rows[3].event = "backstep:3".into();
    let mut csv = Vec::new();
    trace::write_csv(&rows, &mut csv).unwrap();
    assert_eq!(trace::read_csv(csv.as_slice()).unwrap(), rows);
    let header = String::from_utf8(csv).unwrap();
    assert!(header.starts_with(
        "position,index,token_id,text,p_eos,eos_information_bits,entropy,varentropy,chosen_prob,temperature,event,top\n"
    ));
    let mut json = Vec::new();
    trace::write_json(&rows, &mut json).unwrap();
    assert_eq!(trace::read_json(json.as_slice()).unwrap(), rows);
    assert_eq!(rows[0].top_candidates(), vec![(65, 0.5), (10, 0.25)]);
}

#[test]
fn malformed_csv_is_a_typed_error() {
    let err = trace::read_csv("position,index\nnot-a-number,1\n".as_bytes()).unwrap_err();
    assert!(matches!(err, AnalysisError::Csv(_)), "{err}");
}

#[test]
fn block_means_are_hand_computed() {
    // p_eos 0.05, 0.15, 0.25, 0.35, 0.45 in blocks of 2: means 0.1, 0.3, 0.45 (last block short).
    let rows: Vec<TraceRow> = (0..5).map(|i| row(i, i, 0.1 * i as f64 + 0.05, "token")).collect();
    let blocks = block_means(&rows, 2).unwrap();
    let means: Vec<f64> = blocks.iter().map(|b| b.p_eos).collect();
    for (got, want) in means.iter().zip([0.1, 0.3, 0.45]) {
        assert!((got - want).abs() < 1e-12, "{means:?}");
    }
    assert_eq!(blocks.iter().map(|b| b.n).collect::<Vec<_>>(), vec![2, 2, 1]);
    // entropy = 2 − p_eos, so block 0's mean entropy is 1.9.
    assert!((blocks[0].entropy - 1.9).abs() < 1e-12);
    // Information content of block 0: mean of −log2 0.05 and −log2 0.15.
    let want = (-(0.05f64).log2() - (0.15f64).log2()) / 2.0;
    assert!((blocks[0].eos_information_bits - want).abs() < 1e-12);
    assert!(matches!(block_means(&rows, 0), Err(AnalysisError::InvalidParameter { name: "block size", .. })));
}

#[test]
fn infinite_information_content_is_left_out_of_the_mean() {
    let mut rows = vec![row(0, 0, 0.5, "token"), row(1, 1, 0.25, "token")];
    rows[0].p_eos = 0.0;
    rows[0].eos_information_bits = f64::INFINITY;
    let b = &block_means(&rows, 2).unwrap()[0];
    assert_eq!(b.eos_information_bits, 2.0);
    assert_eq!(b.n, 2);
    assert!((b.p_eos - 0.125).abs() < 1e-12);
}

#[test]
fn blocks_before_eos_align_on_events_and_do_not_mix_histories() {
    // Event 1 at row 5 (p_eos rising 0.0 .. 0.5), event 2 at row 8 after 2 tokens.
    let mut rows: Vec<TraceRow> = (0..6).map(|i| row(i, i, 0.1 * i as f64, "token")).collect();
    rows[5].event = "eos_avoided".into();
    rows.extend((6..9).map(|i| row(i, i, 0.9, "token")));
    rows[8].event = "eos".into();
    let blocks = blocks_before_eos(&rows, 2, 3).unwrap();
    assert_eq!(blocks.iter().map(|b| b.block).collect::<Vec<_>>(), vec![-3, -2, -1]);
    // Block −1: rows 4, 5 of event 1 (0.4, 0.5) and rows 7, 8 of event 2 (0.9, 0.9).
    assert_eq!(blocks[2].n, 4);
    assert!((blocks[2].p_eos - (0.4 + 0.5 + 0.9 + 0.9) / 4.0).abs() < 1e-12);
    // Block −2: rows 2, 3 of event 1, and only row 6 of event 2 (row 5 is event 1's).
    assert_eq!(blocks[1].n, 3);
    assert!((blocks[1].p_eos - (0.2 + 0.3 + 0.9) / 3.0).abs() < 1e-12);
    // Block −3: rows 0, 1 of event 1 only.
    assert_eq!(blocks[0].n, 2);
    assert!(blocks_before_eos(&rows[..4], 2, 3).unwrap().is_empty());
}

#[test]
fn mean_logprob_counts_only_surviving_tokens() {
    // Indices 0,1,2 written with p = 0.5; an EOS at index 3 backsteps 2 (removes 1, 2);
    // indices 1, 2 rewritten with p = 0.25.
    let mut rows = vec![row(0, 0, 0.1, "token"), row(1, 1, 0.1, "token"), row(2, 2, 0.1, "token")];
    rows.push(row(3, 3, 0.1, "backstep:2"));
    rows.push(TraceRow { chosen_prob: 0.25, ..row(4, 1, 0.1, "token") });
    rows.push(TraceRow { chosen_prob: 0.25, ..row(5, 2, 0.1, "token") });
    let want = (0.5f64.ln() + 2.0 * 0.25f64.ln()) / 3.0;
    assert!((mean_logprob(&rows).unwrap() - want).abs() < 1e-12);
    assert_eq!(mean_logprob(&[]), None);
}

fn fake() -> FakeModel {
    FakeModel::new(ByteTokenizer::VOCAB_SIZE).with_eos(ByteTokenizer::EOS)
}

#[test]
fn generator_trace_rows_match_the_generation() {
    let model = fake().force_eos_at(30);
    let mut generator = Generator::builder(model)
        .tokenizer(ByteTokenizer::new())
        .eos_strategy(Backstep::new(4).unwrap())
        .max_new_tokens(60)
        .seed(3)
        .trace(true)
        .build()
        .unwrap();
    let prompt = "Once upon a time";
    let out = generator.generate(prompt).unwrap();
    let tok = ByteTokenizer::new();
    let rows = trace::rows_from_generation(&out, Some(&tok)).unwrap();
    assert_eq!(rows.len(), out.counts.forward_passes);
    assert!(out.counts.backsteps >= 1);
    assert!(rows.iter().any(|r| r.event.starts_with("backstep:")));
    for r in &rows {
        let top = r.top_candidates();
        assert_eq!(top.len(), perpetua_generator::TRACE_TOP);
        assert!(top.windows(2).all(|w| w[0].1 >= w[1].1), "top not sorted: {top:?}");
        assert!((0.0..=1.0).contains(&r.p_eos) && r.entropy >= 0.0 && r.varentropy >= 0.0);
        if !r.is_eos_event() {
            let bytes = perpetua_generator::Tokenizer::token_bytes(&tok, r.token_id).unwrap();
            assert_eq!(r.text, String::from_utf8_lossy(&bytes));
        }
    }
    // The surviving rows spell the output.
    let mut last = std::collections::BTreeMap::new();
    for r in &rows {
        match r.event.as_str() {
            "token" | "eos_avoided" => {
                last.insert(r.index, r.token_id);
            }
            e if e.starts_with("backstep:") => {
                let removed: usize = e["backstep:".len()..].parse().unwrap();
                last.retain(|&i, _| i < r.index - removed);
            }
            _ => {}
        }
    }
    assert_eq!(last.into_values().collect::<Vec<_>>(), out.ids);
    let no_trace = Generator::builder(fake()).max_new_tokens(3).build().unwrap().generate([1u32, 2]).unwrap();
    assert!(matches!(trace::rows_from_generation(&no_trace, None), Err(AnalysisError::NoTrace)));
}

#[test]
fn eval_runs_every_combination_and_aggregates() {
    let model = fake().with_eos_bias(4.0);
    let mut generator = Generator::builder(model).tokenizer(ByteTokenizer::new()).build().unwrap();
    let config = EvalConfig {
        prompts: vec!["Once".into(), "Twice".into(), "Thrice".into()],
        strategies: vec!["plain".into(), "suppress_eos".into(), "backstep".into()],
        seeds: vec![1, 2],
        max_new_tokens: 50,
        ..EvalConfig::default()
    };
    let mut seen = 0;
    let report = run_eval(&mut generator, &config, &mut |p| {
        seen += 1;
        assert_eq!((p.done, p.total), (seen, 18));
    })
    .unwrap();
    assert_eq!(report.runs.len(), 18);
    let plain = &report.summaries[0];
    let suppress = &report.summaries[1];
    assert_eq!(plain.strategy, "plain");
    // With a strong EOS bias, plain generation stops early; suppression reaches the budget.
    assert!(plain.mean_new_tokens < 50.0, "{plain:?}");
    assert_eq!(suppress.reached_budget, 1.0);
    assert!(suppress.mean_interventions >= 1.0);
    for r in &report.runs {
        assert!(r.new_tokens <= 50);
        assert_eq!(r.reached_budget, r.new_tokens == 50 && r.finish_reason == "MaxNewTokens");
    }
    let table = report.markdown_table();
    assert_eq!(table.lines().count(), 2 + 3);
    let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 18);

    let bad = EvalConfig { strategies: vec!["nope".into()], ..config.clone() };
    assert!(matches!(
        run_eval(&mut generator, &bad, &mut |_| {}),
        Err(AnalysisError::InvalidParameter { name: "strategy", .. })
    ));
    let empty = EvalConfig { max_new_tokens: 0, ..config };
    assert!(run_eval(&mut generator, &empty, &mut |_| {}).is_err());
}

#[cfg(feature = "plots")]
mod plots {
    use super::*;
    use perpetua_analysis::eval::summarize;
    use perpetua_analysis::plot::{before_eos_figure, blocks_figure, comparison_figure};

    fn check_png(path: &std::path::Path, width: u32, height: u32) {
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
        let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut reader = decoder.read_info().unwrap();
        let mut buf = vec![0; reader.output_buffer_size()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!((info.width, info.height), (width, height));
        // Not a blank canvas: more than one colour.
        assert!(buf.iter().any(|&b| b != buf[0]));
    }

    fn check_svg(path: &std::path::Path, must_contain: &str) {
        let text = std::fs::read_to_string(path).unwrap();
        let doc = roxmltree::Document::parse(&text).unwrap();
        assert_eq!(doc.root_element().tag_name().name(), "svg");
        let texts: Vec<&str> = doc.descendants().filter_map(|n| n.text()).collect();
        assert!(texts.iter().any(|t| t.contains(must_contain)), "{must_contain:?} not in {texts:?}");
    }

    #[test]
    fn charts_are_valid_png_and_svg() {
        let dir = std::env::temp_dir().join(format!("perpetua-analysis-plots-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut rows: Vec<TraceRow> = (0..60).map(|i| row(i, i, 0.01 * i as f64 + 0.001, "token")).collect();
        rows[59].event = "eos".into();
        rows[59].token_id = 0;
        rows[59].top = "0:3.0e-1;10:2.5e-1;65:1.0e-1".into();
        rows[40].token_id = 10;
        rows[40].text = "\n".into();
        let blocks = blocks_before_eos(&rows, 10, 6).unwrap();
        for ext in ["png", "svg"] {
            let p = dir.join(format!("blocks.{ext}"));
            blocks_figure(&blocks, "SmolLM2 blocks", &p).unwrap();
            let q = dir.join(format!("before.{ext}"));
            before_eos_figure(&rows, 59, 30, 3, &q).unwrap();
            if ext == "png" {
                check_png(&p, 1100, 820);
                check_png(&q, 1000, 560);
            } else {
                check_svg(&p, "varentropy");
                check_svg(&q, "EOS");
            }
        }
        let runs = vec![];
        assert!(comparison_figure(&summarize(&["plain".into()], &runs), &dir.join("c.png")).is_err());
        let model = fake().with_eos_bias(3.0);
        let mut generator = Generator::builder(model).tokenizer(ByteTokenizer::new()).build().unwrap();
        let config = EvalConfig {
            prompts: vec!["Once".into()],
            strategies: vec!["plain".into(), "suppress_eos".into()],
            seeds: vec![1],
            max_new_tokens: 20,
            ..EvalConfig::default()
        };
        let report = run_eval(&mut generator, &config, &mut |_| {}).unwrap();
        comparison_figure(&report.summaries, &dir.join("compare.png")).unwrap();
        check_png(&dir.join("compare.png"), 1200, 860);
        comparison_figure(&report.summaries, &dir.join("compare.svg")).unwrap();
        check_svg(&dir.join("compare.svg"), "suppress eos");
        assert!(matches!(
            blocks_figure(&blocks, "x", &dir.join("x.jpg")),
            Err(AnalysisError::InvalidParameter { name: "plot path", .. })
        ));
        assert!(before_eos_figure(&rows, 3, 30, 3, &dir.join("y.png")).is_err()); // not an event row
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
