#!/bin/bash
# The admission benchmark on the lent GPU (benchmarks/bench_admission.py's runs, on vLLM 0.26 CUDA):
# one vLLM server of the Llama-2-7B shape (dummy weights) with its KV cache cut to
# $GPU_BLOCKS blocks, the same ShareGPT Poisson schedule replayed once per run: stock vLLM, its
# admission knobs, and vLLM with the Aladdin plugin (--scheduler-cls, the front door, the
# plugins). Each run's folder gets counters.json (vLLM's preemption counter, the plugin's totals);
# the analysis runs elsewhere:
#   bench_admission.py --runs DIR --profile profiles/h100-llama2-7b.json --out .../admission_h200.json
# Runs on the GPU machine, from the repo root:
#
#   scripts/gpu/admission_h200.sh start       unpack the vLLM bundle (parts already in /tmp/gpb),
#                                             install the project's wheels (.whl) and the ShareGPT
#                                             stand-in ($DATA), make the model folder, start the
#                                             pipeline detached
#   scripts/gpu/admission_h200.sh wait [S]    wait up to S s (default 540), copy what is done to $OUT
set -u
W=${W:-/tmp/aladdin-adm}
NUM=${NUM:-800}
RATE=${RATE:-24}
SEED=${SEED:-0}
MAX_OUT=${MAX_OUT:-1024}
GPU_BLOCKS=${GPU_BLOCKS:-1000}
TTFT_SLO=${TTFT_SLO:-1.0}
ATGT_SLO=${ATGT_SLO:-0.025}
QUEUED_TOKENS=${QUEUED_TOKENS:-}   # --max-num-queued-tokens (vLLM 0.3x; 0.26 has no such flag)
RUNS=${RUNS:-"plugin stock reserve_full_isl watermark"}   # add queued_tokens on a vLLM that has the flag
PROFILE=${PROFILE:-profiles/h100-llama2-7b.json}
DATA=${DATA:-.gpudata-adm}   # sharegpt_subset.py --seed $SEED -n $NUM --max-output-tokens $MAX_OUT --out $DATA

. "$(dirname "$0")/server.sh"

start() {
  mkdir -p "$W"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start"
  prepare_machine
  cp "$0" scripts/gpu/server.sh scripts/gpu/replay_direct.py "$PROFILE" "$W/"
  rm -f "$W/done"
  setsid nohup bash "$W/admission_h200.sh" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
}

run_flags() {  # run_flags NAME: the server flags of one run, into SERVER_EXTRA
  SERVER_EXTRA=(--num-gpu-blocks-override "$GPU_BLOCKS")
  case "$1" in
    stock) ;;
    queued_tokens) SERVER_EXTRA+=(--max-num-queued-tokens "$QUEUED_TOKENS") ;;
    reserve_full_isl) SERVER_EXTRA+=(--scheduler-reserve-full-isl) ;;
    watermark) SERVER_EXTRA+=(--watermark 0.1) ;;
    plugin) SERVER_EXTRA+=(--scheduler-cls aladdin.plugin.vllm.scheduler.AladdinScheduler
                           --middleware aladdin.plugin.vllm.middleware.FrontDoor
                           --additional-config "{\"aladdin\": {\"profile\": \"$W/$(basename "$PROFILE")\", \"ttft_slo\": $TTFT_SLO, \"atgt_slo\": $ATGT_SLO}}") ;;
  esac
}

counters() {  # the run's counters from /metrics, as bench_admission.py reads them
  python3 - "$PORT" <<'EOF'
import json, re, sys, urllib.request
text = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=30).read().decode()
names = {"preemptions": "vllm:num_preemptions_total", "rejected": "aladdin:rejected_total",
         "handed_back": "aladdin:handed_back_total"}
print(json.dumps({k: sum(float(v) for v in re.findall(rf"^{re.escape(n)}(?:{{[^}}]*}})? (\S+)$", text, re.M))
                  for k, n in names.items()}))
EOF
}

pipeline() {
  cd "$W" || exit 1
  export PYTHONPATH=$CLIENT_PATH
  export VLLM_PLUGINS=aladdin,aladdin_state   # every run: only --scheduler-cls turns the plugin on
  export SERVER_PYTHONPATH=/tmp/gpusite:/tmp/site   # the server imports the plugin from the wheel
  rc=0
  mkdir -p runs
  for name in $RUNS; do
    run_flags "$name"
    echo "== $(date -u +%FT%TZ) $name: ${SERVER_EXTRA[*]}"
    SERVER_LOG="server-$name.log" start_server
    await_server
    python3 replay_direct.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -o "warmup-$name" \
      --label warmup --dataset synthetic -n 16 --rate 4 --prompt-tokens 16:512 --output-tokens 16:64 --seed 99 || rc=6
    python3 replay_direct.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -o "runs/$name" \
      --label "$name" --dataset sharegpt -n "$NUM" --seed "$SEED" --max-output-tokens "$MAX_OUT" --rate "$RATE" || rc=7
    counters >"runs/$name/counters.json" || rc=8
    grep -m1 "AladdinScheduler" "server-$name.log" >"runs/$name/plugin_line.txt"
    cp "server-$name.log" "runs/$name/server.log"
    stop_server
    tar -czf runs.tgz runs
    echo "== $(date -u +%FT%TZ) $name done: $(cat "runs/$name/counters.json")"
  done
  echo "$rc" >done
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) collect "${2:-540}" "$W"/runs.tgz ;;
  *) echo "usage: $0 start | wait [S]"; exit 1 ;;
esac
