#!/usr/bin/env bash
# The causal language model's training against a PyTorch reference, in one run: pretext
# pretrains a small causal transformer on Jane Austen (byte-level tokens, dropout 0) recording its
# initial weights and every step's windows (`record_inputs`), then bench/lm_match.py trains the
# same model in PyTorch from those weights on those windows with the same optimiser, schedule and
# global-norm clipping, and prints the two validation-loss curves side by side with the largest
# difference (exit status 1 above --tolerance, 0.02 nats).
#
#   bench/lm_match.sh [OUT_DIR] [--set key=value ...]     (default OUT_DIR: runs/lm-match)
#
# PRETEXT=path/to/pretext uses that binary (default: `cargo build`, then target/debug/pretext);
# TOLERANCE=nats. Needs python3 with torch and numpy.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-runs/lm-match}
shift || true
if [ -z "${PRETEXT:-}" ]; then
  (cd "$root" && cargo build --quiet)
  PRETEXT=$root/target/debug/pretext
fi
rm -rf "$out"
"$PRETEXT" pretrain --task causal-lm --data "text:$root/../shared/data/text/austen.txt.gz" \
  --out "$out" --tokenizer bytes -q \
  --set d_model=64 --set layers=2 --set heads=4 --set seq_len=64 --set dropout=0 \
  --set batch_size=16 --set steps=300 --set warmup_steps=30 --set lr=0.003 \
  --set eval_every=25 --set eval_batches=4 --set log_every=1 --set checkpoint_every=300 \
  --set record_inputs=true "$@"
python3 "$root/bench/lm_match.py" "$out" --tolerance "${TOLERANCE:-0.02}" --json "$out/match.json"
