#!/usr/bin/env bash
# The GPU Table 2 on a bare GPU machine (written into the bundle by `make gpu-bundle`; see gpu_bundle.py):
#   bash bench-gpu.sh OUT_DIR [table2 overrides, e.g. decode_steps=32]
# Needs python with torch, transformers and lightning; no package index, no hub. Writes
# OUT_DIR/bench/<device>/<entry>.json (copy them under results/bench/ and run `python -m spellm_exp.table2
# run_bench=false`) and OUT_DIR/results/table2.{md,csv,png} for this device alone.
set -euo pipefail
shopt -s nullglob
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out="${1:?usage: bash bench-gpu.sh OUT_DIR [overrides]}"
shift
mkdir -p "$out"
out="$(cd "$out" && pwd)"
site="$out/.bundle-site"
mkdir -p "$site"
for wheel in "$here"/wheels/*.whl; do  # pure-Python wheels are zip files: no pip needed
  python -m zipfile -e "$wheel" "$site"
done
export PYTHONPATH="$here/src:$site${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
SPELLM_GIT_SHA="$(python -c 'import json, sys; print(json.load(open(sys.argv[1]))["git_sha"])' "$here/manifest.json")"
export SPELLM_GIT_SHA
python -c 'import torch, transformers; print("torch", torch.__version__, "| transformers", transformers.__version__,
"| device", torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu")'
python -m spellm_exp.table2 --config-name table2_gpu bench_dir="$out/bench" paths.results_dir="$out/results" \
  paths.cache_dir="$here/cache" paths.output_dir="$out/outputs" prompts_file="$here/prompts.json" \
  hydra.run.dir="$out/hydra" "$@"
