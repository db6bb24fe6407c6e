"""Shared fixtures. The slow real-vLLM tests share ONE tiny-model vLLM CPU server per session, and
the router's and picker's ONE pair of workers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def aladdin_home(tmp_path_factory) -> Path:
    """Keep model folders and cluster state of the test session out of the user's ~/.aladdin."""
    home = tmp_path_factory.mktemp("aladdin_home")
    old = os.environ.get("ALADDIN_HOME")
    os.environ["ALADDIN_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("ALADDIN_HOME", None)
    else:
        os.environ["ALADDIN_HOME"] = old


@pytest.fixture(scope="session")
def tiny_model_dir(aladdin_home) -> Path:
    from aladdin.modeldir import default_model_dir

    return default_model_dir("tiny")


@pytest.fixture(scope="session")
def vllm_server(tiny_model_dir, tmp_path_factory):
    """One real vLLM CPU server (tiny Llama, dummy weights, 16k-token KV cache) for the session."""
    from aladdin.cluster import ClusterConfig, LocalCluster, free_port_block

    config = ClusterConfig(
        workers=1,
        kv_tokens=16384,
        base_port=free_port_block(1),
        model_dir=tiny_model_dir,
        state_dir=tmp_path_factory.mktemp("cluster"),
    )
    with LocalCluster(config) as cluster:
        yield cluster.workers[0]


@pytest.fixture(scope="session")
def mixed_cluster(tiny_model_dir, tmp_path_factory):
    """Two real vLLM CPU workers for the front ends' tests (router, picker): worker 0 with the
    engine plugin and a 2,048-token KV cache, worker 1 stock (tests/mixedcluster.py). The
    router's last test kills a worker, so it runs after the picker's (file order)."""
    from mixedcluster import MixedCluster

    from aladdin.cluster import ClusterConfig, free_port_block

    config = ClusterConfig(workers=2, kv_tokens=8192, max_model_len=2048, base_port=free_port_block(2),
                           model_dir=tiny_model_dir, state_dir=tmp_path_factory.mktemp("mixed_cluster"))
    with MixedCluster(config) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def chromium(tmp_path_factory):
    """Render a page in Debian's headless chromium: ``chromium(path) -> (dom, screenshot png path)``.

    The set-up installs chromium; CI fails rather than skips when it is missing.
    """
    import shutil
    import subprocess

    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is missing; the set-up (scripts/setup.sh) installs Debian's chromium")
        pytest.skip("chromium is not installed (apt-get install -y chromium)")
    profile = tmp_path_factory.mktemp("chromium-profile")
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}"]

    def render(page: Path) -> tuple[str, Path]:
        dom = subprocess.run([*flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
        assert dom.returncode == 0, dom.stderr[-2000:]
        shot = page.with_suffix(".png")
        subprocess.run([*flags, f"--screenshot={shot}", "--window-size=1280,2000", page.as_uri()],
                       capture_output=True, timeout=120, check=True)
        return dom.stdout, shot

    return render
