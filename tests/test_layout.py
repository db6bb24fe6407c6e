"""The architecture as the issue states it: the harness has no import cycle, domain errors are
not CLI types, and benchmarks depend on the product, never on the tests."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

from aladdin.errors import AladdinError

ROOT = Path(__file__).resolve().parents[1]


def test_model_folders_do_not_import_the_cluster_harness():
    code = "import sys, aladdin.modeldir; print('aladdin.cluster' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_domain_errors_are_not_click_exceptions():
    assert not issubclass(AladdinError, click.ClickException)


def test_benchmarks_and_scripts_do_not_import_the_tests():
    offenders = [
        str(path.relative_to(ROOT)) for folder in ("benchmarks", "scripts") for path in (ROOT / folder).rglob("*.py")
        if re.search(r"^\s*(from|import)\s+tests\b", path.read_text(encoding="utf-8"), re.M)
    ]
    assert offenders == []


def test_pytest_is_a_dev_dependency_only():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    runtime = {re.split(r"[<>=\[ ;]", dep, maxsplit=1)[0] for dep in project["dependencies"]}
    assert "pytest" not in runtime and any(d.startswith("pytest") for d in project["optional-dependencies"]["dev"])
