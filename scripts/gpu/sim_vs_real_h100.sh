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
# workload
NUM=${NUM:-400}
SEED=${SEED:-0}
MAX_OUT=${MAX_OUT:-256}
RATES=${RATES:-"8 4"}
DATA=${DATA:-.gpudata-svr}   # sharegpt_subset.py --seed $SEED -n $NUM --max-output-tokens $MAX_OUT --out $DATA

. "$(dirname "$0")/server.sh"   # the server of the profile (same flags), shared with profile_h100.sh

start() {
  mkdir -p "$W"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start"
  prepare_machine
  cp "$0" scripts/gpu/server.sh scripts/gpu/replay_direct.py "$W/"   # the pipeline runs from these copies
  start_server
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
  await_server
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
  collect "${1:-540}" "$W"/runs.tgz
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) wait_done "${2:-540}" ;;
  *) echo "usage: $0 start | wait [S]"; exit 1 ;;
esac
