#!/usr/bin/env bash
# Issue 6's GPU benchmark, in one device call (SD-1.5 size, random weights, batch 4, 50 DDIM
# steps, CFG, bf16; plain diffusers + peft against craft's recipe, side by side):
#   here, once:   bash bench/wheels.sh
#   device tool:  run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=590)
# Each variant's result is appended to $OUT/sd15.jsonl as it finishes, so a run cut short by
# its limit still brings back what it measured; the log is $OUT/log.txt.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/craft-bench}
mkdir -p "$OUT"
if ! ls .whl/diffusers-*.whl >/dev/null 2>&1; then
    echo "bench/gpu.sh: no wheels in .whl/; run bash bench/wheels.sh here and carry .whl" >&2
    exit 2
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c 'import torch, diffusers, peft, transformers as t; print("torch", torch.__version__,
"diffusers", diffusers.__version__, "peft", peft.__version__, "transformers", t.__version__)'
} 2>&1 | tee "$OUT/log.txt"
run() {  # $1: seconds this part may take (170 + 100 + 270, under the call's 590)
    timeout "$1" python3 bench/bench_reward_step.py --size sd15 --batch 4 --sample-steps 50 \
        --dtype bfloat16 --out "$OUT/sd15.jsonl" "${@:2}" 2>&1 | tee -a "$OUT/log.txt"
}
# what the targets need first; the whole chain with one timed step; compiled variants last
run 170 --warmup 1 --repeats 3 --variants plain-sample,craft-sample,plain-k1,craft-k1
run 100 --warmup 1 --repeats 1 --variants craft-full,plain-full
run 270 --warmup 2 --repeats 3 --variants craft-k1-compile,craft-k1-compile-ro
echo "== all variants" | tee -a "$OUT/log.txt"
python3 bench/bench_reward_step.py --summarize "$OUT/sd15.jsonl" 2>&1 | tee -a "$OUT/log.txt"
