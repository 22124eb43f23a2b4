#!/usr/bin/env bash
# Long fuzz runs (not part of CI). Usage: bash fuzz/run.sh [SECONDS]   (default 600 each, 4 harnesses)
# Needs: the package installed in the active Python (pip install .), atheris, and
# cargo-fuzz (cargo install cargo-fuzz; it runs on stable with RUSTC_BOOTSTRAP=1).
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-600}
python make_corpus.py
mkdir -p artifacts
RUSTC_BOOTSTRAP=1 cargo fuzz run --release load_weights corpus/load_weights -- \
    -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 &
python fuzz_pth.py corpus_pth -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix=artifacts/ &
wait
# The config-file reader and the metadata checks (two at a time: two cores).
python fuzz_config.py corpus_config -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix=artifacts/ &
python fuzz_metadata.py corpus_metadata -max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 \
    -print_final_stats=1 -artifact_prefix=artifacts/ &
wait
