#!/bin/bash
# The simulator against the real thing on the lent GPU (written for the H200; the flow of
# sim_vs_real_h100.sh, generalised): replay ShareGPT workloads against vLLM 0.26 (Llama-2-7B shape,
# dummy weights, TP 1, exactly the server flags that made profiles/$HW-llama2-7b.json, see
# scripts/gpu/server.sh: among them --no-enable-prefix-caching, kept here) at several loads, then
# restart the server with a small KV cache (--num-gpu-blocks-override) for one KV-bound run, and
# bring the run folders back, each with vLLM's preemption counter over the run (counters.json, read
# by 'aladdin analyze') and the server's command line (server.json). The simulated side and the
# analysis run elsewhere (benchmarks/bench_sim_vs_real.py --real-run). On the GPU machine, from the
# repo root:
#
#   scripts/gpu/sim_vs_real_h200.sh start          unpack the vLLM bundle (parts already in /tmp/gpb),
#                                                  install the project's wheels (.whl) and the ShareGPT
#                                                  stand-in ($DATA), make the model folder, start the
#                                                  server and the pipeline, both detached
#   scripts/gpu/sim_vs_real_h200.sh wait [S [loads]]  wait up to S s (default 540) for the whole
#                                                  pipeline (with 'loads': for the load runs only), copy
#                                                  what is finished to $OUT (runs.tgz: every finished
#                                                  run folder; logs.tgz); exit 0 once done, 3 before
#
# Run folders (names from $NAME, default "h200"): real-rR for each R:N of $LOADS (N requests at R
# req/s), real-kvB-rR for the KV-bound run ($KV_BLOCKS blocks of 16 at $KV_RATE req/s, $KV_NUM
# requests; KV_BLOCKS=0: none). Replays use scripts/gpu/replay_direct.py (no Locust on the machine)
# with the CLI's workload flags: --dataset sharegpt -n N --seed $SEED --max-output-tokens $MAX_OUT
# --rate R --tokenizer $MODEL_DIR. Each server gets a discarded warm-up replay first.
#
# DATA (the ShareGPT stand-in holding the largest N's sample; smaller N are prefixes of it):
#   .venv/bin/python scripts/gpu/sharegpt_subset.py --seed 0 -n 800 --max-output-tokens 256 \
#     --keep 2600 --tokenizer /tmp/models/llama2-7b --out .gpudata-svr
# Calls, back to back while the machine stays warm (two, since p01+p03 and p02+the rest each fit in
# a call's 64 MiB): carry .gpu/p01 .gpu/p03: 'mkdir -p /tmp/gpb && cp .gpu/p01/part /tmp/gpb/p01 &&
# cp .gpu/p03/part /tmp/gpb/p03'; carry .gpu/p02 .gpu/tools .whl .gpudata-svr: 'cp .gpu/p02/part
# /tmp/gpb/p02 && bash scripts/gpu/sim_vs_real_h200.sh start && bash scripts/gpu/sim_vs_real_h200.sh
# wait 500 loads'; then 'bash scripts/gpu/sim_vs_real_h200.sh wait S' until done.
set -u
W=${W:-/tmp/aladdin-svr}
NAME=${NAME:-h200}
# workload
SEED=${SEED:-0}
MAX_OUT=${MAX_OUT:-256}
LOADS=${LOADS:-"8:200 16:320 32:400 64:800"}   # RATE:REQUESTS
KV_BLOCKS=${KV_BLOCKS:-300}   # 300 x 16 = 4800 tokens (>= max-model-len 4096, which vLLM requires)
KV_RATE=${KV_RATE:-24}
KV_NUM=${KV_NUM:-400}
DATA=${DATA:-.gpudata-svr}

. "$(dirname "$0")/server.sh"   # the server of the profile (same flags), shared with profile_h*.sh

start() {
  mkdir -p "$W"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start ($NAME): loads $LOADS; KV-bound: $KV_BLOCKS blocks at $KV_RATE req/s"
  prepare_machine
  cp "$0" scripts/gpu/server.sh scripts/gpu/replay_direct.py "$W/"   # the pipeline runs from these copies
  rm -f "$W"/done "$W"/done-*
  start_server
  setsid nohup bash "$W/$(basename "$0")" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
}

preemptions() {  # vLLM's preemption counter now
  python3 -c "
import urllib.request
text = urllib.request.urlopen('http://127.0.0.1:$PORT/metrics', timeout=30).read().decode()
print(int(sum(float(l.split()[-1]) for l in text.splitlines() if l.startswith('vllm:num_preemptions_total'))))
" 2>/dev/null || echo -1
}

replay() {  # replay OUTDIR LABEL [workload flags]: the run folder, plus counters.json and server.json
  local out=$1 label=$2 before after rc; shift 2
  echo "== $(date -u +%FT%TZ) replay $out: $*"
  before=$(preemptions)
  python3 replay_direct.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -o "$out" --label "$label" "$@"
  rc=$?
  [ -d "$out" ] || return "$rc"
  after=$(preemptions)
  if [ "$before" -ge 0 ] && [ "$after" -ge 0 ]; then
    printf '{"preemptions": %d, "before": %d, "after": %d, "source": "vllm:num_preemptions_total on /metrics, after minus before the replay"}\n' \
      "$(( after - before ))" "$before" "$after" >"$out/counters.json"
  else
    echo '{"error": "/metrics not read"}' >"$out/counters.json"
  fi
  python3 - "$out/server.json" "$SERVER_LOG_NOW" <<'EOF'
import json, re, sys
log = open(sys.argv[2], errors="replace").read()
cmd = open("server.cmd").read().split("\0")
kv = re.findall(r"GPU KV cache size: ([\d,]+) tokens", log)
json.dump({"command": [a for a in cmd if a], "prefix_caching": "--no-enable-prefix-caching" not in cmd,
           "kv_cache_tokens": int(kv[-1].replace(",", "")) if kv else None,
           "num_gpu_blocks_override": next((int(cmd[i + 1]) for i, a in enumerate(cmd)
                                            if a == "--num-gpu-blocks-override"), None)},
          open(sys.argv[1], "w"), indent=1)
EOF
  echo "   preemptions $(cat "$out/counters.json")"
  return "$rc"
}

server_up() {  # after start_server: wait for it, keep its command line, discarded warm-up
  await_server
  cp "/proc/$(cat server.pid)/cmdline" server.cmd 2>/dev/null || printf 'unknown\0' >server.cmd
  grep -E "KV cache|Maximum concurrency|num_gpu_blocks" "$SERVER_LOG_NOW" | tail -n 3
  replay "warmup-$1" warmup --dataset synthetic -n 24 --rate 8 --prompt-tokens 16:1024 --output-tokens 16:64 --seed 99
}

pack() {  # every finished run folder (run.json says finished) into runs.tgz
  local d list=()
  for d in real-*; do [ -f "$d/counters.json" ] && list+=("$d"); done
  [ ${#list[@]} -gt 0 ] && tar -czf runs.tgz "${list[@]}"
}

pipeline() {
  cd "$W" || exit 1
  export PYTHONPATH=$CLIENT_PATH
  local rc=0 load rate n
  SERVER_LOG_NOW=vllm_server.log
  server_up loads || { echo 6 >done-loads; echo 6 >done; exit 6; }
  for load in $LOADS; do
    rate=${load%%:*} n=${load##*:}
    replay "real-r$rate" "real vLLM" --dataset sharegpt -n "$n" --seed "$SEED" --max-output-tokens "$MAX_OUT" --rate "$rate" || rc=7
  done
  pack; echo "== $(date -u +%FT%TZ) loads done rc=$rc"
  echo "$rc" >done-loads
  if [ "$KV_BLOCKS" -gt 0 ]; then
    stop_server
    SERVER_EXTRA=(--num-gpu-blocks-override "$KV_BLOCKS") SERVER_LOG=vllm_server_kv.log SERVER_LOG_NOW=vllm_server_kv.log
    start_server
    server_up kv || { echo 8 >done; exit 8; }
    replay "real-kv$KV_BLOCKS-r$KV_RATE" "real vLLM" --dataset sharegpt -n "$KV_NUM" --seed "$SEED" \
      --max-output-tokens "$MAX_OUT" --rate "$KV_RATE" || rc=9
    pack
  fi
  echo "== $(date -u +%FT%TZ) done rc=$rc"
  echo "$rc" >done
}

wait_done() {  # wait_done S [loads]
  local limit=$1 marker=$W/done
  [ "${2:-}" = loads ] && marker=$W/done-loads
  for _ in $(seq 1 "$limit"); do [ -f "$marker" ] || [ -f "$W/done" ] && break; sleep 1; done
  (cd "$W" && pack; [ -f runs.tgz ] && cp runs.tgz "${OUT:-/tmp}/"
   tar -czf "${OUT:-/tmp}/logs.tgz" --ignore-failed-read ./*.log ./server.cmd 2>/dev/null)
  grep -E "KV cache|Maximum concurrency|Error|error" "$W"/vllm_server*.log 2>/dev/null | tail -n 10
  tail -n 40 "$W/pipeline.log" 2>/dev/null | tr '\r' '\n' | tail -n 40
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ls "$W"/done* 2>/dev/null | xargs -r -n1 sh -c 'echo "$(basename "$0")=$(cat "$0")"'
  if [ -f "$marker" ] || [ -f "$W/done" ]; then echo "DONE"; else echo "RUNNING"; exit 3; fi
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) wait_done "${2:-540}" "${3:-}" ;;
  *) echo "usage: $0 start | wait [S [loads]]"; exit 1 ;;
esac
