"""Local clusters of real vLLM CPU servers: the harness every live test and demo runs on.

Each worker is a separate ``vllm.entrypoints.openai.api_server`` process group on a loopback
port, pinned to its own core, with a KV cache bounded in tokens so that admission matters
even for a tiny model. A state file lets ``aladdin cluster down`` stop a cluster that
``aladdin cluster up`` started from another shell.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aladdin.errors import AladdinError
from aladdin.modeldir import default_model_dir, read_shape
from aladdin.paths import aladdin_home

SERVER_NICENESS = 5
BLOCK_SIZE = 32  # vLLM's CPU attention needs a multiple of 32


SERVER_MODULE = "vllm.entrypoints.openai.api_server"


@dataclass
class ClusterConfig:
    """What to start: N workers of one model shape, each with a KV budget in tokens (the same,
    or one per worker in ``kv_tokens_each``: a pool of workers of different sizes)."""

    workers: int = 1
    shape: str = "tiny"
    kv_tokens: int = 32768
    kv_tokens_each: tuple[int, ...] = ()  # one per worker; empty: kv_tokens for every one
    max_model_len: int = 4096
    max_num_seqs: int = 64
    max_num_batched_tokens: int = 2048  # chunked-prefill token budget per iteration
    base_port: int = 8100
    host: str = "127.0.0.1"
    model_dir: Path | None = None
    state_dir: Path = field(default_factory=lambda: aladdin_home() / "cluster")
    served_model_name: str = "tiny"
    startup_timeout_s: float = 300.0
    extra_args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)  # extra environment of every worker (VLLM_PLUGINS, say)
    python: str = sys.executable  # the interpreter whose vLLM runs the workers (another environment's, say)

    def kv_tokens_of(self, index: int) -> int:
        return self.kv_tokens_each[index] if self.kv_tokens_each else self.kv_tokens

    def validate(self) -> None:
        if self.workers < 1:
            raise AladdinError(f"--workers must be at least 1, got {self.workers}")
        if self.kv_tokens_each and len(self.kv_tokens_each) != self.workers:
            raise AladdinError(f"--kv-tokens lists {len(self.kv_tokens_each)} sizes for {self.workers} workers; "
                               "give one size, or one per worker")
        for kv_tokens in self.kv_tokens_each or (self.kv_tokens,):
            if kv_tokens < BLOCK_SIZE:
                raise AladdinError(f"--kv-tokens must be at least one block ({BLOCK_SIZE}), got {kv_tokens}")
            usable = usable_kv_tokens(kv_tokens)
            if usable < self.max_model_len:
                raise AladdinError(
                    f"--kv-tokens ({kv_tokens}) must hold one request of --max-model-len "
                    f"({self.max_model_len}) tokens, or vLLM refuses to start: vLLM keeps one of its "
                    f"{kv_tokens // BLOCK_SIZE} blocks of {BLOCK_SIZE} tokens back, leaving {usable}; "
                    f"give at least {self.max_model_len + BLOCK_SIZE}"
                )


def usable_kv_tokens(kv_tokens: int) -> int:
    """The tokens a worker given ``kv_tokens`` can hold: whole blocks, less vLLM's null block."""
    return max(kv_tokens // BLOCK_SIZE - 1, 0) * BLOCK_SIZE


@dataclass
class Worker:
    """One running vLLM server."""

    index: int
    port: int
    pid: int
    log_path: str
    core: int
    url: str


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(n: int) -> int:
    """A base port with ``n`` consecutive free loopback ports, for a cluster started by a test or benchmark."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            base = sock.getsockname()[1]
        if base + n < 65535 and all(port_is_free("127.0.0.1", base + i) for i in range(n)):
            return base
    raise AladdinError(f"no block of {n} free loopback ports")


def log_tail(path: str | Path, lines: int = 6) -> str:
    """The last lines of a log, led by its last ``...Error: ...`` line (the usual root cause)."""
    try:
        text = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    tail = text[-lines:]
    errors = [line for line in text if re.search(r"\w(Error|Exception): ", line)]
    if errors and errors[-1] not in tail:
        tail = [errors[-1], "..."] + tail
    return "\n".join(tail)


def _http_ok(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


class LocalCluster:
    """Start, wait for, and stop N local vLLM CPU workers. Usable as a context manager."""

    def __init__(self, config: ClusterConfig):
        config.validate()
        self.config = config
        self.workers: list[Worker] = []
        self._procs: dict[int, subprocess.Popen] = {}

    @property
    def urls(self) -> list[str]:
        return [w.url for w in self.workers]

    @property
    def state_file(self) -> Path:
        return self.config.state_dir / "state.json"

    def _model_dir(self) -> Path:
        cfg = self.config
        if cfg.model_dir is not None:
            read_shape(cfg.model_dir)  # fails clearly on a folder we did not write
            return Path(cfg.model_dir)
        return default_model_dir(cfg.shape)

    def _command(self, model_dir: Path, port: int, index: int) -> list[str]:
        cfg = self.config
        blocks = cfg.kv_tokens_of(index) // BLOCK_SIZE
        return [
            cfg.python, "-m", SERVER_MODULE,
            "--model", str(model_dir),
            "--served-model-name", cfg.served_model_name,
            "--load-format", "dummy",
            "--host", cfg.host,
            "--port", str(port),
            "--max-model-len", str(cfg.max_model_len),
            "--max-num-seqs", str(cfg.max_num_seqs),
            "--max-num-batched-tokens", str(cfg.max_num_batched_tokens),
            "--block-size", str(BLOCK_SIZE),
            "--num-gpu-blocks-override", str(blocks),
            "--enforce-eager",
            "--generation-config", "vllm",
            *cfg.extra_args,
        ]

    def _environment(self, core: int, model_dir: Path, index: int) -> dict[str, str]:
        env = dict(os.environ)
        shape = read_shape(model_dir)
        kv_bytes = self.config.kv_tokens_of(index) * shape.kv_bytes_per_token
        # The CPU backend sizes its KV pool in whole GiB; the block override above trims it.
        env["VLLM_CPU_KVCACHE_SPACE"] = str(max(1, -(-kv_bytes // 2**30)))
        env["VLLM_CPU_OMP_THREADS_BIND"] = str(core)
        env.setdefault("VLLM_LOGGING_LEVEL", "INFO")
        env["HF_HUB_OFFLINE"] = "1"
        env["TRANSFORMERS_OFFLINE"] = "1"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.config.env)
        return env

    def start(self) -> list[Worker]:
        """Start every worker and block until all answer ``/v1/models``."""
        cfg = self.config
        if not vllm_available():
            raise AladdinError(
                f"vLLM is not installed in this Python ({sys.executable}); run the set-up (make setup)"
            )
        ports = [cfg.base_port + i for i in range(cfg.workers)]
        busy = [p for p in ports if not port_is_free(cfg.host, p)]
        if busy:
            raise AladdinError(
                f"port(s) {', '.join(map(str, busy))} on {cfg.host} already in use; "
                "stop what holds them ('aladdin cluster down') or pass --base-port"
            )
        model_dir = self._model_dir()
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        cores = os.cpu_count() or 1
        try:
            for i, port in enumerate(ports):
                log_path = cfg.state_dir / f"worker{i}.log"
                core = i % cores
                with open(log_path, "wb") as log:
                    proc = subprocess.Popen(
                        self._command(model_dir, port, i),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        env=self._environment(core, model_dir, i),
                        start_new_session=True,  # own process group: stop() kills engine children too
                        # Below the load generator's priority: on a small machine the client that
                        # measures the servers must not be starved by them.
                        preexec_fn=lambda: os.nice(SERVER_NICENESS),
                    )
                url = f"http://{cfg.host}:{port}"
                self.workers.append(Worker(i, port, proc.pid, str(log_path), core, url))
                self._procs[proc.pid] = proc
            self._write_state()
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self.workers

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.config.startup_timeout_s
        pending = list(self.workers)
        while pending:
            for worker in list(pending):
                proc = self._procs[worker.pid]
                if proc.poll() is not None:
                    raise AladdinError(
                        f"vLLM worker {worker.index} (port {worker.port}) exited with code "
                        f"{proc.returncode} during start; last lines of {worker.log_path}:\n"
                        + log_tail(worker.log_path)
                    )
                if _http_ok(worker.url + "/v1/models"):
                    pending.remove(worker)
            if not pending:
                return
            if time.monotonic() > deadline:
                raise AladdinError(
                    f"vLLM worker(s) {[w.index for w in pending]} not ready after "
                    f"{self.config.startup_timeout_s:.0f}s; last lines of {pending[0].log_path}:\n"
                    + log_tail(pending[0].log_path)
                )
            time.sleep(0.5)

    def wait_for_exit(self, poll_s: float = 0.5) -> Worker:
        """Block until some worker's server exits; return that worker."""
        while True:
            for worker in self.workers:
                if self._procs[worker.pid].poll() is not None:
                    return worker
            time.sleep(poll_s)

    def _write_state(self) -> None:
        state = {"workers": [asdict(w) for w in self.workers], "created": time.time()}
        self.state_file.write_text(json.dumps(state, indent=2))

    def stop(self, timeout_s: float = 30.0) -> None:
        """Stop every worker's process group: SIGTERM, then SIGKILL after ``timeout_s``."""
        stop_process_groups([w.pid for w in self.workers], timeout_s)
        for proc in self._procs.values():
            try:
                proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        self.workers = []
        self._procs.clear()
        self.state_file.unlink(missing_ok=True)

    def __enter__(self) -> "LocalCluster":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop_process_groups(pids: list[int], timeout_s: float = 30.0) -> None:
    for pid in pids:
        try:
            os.killpg(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.2)
    for pid in pids:
        if _alive(pid):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def read_state(state_dir: Path) -> list[Worker]:
    path = state_dir / "state.json"
    if not path.exists():
        return []
    try:
        return [Worker(**w) for w in json.loads(path.read_text())["workers"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise AladdinError(f"cluster state file {path} is corrupt ({exc}); delete it") from None


def stop_from_state(state_dir: Path) -> list[Worker]:
    """Stop the cluster recorded in ``state_dir`` (``aladdin cluster down``)."""
    workers = read_state(state_dir)
    stop_process_groups([w.pid for w in workers])
    (state_dir / "state.json").unlink(missing_ok=True)
    return workers


# vLLM's and the engine plugin's counters a run reports (a stock server lacks the aladdin ones: 0)
SERVER_COUNTERS = {"preemptions": "vllm:num_preemptions_total", "rejected": "aladdin:rejected_total",
                   "handed_back": "aladdin:handed_back_total"}


def server_counters(url: str, timeout_s: float = 30.0) -> dict[str, float]:
    """One server's SERVER_COUNTERS now, from its Prometheus ``/metrics``."""
    from aladdin.plugin.router.workers import metric_sum, parse_metrics

    try:
        with urllib.request.urlopen(url + "/metrics", timeout=timeout_s) as resp:
            samples = parse_metrics(resp.read().decode())
    except (urllib.error.URLError, OSError) as exc:
        raise AladdinError(f"cannot read {url}/metrics: {exc}") from None
    return {key: metric_sum(samples, name) or 0.0 for key, name in SERVER_COUNTERS.items()}


class LocalFrontEnd:
    """``aladdin router`` (or ``aladdin picker``) as a child process in front of local workers, as a
    user runs it.

    ``args``: further flags. ``port``: the router's port, or the picker's HTTP (metrics) port; a
    picker names its workers HOST:PORT and serves ext_proc on ``grpc_port``. A context manager:
    started, with every worker up, on entry, stopped (SIGINT, then SIGKILL) on exit; its log is
    ``log_path``.
    """

    def __init__(self, workers: list[str], port: int, log_path: Path, args: tuple[str, ...] = (),
                 python: str = sys.executable, startup_timeout_s: float = 120.0, picker_grpc_port: int | None = None):
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = Path(log_path)
        if picker_grpc_port is None:
            self.command = [python, "-m", "aladdin", "router", "--port", str(port),
                            *[arg for url in workers for arg in ("--worker", url)], *args]
        else:
            self.command = [python, "-m", "aladdin", "picker", "--metrics-port", str(port),
                            "--grpc-port", str(picker_grpc_port),
                            *[arg for url in workers for arg in ("--worker", url.split("://", 1)[-1])], *args]
        self.kind = self.command[3]
        self.startup_timeout_s = startup_timeout_s
        self.worker_count = len(workers)
        self._proc: subprocess.Popen | None = None

    def _all_up(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2.0) as resp:
                return len(json.loads(resp.read()).get("workers_up", ())) == self.worker_count
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._all_up():
            if self._proc.poll() is not None:
                raise AladdinError(f"the {self.kind} exited with code {self._proc.returncode} during start; "
                                   f"last lines of {self.log_path}:\n" + log_tail(self.log_path))
            if time.monotonic() > deadline:
                self.stop()
                raise AladdinError(f"the {self.kind} did not see all {self.worker_count} workers up after "
                                   f"{self.startup_timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.2)

    def metrics(self) -> str:
        """Its Prometheus exposition now."""
        with urllib.request.urlopen(self.url + "/metrics", timeout=10.0) as resp:
            return resp.read().decode()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGINT)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> "LocalFrontEnd":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
