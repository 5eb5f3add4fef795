#!/usr/bin/env bash
# Check the local SLURM cluster from up.sh really works the way
# snakemake-executor-plugin-slurm needs it: batch + srun steps, fake GPUs as
# GRES (CUDA_VISIBLE_DEVICES), sacct states + AllocTRES, concurrency
# (DefMemPerCPU), scancel -> CANCELLED. Exits non-zero on the first failure.
#
# Usage: scripts/slurm/selftest.sh   (runs up.sh first unless SKIP_UP=1)
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
[[ ${SKIP_UP:-0} == 1 ]] || "$HERE/up.sh" >/dev/null

WORK=$(mktemp -d /tmp/craft-slurm-selftest.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$WORK"
FAIL=0
pass() { echo "PASS: $*"; }
fail() { echo "FAIL: $*"; FAIL=1; }

# sacct_state JOBID -> State of the job allocation line (waits for accounting)
sacct_line() {
  local id=$1 want=$2 line="" i
  for i in $(seq 1 40); do
    line=$(sacct -j "$id" -X -n -P -o JobID,State,AllocTRES%60 2>/dev/null | head -1)
    [[ $line == *"|$want"* ]] && break
    sleep 0.5
  done
  echo "$line"
}

# 1. CPU batch job with an srun step (the plugin runs each rule via srun)
t0=$(date +%s.%N)
cpu_id=$(sbatch --parsable --wait -p cpu -c 1 -t 2 -o cpu.out \
  --wrap 'echo host=$(hostname) cpus=$SLURM_CPUS_ON_NODE mem=$SLURM_MEM_PER_CPU; srun -n1 echo step-ok')
t1=$(date +%s.%N)
if grep -q step-ok cpu.out; then
  pass "cpu job $cpu_id: $(tr '\n' ' ' < cpu.out)($(awk "BEGIN{printf \"%.1f\", $t1 - $t0}")s)"
else
  fail "cpu job $cpu_id output: $(cat cpu.out)"
fi

# 2. GPU job gets one fake GPU as CUDA_VISIBLE_DEVICES=0
gpu_id=$(sbatch --parsable --wait -p gpu --gpus=1 -c 1 -t 2 -o gpu.out \
  --wrap 'echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES')
if [[ $(cat gpu.out) == "CUDA_VISIBLE_DEVICES=0" ]]; then
  pass "gpu job $gpu_id: $(cat gpu.out)"
else
  fail "gpu job $gpu_id output: $(cat gpu.out)"
fi

echo "--- sacct -j $cpu_id -o JobID,State,AllocTRES%60 -n -P"
sacct_line "$cpu_id" COMPLETED >/dev/null
sacct -j "$cpu_id" -o JobID,State,AllocTRES%60 -n -P
echo "--- sacct -j $gpu_id -o JobID,State,AllocTRES%60 -n -P"
gl=$(sacct_line "$gpu_id" COMPLETED)
sacct -j "$gpu_id" -o JobID,State,AllocTRES%60 -n -P
if [[ $gl == *"|COMPLETED|"*"gres/gpu=1"* ]]; then
  pass "sacct: gpu job COMPLETED with gres/gpu=1"
else
  fail "sacct gpu job line: $gl"
fi
cl=$(sacct_line "$cpu_id" COMPLETED)
[[ $cl == *"|COMPLETED|"* ]] && pass "sacct: cpu job COMPLETED" || fail "sacct cpu job line: $cl"

# 3. Two 1-CPU jobs run at the same time (needs DefMemPerCPU, else each job
#    takes all node memory). Each job sleeps 5 s; together they must overlap.
a=$(sbatch --parsable -c 1 -t 2 -o /dev/null --wrap 'date +%s.%N > a.start; sleep 5')
b=$(sbatch --parsable -c 1 -t 2 -o /dev/null --wrap 'date +%s.%N > b.start; sleep 5')
sleep 1
for i in $(seq 1 40); do
  [[ -s a.start && -s b.start ]] && break; sleep 0.5
done
running=$(squeue -h -t R -j "$a,$b" | wc -l)
if [[ -s a.start && -s b.start ]]; then
  gap=$(awk -v a="$(cat a.start)" -v b="$(cat b.start)" 'BEGIN{d=a-b; if(d<0)d=-d; printf "%.2f", d}')
  if awk -v g="$gap" 'BEGIN{exit !(g < 4)}'; then
    pass "two 1-CPU jobs concurrent ($a,$b; start gap ${gap}s, running now: $running)"
  else
    fail "1-CPU jobs started ${gap}s apart (not concurrent)"
  fi
else
  fail "1-CPU jobs did not both start within 20s: $(squeue -h -j "$a,$b" -o '%i %T %r' | tr '\n' ';')"
fi

# 4. scancel a running job -> sacct CANCELLED
s=$(sbatch --parsable -c 1 -t 2 -o /dev/null --wrap 'sleep 300')
for i in $(seq 1 40); do
  [[ $(squeue -h -j "$s" -o %T) == RUNNING ]] && break; sleep 0.5
done
scancel "$s"
sl=$(sacct_line "$s" CANCELLED)
echo "--- sacct -j $s -o JobID,State,AllocTRES%60 -n -P"
sacct -j "$s" -o JobID,State,AllocTRES%60 -n -P
[[ $sl == *"|CANCELLED"* ]] && pass "scancel: job $s CANCELLED" || fail "scancel: sacct line: $sl"

# wait for the concurrency jobs so the cluster is idle afterwards
for i in $(seq 1 40); do
  [[ -z $(squeue -h -j "$a,$b,$s" 2>/dev/null) ]] && break; sleep 0.5
done

if ((FAIL)); then echo "slurm selftest: FAILED"; exit 1; fi
echo "slurm selftest: all checks passed"
