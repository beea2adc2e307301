#!/usr/bin/env bash
# Every GPU bench in one prepared run; all output goes to the directory given (docs/performance.md).
#
#   bash bench/gpu_all.sh OUT_DIR             # on a CUDA machine: under 9 minutes on one H200
#   SMOKE=1 bash bench/gpu_all.sh OUT_DIR     # the same steps with tiny shapes on a CPU (a minute)
#
# Each bench runs under `timeout`, so one that hangs or runs long cannot eat the others' time:
#   gpu_step_bench --sweep  240 s   theta: base, fused, batch32/64, compile, bf16-weights -> step.json
#                                   (rewritten after every variant: a timeout keeps what it measured)
#   gpu_lora_bench          150 s   LoRA theta on the Qwen2.5-1.5B shape
#   bench_sample_rank       120 s   sampling (reference loop, CTranslate2) and ranking, CodeT5-large
#                                   shape, bf16 -> sample.json
#   apps_walltime           2 x 20 s  the APPS table from step.json and sample.json
# Worst case 240 + 150 + 120 + 40 s plus a 5 s grace each: under 9.6 minutes (one device call); the sweep and the
# LoRA bench usually end well before their limits. Needs the project's
# environment with a CUDA build of torch. The exit status is 1 if any bench failed or timed out.
set -u -o pipefail

out=${1:?usage: bench/gpu_all.sh OUT_DIR}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
tiny=()
[ "${SMOKE:-0}" = 1 ] && tiny=(--tiny --device cpu)
status=0
summary="$out/summary.txt"
: >"$summary"

run() {  # run NAME LIMIT_S CMD...: CMD's stdout+stderr to OUT/NAME.log, one line to summary.txt
  local name=$1 limit=$2 start=$SECONDS rc
  shift 2
  echo "== $name (timeout ${limit}s): $*"
  timeout --kill-after=5 "$limit" "$@" >"$out/$name.log" 2>&1
  rc=$?
  tail -n 20 "$out/$name.log"
  local what="ok"
  [ "$rc" -ne 0 ] && what="FAILED" && status=1
  [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ] && what="TIMED OUT"
  echo "$name: $what (rc $rc, $((SECONDS - start)) s) -> $out/$name.log" | tee -a "$summary"
}

{
  echo "started $(date -u +%FT%TZ) on $(hostname)"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$py" -c 'import torch, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
    "available", torch.cuda.is_available(), "| transformers", transformers.__version__)'
} | tee "$out/environment.txt"

run step_sweep 240 "$py" bench/gpu_step_bench.py --sweep --json "$out/step.json" "${tiny[@]}"
run lora 150 "$py" bench/gpu_lora_bench.py "${tiny[@]}"
if [ "${SMOKE:-0}" = 1 ]; then
  run sample 60 "$py" bench/bench_sample_rank.py --shape tiny --engines --json "$out/sample.json"
else
  run sample 120 "$py" bench/bench_sample_rank.py --shape codet5-large --device cuda --dtype bf16 --engines \
    --problems 8 --num-samples 16 --max-new-tokens 256 --batch-size 64 --json "$out/sample.json"
fi
samples=()
[ -s "$out/sample.json" ] && samples=(--sample-json "$out/sample.json")
if [ -s "$out/step.json" ]; then
  run apps_walltime 20 "$py" bench/apps_walltime.py --step-json "$out/step.json" "${samples[@]}" --gpu a100
  run apps_walltime_best 20 "$py" bench/apps_walltime.py --step-json "$out/step.json" "${samples[@]}" --variant best --gpu a100
else
  echo "no step.json: the APPS table falls back to the one measured rate" | tee -a "$summary"
  run apps_walltime 20 "$py" bench/apps_walltime.py --theta-mfu 0.118 --measured-on h200 --gpu a100
fi
echo "finished $(date -u +%FT%TZ); status $status" | tee -a "$summary"
exit "$status"
