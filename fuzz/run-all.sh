#!/usr/bin/env bash
# Run every fuzz target for SECONDS each (default 600), one after another, and print
# libFuzzer's final stats line per target. Needs the nightly toolchain and cargo-fuzz
# (`cargo install cargo-fuzz`); the tokenizer target needs the default model
# (`cargo xtask fetch-model`). Corpora grow under fuzz/corpus/ (not committed); the
# committed seeds are under fuzz/seeds/.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_EACH=${1:-600}
for target in chain_config stop_strings tokenizer_decode gguf_load; do
  mkdir -p "corpus/$target" "seeds/$target"
  echo "== $target (${SECONDS_EACH} s)"
  cargo +nightly fuzz run -s none "$target" "corpus/$target" "seeds/$target" -- \
    -max_total_time="$SECONDS_EACH" -rss_limit_mb=4096 -timeout=30 -print_final_stats=1 2>&1 \
    | tee "/tmp/fuzz-$target.log" | grep -E "^(Done|stat::number_of_executed_units|stat::peak_rss_mb|==[0-9]+== ERROR|SUMMARY)" || true
done
