#!/usr/bin/env bash
# Rebuild the shipped base model of the R1-Zero demo, r1lab/assets/models/r1zero-base:
# pre-train with our own recipe (recipes/base_tiny.yaml, ≈ 18 minutes on 2 CPU cores, to the
# end of the recipe), then store the final checkpoint in bf16 (half the bytes; the demo loads
# it in fp32). Seeded: the same machine type gives the same run.
# Run from the repository root with the venv active:  bash scripts/train_base_model.sh
set -euo pipefail
OUT=${OUT:-runs/base_tiny}
r1lab pretrain recipes/base_tiny.yaml --set "out_dir=$OUT"
python - "$OUT/final" <<'PY'
import shutil
import sys

import torch
from r1lab.checkpoint import SHIPPED_DIR, load_model, save_model

src = sys.argv[1]
dst = save_model(load_model(src), SHIPPED_DIR / "r1zero-base", tokenizer=src, dtype=torch.bfloat16)
shutil.copyfile(f"{src}/r1lab.json", dst / "r1lab.json")   # the prompt style and task it was trained with
print(f"wrote {dst}")
PY
