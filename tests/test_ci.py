"""The CI script's verdict on pytest's exit codes (with a stand-in ``make``: the point is the script, not the suite)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_ci(tmp_path: Path, make_rc: int) -> subprocess.CompletedProcess:
    """``.ci/run`` with a ``make`` on PATH that only exits with ``make_rc``."""
    fake = tmp_path / "make"
    fake.write_text(f"#!/bin/sh\nexit {make_rc}\n")
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(ROOT / ".ci" / "run")], capture_output=True, text=True, env=env, timeout=60)


def test_an_empty_suite_fails_ci(tmp_path):
    proc = run_ci(tmp_path, 5)
    assert proc.returncode != 0
    assert "collected no tests" in proc.stderr


@pytest.mark.parametrize("rc", [0, 1, 2])
def test_other_exit_codes_pass_through(tmp_path, rc):
    assert run_ci(tmp_path, rc).returncode == rc
