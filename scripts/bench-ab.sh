#!/bin/bash
# Old-against-new A/B of the Rust `e2e` bench binary (docs/PERFORMANCE.md, "Prefill on AVX2").
# Build both first, e.g.:
#   git stash; cargo build --release -p perpetua-benches --example e2e; cp target/release/examples/e2e target/ab/e2e-old
#   git stash pop; cargo build --release -p perpetua-benches --example e2e; cp target/release/examples/e2e target/ab/e2e-new
#   target/release/examples/e2e --mode tokens --out target/bench/tokens.json
# Then run this from the repository root: alternating rounds, one JSON line per run in target/ab/ab.jsonl.
set -euo pipefail
export RAYON_NUM_THREADS=2 CANDLE_NUM_THREADS=2
T=target/bench/tokens.json
ROUNDS=${ROUNDS:-2}
for round in $(seq 1 "$ROUNDS"); do
  for b in old new; do
    tag() { python3 -c "import json,sys; v=json.load(sys.stdin); v['bin']='$b'; v['round']=$round; print(json.dumps(v))"; }
    target/ab/e2e-$b --contender perpetua --mode greedy --tokens-file $T --new-tokens 128 | tag >> target/ab/ab.jsonl
    for p in 512 2000 4000; do
      target/ab/e2e-$b --contender perpetua --mode position --tokens-file $T --position $p --steps 32 | tag >> target/ab/ab.jsonl
    done
  done
done
