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
DATA=${DATA:-.gpudata}
MAX_PROMPT=${MAX_PROMPT:-4000}
VALIDATE_N=${VALIDATE_N:-160}
VALIDATE_MAX_OUT=${VALIDATE_MAX_OUT:-256}
VALIDATE_GROUP=${VALIDATE_GROUP:-8}
DECODE_TOKENS=${DECODE_TOKENS:-128}
PREFILL_TOKENS=${PREFILL_TOKENS:-8}
PROFILE=profiles/h100-llama2-7b.json
VALIDATION=benchmarks/results/profile_validation_h100.json

. "$(dirname "$0")/server.sh"

start() {
  mkdir -p "$W/profiles" "$W/benchmarks/results"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start"
  prepare_machine
  cp "$0" scripts/gpu/server.sh scripts/gpu/ttft_check.py "$W/"   # the pipeline runs from these copies: the repo copy may be re-synced
  start_server
  rm -f "$W/done"
  setsid nohup bash "$W/profile_h100.sh" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
}

pipeline() {
  cd "$W" || exit 1
  export PYTHONPATH=$CLIENT_PATH
  await_server
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
  collect "${1:-540}" "$W/$PROFILE" "$W/$VALIDATION" "$W"/ttft_check.json
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) wait_done "${2:-540}" ;;
  *) echo "usage: $0 start | wait [S]"; exit 1 ;;
esac
