#!/usr/bin/env bash
# Rebuild the shipped tokenizer r1lab/assets/tokenizer (2048 tokens = the `tiny` preset's
# vocab_size; <｜begin▁of▁sentence｜> id 0, <｜end▁of▁sentence｜> id 1).
# Training text: GSM8K train (MIT; ../shared/data/benchmarks) + synthetic arithmetic in the
# R1 chat and R1-Zero formats (scripts/tokenizer_corpus.py, seed 0). Deterministic: running
# it again reproduces the committed files byte for byte.
# Run from the repository root with the venv active:  bash scripts/train_tokenizer.sh
set -euo pipefail
GSM8K=${GSM8K:-../shared/data/benchmarks/gsm8k_train.jsonl}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python scripts/tokenizer_corpus.py "$work/arithmetic.txt" --examples 4000 --seed 0
r1lab tokenizer train --input "$GSM8K" "$work/arithmetic.txt" --vocab-size 2048 --force r1lab/assets/tokenizer
