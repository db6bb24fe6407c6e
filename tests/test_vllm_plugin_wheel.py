"""The built wheel, installed into a separate environment that already has vLLM, serves with the
README's command: the plugin loads from the installed package, not from this checkout."""

from __future__ import annotations

import configparser
import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from aladdin.cluster import SERVER_MODULE, ClusterConfig, LocalCluster, free_port_block

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]


def copy_build_inputs(dest: Path) -> None:
    """The checkout's top-level files and the package folders setup.cfg maps (an in-tree build would leave build/)."""
    options = configparser.ConfigParser()
    options.read(ROOT / "setup.cfg")
    folders = {line.split("=")[1].strip() for line in options["options"]["package_dir"].strip().splitlines()}
    for folder in folders:
        shutil.copytree(ROOT / folder, dest / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for path in ROOT.iterdir():
        if path.is_file():
            shutil.copy2(path, dest / path.name)


def readme_command() -> tuple[str, str, list[str]]:
    """VLLM_PLUGINS, the module and the flags after ``--model MODEL`` of README's 'Use inside your vLLM'."""
    section = (ROOT / "README.md").read_text().split("## Use inside your vLLM", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1).replace("\\\n", " ")
    env, python, dash_m, module, model_flag, model, *flags = shlex.split(
        next(line for line in block.splitlines() if line.startswith("VLLM_PLUGINS=")))
    assert (python, dash_m, model_flag, model) == ("python", "-m", "--model", "MODEL")
    return env.removeprefix("VLLM_PLUGINS="), module, flags


def run(*args, **kwargs) -> str:
    result = subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def get(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=30) as response:
        return response.status, response.read().decode()


def test_the_wheel_installed_beside_vllm_serves_with_the_readme_flags(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    copy_build_inputs(tmp_path / "src")  # the wheel, built offline from a copy of the checkout
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
        tmp_path / "src", "-w", tmp_path / "dist")
    (wheel,) = (tmp_path / "dist").glob("aladdin_slo-*.whl")
    version = wheel.name.split("-")[1]

    # A separate venv that sees this environment's vLLM: `--system-site-packages` would expose the base
    # interpreter's site-packages, so a .pth line adds the folder that holds vLLM instead. A .pth line only
    # extends sys.path: the .pth files there (the checkout's editable install) stay inactive.
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip())
    vllm_site = Path(importlib.util.find_spec("vllm").origin).parents[1]
    (site / "project_env.pth").write_text(f"{vllm_site}\n")
    run(python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", wheel)

    cwd = tmp_path / "cwd"  # `python -m` puts the working directory first on sys.path: not the checkout
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    where = run(python, "-c", "import aladdin, aladdin.plugin.vllm.scheduler as s, vllm; "
                              "print(aladdin.__file__, s.__file__, vllm.__file__, aladdin.__version__)").split()
    assert all(Path(p).is_relative_to(site) for p in where[:2]), where
    assert Path(where[2]).is_relative_to(vllm_site) and where[3] == version, where

    plugins, module, flags = readme_command()
    assert module == SERVER_MODULE
    monkeypatch.setenv("VLLM_PLUGINS", plugins)
    config = ClusterConfig(workers=1, kv_tokens=2080, max_model_len=2048, base_port=free_port_block(1),
                           model_dir=tiny_model_dir, state_dir=tmp_path / "cluster", startup_timeout_s=600,
                           extra_args=tuple(flags), python=str(python))
    with LocalCluster(config) as cluster:  # ready once /v1/models answers; stopped on exit
        worker = cluster.workers[0]
        assert get(worker.url + "/health")[0] == 200
        log = Path(worker.log_path).read_text(errors="replace")
        assert re.search(r"aladdin: AladdinScheduler \S+ active on vLLM", log), log[-3000:]
        state = json.loads(get(worker.url + "/aladdin/state")[1])
        assert state["plugin_version"] == version, state
        request = urllib.request.Request(
            worker.url + "/v1/completions", headers={"Content-Type": "application/json"},
            data=json.dumps({"model": "tiny", "prompt": "hello", "max_tokens": 4, "ignore_eos": True}).encode())
        with urllib.request.urlopen(request, timeout=300) as response:
            assert response.status == 200
            assert json.loads(response.read())["usage"]["completion_tokens"] == 4
        metrics = get(worker.url + "/metrics")[1]
        assert re.search(rf"^aladdin:kv_capacity_tokens {state['capacity_tokens']}(\.0)?$", metrics, re.M)
