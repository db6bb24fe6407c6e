#!/bin/bash
# Measure the profiles of Llama-2-shaped models (dummy weights) served by vLLM 0.26 on the lent GPU
# and validate each on held-out ShareGPT requests: the flow of profile_h100.sh (same server flags,
# same profile command, same held-out sample), for several shapes in one pipeline, one server per
# shape, with the raw measurements kept. Runs on the lent GPU machine, from the repo root:
#
#   scripts/gpu/profile_h200.sh start           unpack the vLLM bundle (parts already in /tmp/gpb),
#                                               install the project's wheels (.whl) and the ShareGPT
#                                               stand-in ($DATA), start the pipeline detached
#   scripts/gpu/profile_h200.sh wait [S [SIZE]] wait up to S s (default 540) for shape SIZE (7b, 13b;
#                                               default: the whole pipeline), copy what is written
#                                               so far to $OUT; exit 0 once it is done, 3 before
#
# Per shape SIZE of $SIZES (default "7b 13b", in that order: the first is complete before the second
# starts, so a lease that runs out during the second keeps the first), with HW the GPU's name from
# nvidia-smi ("NVIDIA H200" -> h200; override with HW=):
#   profiles/HW-llama2-SIZE.json                         the profile ('aladdin profile', its raw
#       samples; plus samples.prefill_sweep: lone-prompt TTFTs at 56 lengths x 3 from prefill_sweep.py)
#   benchmarks/results/profile_validation_HW_SIZE.json    'aladdin profile validate' on 160 held-out
#       ShareGPT requests (seed 12345, <= 256 output tokens, groups of 8), plus its raw samples
#       (validate_raw.py)
#   logs.tgz                                              setup, pipeline and server logs, ttft_check.json
#
# TP=2 or TP=4 (a multi-GPU kind; issue 16): each worker spans that many GPUs (vLLM's
# --tensor-parallel-size, NCCL_NVLS_ENABLE=0 as for every server here), files named
# profiles/HW-llama2-SIZE-tpN.json and profile_validation_HW_SIZE_tpN.json; then
# benchmarks/derived_vs_measured_tp.py reports the derived profiles' error against them. One
# pipeline per TP: 'TP=2 ... start', 'TP=2 ... wait 540' until done, then the same with TP=4.
#
# DATA: the ShareGPT stand-in of that held-out sample (4 MB; the full file is too large to send):
#   .venv/bin/aladdin model init /tmp/models/llama2-7b --shape llama2-7b
#   .venv/bin/python scripts/gpu/sharegpt_subset.py --seed 12345 -n 160 --max-output-tokens 256 \
#     --keep 1024 --tokenizer /tmp/models/llama2-7b --out .gpudata
# (the 13B shape has the same tokenizer, so the same sample). Calls, back to back while the machine
# stays warm (../shared/gpu/README.md): carry .gpu/p01: 'mkdir -p /tmp/gpb && cp .gpu/p01/part
# /tmp/gpb/p01'; carry .gpu/p02: 'cp .gpu/p02/part /tmp/gpb/p02'; carry .gpu/p03 .gpu/tools .whl
# .gpudata: 'cp .gpu/p03/part /tmp/gpb/p03 && bash scripts/gpu/profile_h200.sh start && bash
# scripts/gpu/profile_h200.sh wait 520 7b'; then 'bash scripts/gpu/profile_h200.sh wait 540' until done.
set -u
W=${W:-/tmp/aladdin-prof}
DATA=${DATA:-.gpudata}
SIZES=${SIZES:-"7b 13b"}
MAX_PROMPT=${MAX_PROMPT:-4000}
VALIDATE_N=${VALIDATE_N:-160}
VALIDATE_MAX_OUT=${VALIDATE_MAX_OUT:-256}
VALIDATE_GROUP=${VALIDATE_GROUP:-8}
DECODE_TOKENS=${DECODE_TOKENS:-128}
PREFILL_TOKENS=${PREFILL_TOKENS:-8}
SWEEP_REPEATS=${SWEEP_REPEATS:-3}   # 0: no prefill sweep
DIAG=${DIAG:-0}   # 1: instead of profiles, TTFT diagnostics on the first size (ttft_check.py with more
                  # output lengths, ttft_sharegpt.py) into ttft_diag_SIZE.json / ttft_sharegpt_SIZE.json
REALPREFILL=${REALPREFILL:-0}   # 1: instead of profiles, per size lone prefills of real ShareGPT prompts
                  # (prefill_sharegpt.py: REALPREFILL_N prompts of seed REALPREFILL_SEED, not validate's
                  # 12345) into benchmarks/results/prefill_sharegpt_HW_SIZE.json, the realistic points
                  # benchmarks/refit_prefill_h200.py fits. DATA: the stand-in of that sample, without
                  # any prompt of the held-out one:
                  #   .venv/bin/python scripts/gpu/sharegpt_subset.py --seed 777 -n 240 --max-output-tokens 256 \
                  #     --keep 1600 --exclude-seed 12345 --exclude-n 160 --tokenizer /tmp/models/llama2-7b \
                  #     --out .gpudata-prefill
                  # Four calls back to back (with the 16.8 MB tree, p01+p03 or p02 with .whl (5 MB) and
                  # .gpudata-prefill (5.5 MB) exceed a call's 64 MiB): carry .gpu/p01: 'mkdir -p /tmp/gpb
                  # && cp .gpu/p01/part /tmp/gpb/p01'; carry .gpu/p03: 'cp .gpu/p03/part /tmp/gpb/p03';
                  # carry .whl .gpudata-prefill .gpu/tools: 'mkdir -p /tmp/stage && cp -r .whl
                  # .gpudata-prefill .gpu/tools /tmp/stage/' (each seconds); carry .gpu/p02: 'cp
                  # .gpu/p02/part /tmp/gpb/p02 && for d in .whl .gpudata-prefill; do [ -d $d ] || cp -r
                  # /tmp/stage/$d .; done; mkdir -p .gpu && { [ -d .gpu/tools ] || cp -r /tmp/stage/tools
                  # .gpu/; }; export REALPREFILL=1 DATA=.gpudata-prefill && bash scripts/gpu/profile_h200.sh
                  # start && bash scripts/gpu/profile_h200.sh wait 480' (7.9 minutes for both sizes on
                  # 2026-12-01; if it ends RUNNING: 'export REALPREFILL=1 DATA=.gpudata-prefill && bash
                  # ... wait 240'; if its files do not come back, 'wait 1' again)
ADMISSION=${ADMISSION:-0}   # 1: instead of profiles, per size 'aladdin profile admission' on the committed
                  # profiles/HW-llama2-SIZE.json (the server started with that profile's KV block count,
                  # --num-gpu-blocks-override, so the profile and the server are the same worker): the
                  # profile comes back with its admission cost (docs/perfmodel.md, "Admission cost").
                  # Three calls back to back: carry .gpu/p01: 'mkdir -p /tmp/gpb && cp .gpu/p01/part
                  # /tmp/gpb/p01'; carry .gpu/p02: 'cp .gpu/p02/part /tmp/gpb/p02'; carry .gpu/p03
                  # .gpu/tools .whl .gpudata: 'cp .gpu/p03/part /tmp/gpb/p03 && export ADMISSION=1 && bash
                  # scripts/gpu/profile_h200.sh start && bash scripts/gpu/profile_h200.sh wait 560'
REALPREFILL_N=${REALPREFILL_N:-240}
REALPREFILL_SEED=${REALPREFILL_SEED:-777}

. "$(dirname "$0")/server.sh"

gpu_name() { nvidia-smi --query-gpu=name --format=csv,noheader | head -1; }
hw() { [ -n "${HW:-}" ] && echo "$HW" || gpu_name | sed 's/^NVIDIA //; s/ .*//' | tr 'A-Z' 'a-z'; }
tp_suffix() { [ "$TP" -gt 1 ] && echo "$1$TP"; }   # TP 1 keeps the names of the 1-GPU profiles
profile_of() { echo "profiles/$(hw)-llama2-$1$(tp_suffix -tp).json"; }
validation_of() { echo "benchmarks/results/profile_validation_$(hw)_$1$(tp_suffix _tp).json"; }
realprefill_of() { echo "benchmarks/results/prefill_sharegpt_$(hw)_$1.json"; }

start() {
  mkdir -p "$W/profiles" "$W/benchmarks/results"
  exec > >(tee -a "$W/setup.log") 2>&1
  echo "== $(date -u +%FT%TZ) start: sizes $SIZES, files $(profile_of SIZE) $(validation_of SIZE)"
  prepare_machine
  [ "$ADMISSION" = 1 ] && cp profiles/*-llama2-*.json "$W/profiles/"
  cp "$0" scripts/gpu/server.sh scripts/gpu/ttft_check.py scripts/gpu/prefill_sweep.py scripts/gpu/validate_raw.py scripts/gpu/ttft_sharegpt.py \
    scripts/gpu/prefill_sharegpt.py "$W/"
  rm -f "$W"/done "$W"/done-*
  setsid nohup bash "$W/profile_h200.sh" pipeline >"$W/pipeline.log" 2>&1 </dev/null &
  echo "pipeline started"
}

one_shape() {  # one_shape SIZE: server, profile, sweep, validation, server stopped; returns the first failure
  local size=$1 profile validation gpu rc t0
  SHAPE=llama2-$size MODEL_DIR=/tmp/models/llama2-$size
  profile=$(profile_of "$size") validation=$(validation_of "$size") gpu=$(gpu_name)
  echo "== $(date -u +%FT%TZ) $SHAPE on $gpu -> $profile, $validation"
  python3 -m aladdin model init "$MODEL_DIR" --shape "$SHAPE" || return 4
  if [ "$ADMISSION" = 1 ]; then
    SERVER_EXTRA=(--num-gpu-blocks-override "$(python3 -c "import json; print(json.load(open('$profile'))['kv']['num_blocks'] + 1)")")
  fi
  SERVER_LOG="server-$size.log" start_server
  t0=$(date +%s)
  await_server
  echo "== server up $(( $(date +%s) - t0 )) s after start"
  grep -E "KV cache|Maximum concurrency|Graph capturing|init engine" "server-$size.log" | tail -n 6
  if [ "$REALPREFILL" = 1 ]; then
    python3 prefill_sharegpt.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -n "$REALPREFILL_N" \
      --seed "$REALPREFILL_SEED" --max-output-tokens "$VALIDATE_MAX_OUT" -o "$(realprefill_of "$size")" || return 6
    stop_server
    return 0
  fi
  if [ "$ADMISSION" = 1 ]; then
    python3 -m aladdin profile admission "$profile" --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" \
      2>&1 | tr '\r' '\n' | tee "admission-$size.log"
    rc=${PIPESTATUS[0]}
    stop_server
    return "$rc"
  fi
  if [ "$DIAG" = 1 ]; then
    python3 ttft_check.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" --lengths 32 128 512 \
      --outputs 1 8 64 256 --repeats 5 -o "ttft_diag_$size.json" || return 6
    python3 ttft_sharegpt.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -n "$VALIDATE_N" \
      --max-output-tokens "$VALIDATE_MAX_OUT" -o "ttft_sharegpt_$size.json" || return 6
    stop_server
    return 0
  fi
  if [ "$size" = "${SIZES%% *}" ]; then
    python3 ttft_check.py --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" -o "ttft_check_$size.json" || return 6
  fi
  t0=$(date +%s)
  python3 -m aladdin profile --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" \
    --max-num-seqs "$MAX_NUM_SEQS" --max-batched-tokens "$MAX_BATCHED" --max-prompt-tokens "$MAX_PROMPT" \
    --decode-tokens "$DECODE_TOKENS" --prefill-tokens "$PREFILL_TOKENS" --gpus-per-worker "$TP" --hardware "$gpu" \
    -o "$profile" 2>&1 | tr '\r' '\n' | tee "profile-$size.log"
  rc=${PIPESTATUS[0]}
  echo "== $(date -u +%FT%TZ) profile rc=$rc in $(( $(date +%s) - t0 )) s"
  [ "$rc" = 0 ] || return "$rc"
  if [ "$SWEEP_REPEATS" -gt 0 ]; then
    t0=$(date +%s)
    python3 prefill_sweep.py "$profile" --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" \
      --repeats "$SWEEP_REPEATS" | tee "sweep-$size.log"
    rc=${PIPESTATUS[0]}
    echo "== $(date -u +%FT%TZ) prefill sweep rc=$rc in $(( $(date +%s) - t0 )) s"
    [ "$rc" = 0 ] || return "$rc"
  fi
  t0=$(date +%s)
  python3 validate_raw.py "$profile" --host "http://127.0.0.1:$PORT" --tokenizer "$MODEL_DIR" \
    -n "$VALIDATE_N" --max-output-tokens "$VALIDATE_MAX_OUT" --group-size "$VALIDATE_GROUP" --json "$validation" \
    2>&1 | tr '\r' '\n' | tee "validate-$size.log"
  rc=${PIPESTATUS[0]}
  echo "== $(date -u +%FT%TZ) validate rc=$rc in $(( $(date +%s) - t0 )) s"
  stop_server
  return "$rc"
}

pipeline() {
  cd "$W" || exit 1
  export PYTHONPATH=$CLIENT_PATH
  local size rc=0 r
  for size in $SIZES; do
    [ "$DIAG" = 1 ] && [ "$size" != "${SIZES%% *}" ] && continue
    one_shape "$size"; r=$?
    echo "$r" >"done-$size"
    [ "$r" = 0 ] || { rc=$r; stop_server; }
  done
  echo "== $(date -u +%FT%TZ) pipeline rc=$rc"
  echo "$rc" >done
}

wait_done() {  # wait_done S [SIZE]
  local limit=$1 size=${2:-} marker f
  marker=$W/done; [ -n "$size" ] && marker=$W/done-$size
  for _ in $(seq 1 "$limit"); do [ -f "$marker" ] || [ -f "$W/done" ] && break; sleep 1; done
  for size_ in $SIZES; do
    for f in "$W/$(profile_of "$size_")" "$W/$(validation_of "$size_")" "$W/$(realprefill_of "$size_")"; do [ -f "$f" ] && cp "$f" "${OUT:-/tmp}/"; done
  done
  (cd "$W" && tar -czf "${OUT:-/tmp}/logs.tgz" --ignore-failed-read ./*.log ./*.json 2>/dev/null)
  tail -n 60 "$W/pipeline.log" 2>/dev/null
  nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv,noheader
  ls "$W"/done* 2>/dev/null | xargs -r -n1 sh -c 'echo "$(basename "$0")=$(cat "$0")"'
  if [ -f "$marker" ] || [ -f "$W/done" ]; then echo "DONE"; else echo "RUNNING"; exit 3; fi
}

case "${1:-}" in
  start) start ;;
  pipeline) pipeline ;;
  wait) wait_done "${2:-540}" "${3:-}" ;;
  *) echo "usage: $0 start | wait [S [SIZE]]"; exit 1 ;;
esac
