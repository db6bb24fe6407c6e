#!/bin/bash
# A live GPU cluster behind the router (issue 16, deliverable 3): WORKERS vLLM 0.26 workers of the
# Llama-2-7B shape (dummy weights, the profile's server flags, each with the engine plugin), one per
# GPU, behind 'aladdin router'; the same ShareGPT Poisson schedule replayed through it once per
# policy (POLICIES), then a KV-bound pass (every worker's cache cut to KV_BLOCKS blocks, KV_POLICIES).
# Each run folder (runs/PASS/POLICY) gets counters.json (the workers' preemptions during that run),
# server.json (the workers' flags and KV caches) and the router's /metrics; the analysis, with the
# simulator's prediction of the same runs, runs elsewhere:
#   .venv/bin/python benchmarks/bench_router_live_gpu.py --runs DIR -> benchmarks/results/router_live_gpu.json
# Runs on a multi-GPU machine (nvidia-h200-x2 / -x4), from the repo root:
#
#   scripts/gpu/router_live_gpu.sh start       unpack the vLLM bundle (parts already in /tmp/gpb),
#                                              install the project's wheels (.whl) and the ShareGPT
#                                              stand-in ($DATA), start the pipeline detached
#   scripts/gpu/router_live_gpu.sh wait [S]    wait up to S s (default 540), copy runs.tgz and logs to $OUT
#
# Calls, back to back (../shared/gpu/README.md): carry .gpu/p01: 'mkdir -p /tmp/gpb && cp .gpu/p01/part
# /tmp/gpb/p01'; carry .gpu/p02: 'cp .gpu/p02/part /tmp/gpb/p02'; carry .gpu/p03 .gpu/tools .whl
# .gpudata-svr: 'cp .gpu/p03/part /tmp/gpb/p03 && bash scripts/gpu/router_live_gpu.sh start && bash
# scripts/gpu/router_live_gpu.sh wait 560', then 'bash scripts/gpu/router_live_gpu.sh wait 560' until
# PIPELINE_DONE. DATA: the stand-in of sim_vs_real_h200.sh (.gpudata-svr: sharegpt_subset.py --seed 0
# -n 800 --max-output-tokens 256 --keep 2600 --tokenizer /tmp/models/llama2-7b --out .gpudata-svr).
# SHARE_GPU=1 puts every worker on GPU 0 with GPU_UTIL/WORKERS of its memory: a rehearsal of the
# pipeline on a one-GPU kind, not the cluster the issue asks for (the workers share one GPU's compute).
set -u
W=${W:-/tmp/aladdin-live}
DATA=${DATA:-.gpudata-svr}
PROFILE=${PROFILE:-profiles/h200-llama2-7b.json}
WORKERS=${WORKERS:-$(nvidia-smi -L 2>/dev/null | wc -l)}
SHARE_GPU=${SHARE_GPU:-0}
BASE_PORT=${BASE_PORT:-8100}
ROUTER_PORT=${ROUTER_PORT:-8080}
NUM=${NUM:-800}
RATE_PER_WORKER=${RATE_PER_WORKER:-48}   # near the 7B worker's saturation on an H200 (sim_vs_real_h200: 64 req/s)
SEED=${SEED:-0}
MAX_OUT=${MAX_OUT:-256}
TTFT_SLO=${TTFT_SLO:-0.385}   # the H200 7B SLOs of benchmarks/RESULTS.md, "GPUs vs rate" (25x and 2x unloaded)
ATGT_SLO=${ATGT_SLO:-0.00903}
POLICIES=${POLICIES:-"aladdin jsq po2"}
KV_BLOCKS=${KV_BLOCKS-1000}   # the KV-bound pass (set empty: none)
KV_POLICIES=${KV_POLICIES:-"aladdin jsq po2"}
KV_RATE_PER_WORKER=${KV_RATE_PER_WORKER:-24}

. "$(dirname "$0")/server.sh"

start() {
  mkdir -p "$W"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start: $WORKERS workers (share GPU: $SHARE_GPU), policies $POLICIES, KV pass $KV_BLOCKS blocks"
  prepare_machine
  cp "$0" scripts/gpu/server.sh scripts/gpu/replay_direct.py "$PROFILE" "$W/"
  rm -f "$W/done"
  setsid nohup bash "$W/router_live_gpu.sh" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
}

urls() { for i in $(seq 0 $((WORKERS - 1))); do echo "http://127.0.0.1:$((BASE_PORT + i))"; done; }

start_workers() {  # start_workers [BLOCKS]: every worker with the engine plugin, detached; waits until all answer
  local i util=$GPU_UTIL extra=()
  [ "$SHARE_GPU" = 1 ] && util=$(python3 -c "print(round($GPU_UTIL / $WORKERS, 3))")
  [ -n "${1:-}" ] && extra=(--num-gpu-blocks-override "$1")
  for i in $(seq 0 $((WORKERS - 1))); do
    CUDA_VISIBLE_DEVICES=$([ "$SHARE_GPU" = 1 ] && echo 0 || echo "$i") PYTHONPATH=/tmp/gpusite:/tmp/site \
      VLLM_PLUGINS=aladdin,aladdin_state setsid nohup python3 -m vllm.entrypoints.openai.api_server \
      --model "$MODEL_DIR" --served-model-name "$SHAPE" --load-format dummy --dtype bfloat16 \
      --max-model-len "$MAX_MODEL_LEN" --max-num-seqs "$MAX_NUM_SEQS" --max-num-batched-tokens "$MAX_BATCHED" \
      --block-size 16 --no-enable-prefix-caching --gpu-memory-utilization "$util" "${extra[@]}" \
      --scheduler-cls aladdin.plugin.vllm.scheduler.AladdinScheduler \
      --middleware aladdin.plugin.vllm.middleware.FrontDoor \
      --additional-config "{\"aladdin\": {\"profile\": \"$W/$(basename "$PROFILE")\", \"ttft_slo\": $TTFT_SLO, \"atgt_slo\": $ATGT_SLO}}" \
      --disable-uvicorn-access-log --host 127.0.0.1 --port $((BASE_PORT + i)) >"worker-$i${1:+-kv$1}.log" 2>&1 </dev/null &
    echo $! >"worker-$i.pid"
    # one at a time on a shared GPU: each sizes its cache from the memory the others left
    [ "$SHARE_GPU" = 1 ] && { await_workers $((i + 1)) || return 5; }
  done
  await_workers "$WORKERS"
}

await_workers() {  # await_workers N: wait up to 20 minutes until the first N workers answer
  local up u
  for _ in $(seq 1 600); do
    up=0
    for u in $(urls | head -n "$1"); do
      python3 -c "import urllib.request; urllib.request.urlopen('$u/health', timeout=2)" 2>/dev/null && up=$((up + 1))
    done
    [ "$up" = "$1" ] && { echo "== $(date -u +%FT%TZ) $1 workers up"; return 0; }
    sleep 2
  done
  echo "workers not healthy"; return 5
}

stop_workers() {
  local f
  for f in worker-*.pid; do [ -f "$f" ] && { kill -- -"$(cat "$f")" 2>/dev/null || kill "$(cat "$f")" 2>/dev/null; rm -f "$f"; }; done
  sleep 10
}

preemptions() {  # the workers' vllm:num_preemptions_total, summed
  python3 - $(urls) <<'EOF'
import re, sys, urllib.request
total = 0.0
for url in sys.argv[1:]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    total += sum(float(v) for v in re.findall(r"^vllm:num_preemptions_total(?:\{[^}]*\})? (\S+)$", text, re.M))
print(int(total))
EOF
}

kv_tokens_each() {  # every worker's usable KV tokens (vLLM's null block left out), comma-separated
  python3 - $(urls) <<'EOF'
import re, sys, urllib.request
out = []
for url in sys.argv[1:]:
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    labels = dict(re.findall(r'(\w+)="([^"]*)"', re.search(r"^vllm:cache_config_info\{([^}]*)\}", text, re.M).group(1)))
    out.append(str((int(labels["num_gpu_blocks"]) - 1) * int(labels["block_size"])))
print(",".join(out))
EOF
}

one_run() {  # one_run PASS POLICY RATE [BLOCKS]
  local pass=$1 policy=$2 rate=$3 blocks=${4:-} out=runs/$1/$2 before args=() u
  for u in $(urls); do args+=(--worker "$u"); done
  PYTHONPATH=$CLIENT_PATH setsid nohup python3 -m aladdin router "${args[@]}" --policy "$policy" \
    --profile "$(basename "$PROFILE")" --ttft-slo "$TTFT_SLO" --atgt-slo "$ATGT_SLO" --tokenizer "$MODEL_DIR" \
    --port "$ROUTER_PORT" >"router-$pass-$policy.log" 2>&1 </dev/null &
  echo $! >router.pid
  for _ in $(seq 1 60); do python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$ROUTER_PORT/health', timeout=2)" 2>/dev/null && break; sleep 1; done
  before=$(preemptions)
  python3 replay_direct.py --host "http://127.0.0.1:$ROUTER_PORT" --tokenizer "$MODEL_DIR" -o "$out" --label "$policy" \
    --dataset sharegpt -n "$NUM" --seed "$SEED" --max-output-tokens "$MAX_OUT" --rate "$rate" || rc=7
  mkdir -p "$out"
  echo "{\"preemptions\": $(( $(preemptions) - before ))}" >"$out/counters.json"
  python3 -c "import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:$ROUTER_PORT/metrics', timeout=30).read().decode())" >"$out/router_metrics.txt" || true
  echo "{\"workers\": $WORKERS, \"share_gpu\": $([ "$SHARE_GPU" = 1 ] && echo true || echo false), \"num_gpu_blocks_override\": ${blocks:-null}, \"prefix_caching\": false, \"kv_tokens_each\": [$(kv_tokens_each)], \"engine_plugin\": true, \"gpu\": \"$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)\"}" >"$out/server.json"
  kill "$(cat router.pid)" 2>/dev/null; sleep 2
  echo "== $(date -u +%FT%TZ) $pass/$policy done: $(cat "$out/counters.json")"
  tar -czf runs.tgz runs worker-*.log router-*.log
}

pipeline() {
  cd "$W" || exit 1
  export PYTHONPATH=$CLIENT_PATH
  rc=0
  local p
  start_workers || { echo 5 >done; exit 5; }
  python3 replay_direct.py --host "$(urls | head -1)" --tokenizer "$MODEL_DIR" -o warmup --label warmup \
    --dataset synthetic -n 16 --rate 4 --prompt-tokens 16:512 --output-tokens 16:64 --seed 99 || rc=6
  for p in $POLICIES; do one_run main "$p" $((RATE_PER_WORKER * WORKERS)); done
  stop_workers
  if [ -n "$KV_BLOCKS" ]; then
    start_workers "$KV_BLOCKS" || { echo 5 >done; exit 5; }
    for p in $KV_POLICIES; do one_run kv_bound "$p" $((KV_RATE_PER_WORKER * WORKERS)) "$KV_BLOCKS"; done
    stop_workers
  fi
  echo "$rc" >done
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) collect "${2:-540}" "$W"/runs.tgz "$W"/worker-*.log "$W"/router-*.log ;;
  *) echo "usage: $0 start | wait [S]"; exit 1 ;;
esac
