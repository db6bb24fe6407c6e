# The two commands a new user needs: `make demo` (the main job) and `make test`.
# Both run the idempotent set-up first.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: setup demo test test-quick clean
setup:
	@bash scripts/setup.sh

demo: setup
	$(VENV)/bin/aladdin demo

test: setup
	$(PY) -m pytest

# Skips the real-vLLM tests (CI runs them all).
test-quick: setup
	$(PY) -m pytest -m "not vllm"

clean:
	rm -rf $(VENV) build *.egg-info
