"""What the router adds: TTFT and TBT through it vs straight to the workers, and the streamed
requests per second one router process sustains.

The workers are ``benchmarks/stream_server.py`` (one process serving ``--workers`` ports; first
token after ``--ttft``, then one every ``--tbt``, model ``tiny`` so the router tokenizes with the
tiny model's real tokenizer). The router runs as users run it, a separate
``aladdin router --worker URL ... --policy P`` process, pinned to its own core when the machine
has more than one; the fake workers and the load generator (an aiohttp client in its own process,
open-loop Poisson arrivals, perf_counter timestamps) share the other cores.

1. Latency, per policy: one Poisson schedule at ``--rate`` req/s; each arrival goes, by a seeded
   coin, straight to a worker (round-robin) or through the router, so both paths see the same
   load on the same workers at the same moments, and machine noise hits both. TTFT is from the
   client's send to the first token event; TBT is every gap between two token events (events
   read in one socket read share its timestamp). ``added`` is router minus direct. The fake
   workers' own view of the same requests (their TTFT and write gaps, per path) is reported
   beside it, so what the client measures is separable from the server's own error.
2. Throughput, per policy: router-only steps at ``--throughput-rates`` (``--throughput-tokens``
   per request); a step is sustained when every request succeeds, completions keep up with the
   schedule (>= 97% of its rate), and the router path's TTFT p99 stays within ``--ttft-slack-ms``
   of the workers' TTFT p50 (no queueing in the router); the ladder stops at the first step that
   is not. Also recorded: the router process's CPU per request (so its ceiling at 100% of one
   core is known even when the load generator saturates first) and the load generator's own
   dispatch lag and CPU.

    .venv/bin/python benchmarks/bench_router_overhead.py --out benchmarks/results/router_overhead.json

The full run takes under 3 minutes. Prompts are English text of about ``--prompt-tokens``
tiny-model tokens (``--prompt-kind ids`` sends token-id lists instead: no tokenizing).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODEL = "tiny"
WORDS = ("the quick brown fox jumps over a lazy dog while the scheduler places each request on the worker "
         "with enough memory left for its prompt and every token it will generate under a latency target that "
         "users feel as the time to the first word and the pace of the words after it").split()
GOALS = {"added_ttft_p99_ms": 2.0, "added_tbt_p99_ms": 0.5, "streamed_req_per_s": 500.0}


# ---------------------------------------------------------------------------------------- helpers


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def wait_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited with {proc.returncode} before answering")
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.1)


def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system) of every thread of a process (the router's tokenizer thread too)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def make_prompts(kind: str, tokens: int, count: int, seed: int) -> list:
    rng = random.Random(seed)
    if kind == "ids":
        return [[rng.randrange(100, 30000) for _ in range(tokens)] for _ in range(count)]
    # ~1.1 tiny-model tokens per word of this vocabulary
    words = max(int(tokens / 1.1), 1)
    return [" ".join(rng.choice(WORDS) for _ in range(words)) for _ in range(count)]


# ---------------------------------------------------------------------------------------- client


async def client_phase(spec: dict) -> dict:
    """One open-loop phase (runs in the client process): send on the schedule, time every event."""
    import aiohttp

    rng = random.Random(spec["seed"])
    prompts = spec["prompts"]
    n = int(spec["rate"] * spec["duration"])
    offsets, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(spec["rate"])
        offsets.append(t)
    routes = spec["paths"]  # [[name, share, [urls]]]: each arrival takes one by a seeded draw, in this order
    urls = {name: targets for name, _, targets in routes}

    def draw() -> str:
        u, edge = rng.random(), 0.0
        for name, share, _ in routes:
            edge += share
            if u < edge:
                return name
        return routes[-1][0]

    paths = [draw() for _ in range(n)]
    results: dict[str, dict[str, list]] = {p: {"ttft": [], "tbt": [], "errors": [], "done": []} for p in urls}
    lags: list[float] = []
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=60)
    marker = b'"choices": [{'

    async def one(i: int, path: str) -> None:
        targets = urls[path]
        url = targets[i % len(targets)]
        body = json.dumps({"model": MODEL, "prompt": prompts[i % len(prompts)], "max_tokens": spec["tokens"],
                           "stream": True, "user": f"{path}:{spec['tag']}{i}"}).encode()
        out = results[path]
        try:
            sent = time.perf_counter()
            async with session.post(url + "/v1/completions", data=body,
                                    headers={"Content-Type": "application/json"}) as resp:
                if resp.status != 200:
                    out["errors"].append(f"HTTP {resp.status}: {(await resp.text())[:200]}")
                    return
                buffer, times = b"", []
                async for data in resp.content.iter_any():
                    now = time.perf_counter()
                    buffer += data
                    *events, buffer = buffer.split(b"\n\n")
                    for event in events:
                        if marker in event:
                            times.append(now)
                        elif b'"error"' in event:
                            out["errors"].append(event[:200].decode("utf-8", "replace"))
                            return
            if len(times) != spec["tokens"]:
                out["errors"].append(f"{len(times)} token events, expected {spec['tokens']}")
                return
            out["ttft"].append(times[0] - sent)
            out["tbt"].extend(b - a for a, b in zip(times, times[1:]))
            out["done"].append(times[-1])
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            out["errors"].append(f"{type(exc).__name__}: {exc}"[:200])

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # warm-up: open connections on both paths (and the router's to the workers), not measured
        warm = [one(-k - 1, p) for k in range(spec["warmup"]) for p in urls]
        for coro in warm:
            asyncio.ensure_future(coro)
            await asyncio.sleep(0.002)
        await asyncio.sleep(0.5 + spec["tokens"] * spec["tbt"])
        for p in results.values():
            for v in p.values():
                v.clear()
        await session.post(spec["stats_url"].replace("/stats", "/reset"))
        pids = spec["pids"]
        cpu0 = {k: process_cpu(pid) for k, pid in pids.items()}
        cpu0["client"] = time.process_time()
        tasks = []
        start = time.perf_counter() + 0.05
        for i, (offset, path) in enumerate(zip(offsets, paths)):
            delay = start + offset - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            lags.append(time.perf_counter() - (start + offset))
            tasks.append(asyncio.ensure_future(one(i, path)))
        sent_span = time.perf_counter() - start
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
        cpu = {k: process_cpu(pid) - cpu0[k] for k, pid in pids.items()}
        cpu["client"] = time.process_time() - cpu0["client"]
        async with session.get(spec["stats_url"]) as resp:
            server = await resp.json()
    return {"requests": n, "schedule_span": offsets[-1] if offsets else 0.0,
            "paths": {p: sum(1 for x in paths if x == p) for p in urls},
            "results": results, "lags": lags, "start": start, "sent_span": sent_span, "wall": wall, "cpu": cpu,
            "server": server}


def client_main(spec_file: str, out_file: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    spec = json.loads(Path(spec_file).read_text())
    Path(out_file).write_text(json.dumps(asyncio.run(client_phase(spec))))


# ---------------------------------------------------------------------------------------- phases


class Bench:
    def __init__(self, args: argparse.Namespace, tmp: Path):
        self.args = args
        self.tmp = tmp
        cpus = sorted(os.sched_getaffinity(0))
        self.router_cpus = args.router_cpus or (str(cpus[-1]) if len(cpus) > 1 else "")
        pinned = {int(c) for c in self.router_cpus.split(",") if c} if self.router_cpus else set()
        self.harness_cpus = args.harness_cpus or ",".join(str(c) for c in cpus if c not in pinned) or ""
        self.ports = free_ports(args.workers + 1)
        self.worker_urls = [f"http://127.0.0.1:{p}" for p in self.ports[:-1]]
        self.router_port = self.ports[-1]
        self.prompts = make_prompts(args.prompt_kind, args.prompt_tokens, 64, args.seed)
        self.procs: list[subprocess.Popen] = []
        self.commands: dict[str, str] = {}

    def pin(self, cpus: str) -> list[str]:
        return ["taskset", "-c", cpus] if cpus else []

    def start_workers(self) -> subprocess.Popen:
        a = self.args
        cmd = [*self.pin(self.harness_cpus), sys.executable, str(ROOT / "benchmarks" / "stream_server.py"),
               "--ports", ",".join(map(str, self.ports[:-1])), "--ttft", str(a.ttft), "--tbt", str(a.tbt),
               "--model", MODEL]
        self.commands["workers"] = shlex.join(cmd)
        proc = subprocess.Popen(cmd)
        self.procs.append(proc)
        wait_http(self.worker_urls[-1] + "/v1/models", proc)
        return proc

    def start_router(self, policy: str) -> tuple[subprocess.Popen, list[str]]:
        a = self.args
        cmd = [*self.pin(self.router_cpus), str(Path(sys.executable).parent / "aladdin"), "router"]
        for url in self.worker_urls:
            cmd += ["--worker", url]
        cmd += ["--policy", policy, "--port", str(self.router_port)]
        if policy.startswith("aladdin"):
            cmd += ["--profile", a.profile]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"router-{policy}.log", "w"))
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{self.router_port}/health", proc)
        return proc, cmd

    def client(self, name: str, rate: float, duration: float, router_share: float, pids: dict[str, int],
               warmup: int, tokens: int, routes: list | None = None) -> dict:
        """One load-generator phase; ``routes``: [[path, share, [urls]]] (default: router and direct)."""
        a = self.args
        if routes is None:
            routes = [["r", router_share, [f"http://127.0.0.1:{self.router_port}"]],
                      ["d", 1.0 - router_share, self.worker_urls]]
        spec = {"rate": rate, "duration": duration, "paths": routes, "seed": a.seed,
                "tokens": tokens, "tbt": a.tbt, "prompts": self.prompts, "warmup": warmup, "tag": name,
                "stats_url": self.worker_urls[0] + "/bench/stats", "pids": pids}
        spec_file, out_file = self.tmp / f"{name}.spec.json", self.tmp / f"{name}.out.json"
        spec_file.write_text(json.dumps(spec))
        cmd = [*self.pin(self.harness_cpus), sys.executable, __file__, "--client", str(spec_file), str(out_file)]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            raise SystemExit(f"the load generator failed ({name})")
        return json.loads(out_file.read_text())

    def stop(self, proc: subprocess.Popen) -> None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def path_summary(res: dict, server: dict | None) -> dict:
    row = {
        "requests": len(res["ttft"]), "errors": len(res["errors"]),
        "ttft_p50_ms": _ms(pct(res["ttft"], 50)), "ttft_p99_ms": _ms(pct(res["ttft"], 99)),
        "tbt_p50_ms": _ms(pct(res["tbt"], 50)), "tbt_p99_ms": _ms(pct(res["tbt"], 99)),
        "tbt_p999_ms": _ms(pct(res["tbt"], 99.9)),
    }
    if res["errors"]:
        row["first_errors"] = res["errors"][:3]
    if server:
        row["server"] = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in server.items()}
    return row


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 4)


def latency_phase(bench: Bench, policy: str, router_pid: int, workers_pid: int) -> dict:
    a = bench.args
    out = bench.client(f"lat-{policy}", a.rate, a.latency_duration, 0.5,
                       {"router": router_pid, "workers": workers_pid}, warmup=a.warmup, tokens=a.tokens)
    res, server = out["results"], out["server"]
    direct, router = path_summary(res["d"], server.get("d")), path_summary(res["r"], server.get("r"))
    added = {k: round(router[k] - direct[k], 4) for k in ("ttft_p50_ms", "ttft_p99_ms", "tbt_p50_ms", "tbt_p99_ms")
             if router[k] is not None and direct[k] is not None}
    router_cpu = out["cpu"]["router"]
    return {"rate": a.rate, "duration_s": a.latency_duration, "router_share": 0.5, "tokens_per_request": a.tokens,
            "router_cpu_ms_per_request": round(router_cpu / max(router["requests"], 1) * 1e3, 4),
            "dispatch_lag_p99_ms": _ms(pct(out["lags"], 99)), "direct": direct, "router": router, "added": added,
            "cpu_share": {k: round(v / out["wall"], 3) for k, v in out["cpu"].items()}}


def throughput_phase(bench: Bench, policy: str, router_pid: int, workers_pid: int) -> dict:
    a = bench.args
    tokens = a.throughput_tokens
    steps, best = [], None
    for rate in [float(r) for r in a.throughput_rates.split(",")]:
        out = bench.client(f"tp-{policy}-{int(rate)}", rate, a.step_duration, 1.0,
                           {"router": router_pid, "workers": workers_pid}, warmup=a.warmup, tokens=tokens)
        res, server = out["results"]["r"], out["server"].get("r") or {}
        ok = len(res["ttft"])
        # completions per second: all of them over the time from the schedule's start to the last
        # one, less one request's nominal duration (it equals the schedule's rate when keeping up)
        latency = tokens * a.tbt + a.ttft
        window = (max(res["done"]) - out["start"] - latency) if res["done"] else 0.0
        achieved = ok / window if window > 0 else None
        schedule_rate = out["requests"] / out["schedule_span"] if out["schedule_span"] else rate
        ttft_p99 = _ms(pct(res["ttft"], 99))
        server_ttft = server.get("ttft_p50_ms") or a.ttft * 1e3
        router_cpu = out["cpu"]["router"]
        sustained = (not res["errors"] and achieved is not None and achieved >= 0.97 * schedule_rate
                     and ttft_p99 is not None and ttft_p99 <= server_ttft + a.ttft_slack_ms)
        step = {
            "offered_req_per_s": rate, "requests": out["requests"], "ok": ok, "errors": len(res["errors"]),
            "achieved_req_per_s": None if achieved is None else round(achieved, 1),
            "schedule_req_per_s": round(schedule_rate, 1),
            "streamed_tokens_per_s": None if achieved is None else round(achieved * tokens, 0),
            "ttft_p50_ms": _ms(pct(res["ttft"], 50)), "ttft_p99_ms": ttft_p99,
            "tbt_p99_ms": _ms(pct(res["tbt"], 99)), "server_ttft_p99_ms": server.get("ttft_p99_ms"),
            "dispatch_lag_p99_ms": _ms(pct(out["lags"], 99)),
            "cpu_share": {k: round(v / out["wall"], 3) for k, v in out["cpu"].items()},
            "router_cpu_ms_per_request": round(router_cpu / max(ok, 1) * 1e3, 4),
            "router_cpu_us_per_event": round(router_cpu / max(ok * tokens, 1) * 1e6, 2),
            "sustained": bool(sustained),
        }
        if res["errors"]:
            step["first_errors"] = res["errors"][:3]
        steps.append(step)
        print(f"  {policy} {rate:.0f} req/s: achieved {step['achieved_req_per_s']}, ttft p99 {ttft_p99} ms, "
              f"router cpu {step['cpu_share']['router']:.2f}, client lag p99 {step['dispatch_lag_p99_ms']} ms, "
              f"sustained {sustained}", flush=True)
        if not sustained:
            break  # past the knee
        best = step
    loaded = [s for s in steps if s["ok"]]
    cpu_per_req = min((s["router_cpu_ms_per_request"] for s in loaded if s["cpu_share"]["router"] > 0.2),
                      default=None)
    return {
        "tokens_per_request": tokens, "step_duration_s": a.step_duration, "steps": steps,
        "streamed_req_per_s": best["achieved_req_per_s"] if best else 0.0,
        "offered_at_best": best["offered_req_per_s"] if best else None,
        "router_cpu_ms_per_request": cpu_per_req,
        "router_req_per_s_at_full_core": round(1e3 / cpu_per_req, 1) if cpu_per_req else None,
        "load_generator_saturated": bool(steps and (steps[-1]["dispatch_lag_p99_ms"] or 0) > 5.0),
    }


def print_table(doc: dict) -> None:
    cols = ["ttft_p50_ms", "ttft_p99_ms", "tbt_p50_ms", "tbt_p99_ms"]
    print(f"\n{'policy':10}{'path':9}" + "".join(f"{c:>13}" for c in cols) + f"{'srv ttft p99':>14}{'srv tbt p99':>13}")
    for policy, entry in doc["policies"].items():
        lat = entry["latency"]
        for path in ("direct", "router", "added"):
            row = lat[path]
            cells = "".join(f"{row.get(c, float('nan')) if row.get(c) is not None else float('nan'):>13.3f}" for c in cols)
            srv = row.get("server", {}) if path != "added" else {}
            extra = (f"{srv.get('ttft_p99_ms') or float('nan'):>14.3f}{srv.get('tbt_p99_ms') or float('nan'):>13.3f}"
                     if srv else "")
            print(f"{policy:10}{path:9}{cells}{extra}")
    print(f"\n{'policy':10}{'sustained req/s':>17}{'router cpu ms/req':>19}{'req/s at 100% core':>20}")
    for policy, entry in doc["policies"].items():
        if "throughput" not in entry:  # --skip-throughput: the latency phase's CPU per request
            print(f"{policy:10}{'-':>17}{entry['latency']['router_cpu_ms_per_request']:>19.3f}")
            continue
        tp = entry["throughput"]
        print(f"{policy:10}{tp['streamed_req_per_s']:>17.1f}{tp['router_cpu_ms_per_request'] or float('nan'):>19.3f}"
              f"{tp['router_req_per_s_at_full_core'] or float('nan'):>20.1f}")
    print("\ngoals:", json.dumps(doc["goals"]))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--client":
        client_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="jsq,aladdin", help="comma-separated router policies")
    parser.add_argument("--profile", default="profiles/cpu-tiny.json", help="the profile of aladdin* policies")
    parser.add_argument("--workers", type=int, default=4, help="fake workers (ports of one server process)")
    parser.add_argument("--ttft", type=float, default=0.02, help="fake workers' first-token delay, seconds")
    parser.add_argument("--tbt", type=float, default=0.005, help="fake workers' time between tokens, seconds")
    parser.add_argument("--tokens", type=int, default=48, help="tokens streamed per request")
    parser.add_argument("--prompt-tokens", type=int, default=300, help="about this many tiny-model tokens per prompt")
    parser.add_argument("--prompt-kind", choices=["text", "ids"], default="text")
    parser.add_argument("--rate", type=float, default=100.0, help="latency phase: req/s, both paths together")
    parser.add_argument("--latency-duration", type=float, default=20.0, help="latency phase: seconds of schedule")
    parser.add_argument("--throughput-rates", default="200,300,400,500,600,800,1000",
                        help="throughput phase: offered req/s per step, ascending (it stops at the first step "
                             "not sustained)")
    parser.add_argument("--throughput-tokens", type=int, default=32, help="throughput phase: tokens per request")
    parser.add_argument("--step-duration", type=float, default=4.0, help="seconds of schedule per step")
    parser.add_argument("--ttft-slack-ms", type=float, default=20.0,
                        help="a sustained step keeps the router path's TTFT p99 within this of the workers' p50")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests per path before each phase")
    parser.add_argument("--router-cpus", default=None, help="taskset list for the router (default: the last CPU)")
    parser.add_argument("--harness-cpus", default=None, help="taskset list for workers and client (default: the rest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--out", default="benchmarks/results/router_overhead.json")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_router_overhead.py", *sys.argv[1:]])
    print(f"command: {command}", flush=True)

    policies = [p for p in args.policies.split(",") if p]
    doc: dict = {}
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        bench = Bench(args, Path(tmp))
        try:
            workers = bench.start_workers()
            results = {}
            for policy in policies:
                router, cmd = bench.start_router(policy)
                print(f"== {policy}: {shlex.join(cmd)}", flush=True)
                entry = {"router_command": shlex.join(cmd),
                         "latency": latency_phase(bench, policy, router.pid, workers.pid)}
                lat = entry["latency"]
                print(f"  latency at {args.rate:g} req/s: added TTFT p99 {lat['added'].get('ttft_p99_ms')} ms, "
                      f"added TBT p99 {lat['added'].get('tbt_p99_ms')} ms", flush=True)
                if not args.skip_throughput:
                    entry["throughput"] = throughput_phase(bench, policy, router.pid, workers.pid)
                bench.stop(router)
                log = Path(tmp) / f"router-{policy}.log"
                errors = [line for line in log.read_text().splitlines() if " ERROR " in line or "Traceback" in line]
                if errors:
                    entry["router_log_errors"] = errors[:5]
                results[policy] = entry
        finally:
            for proc in bench.procs:
                if proc.poll() is None:
                    bench.stop(proc)

    def met(policy_entry: dict) -> dict:
        lat = policy_entry["latency"]
        g = {
            "added_ttft_p99_ms": lat["added"].get("ttft_p99_ms"),
            "added_ttft_p99_met": (lat["added"].get("ttft_p99_ms") or 0) <= GOALS["added_ttft_p99_ms"],
            "added_tbt_p99_ms": lat["added"].get("tbt_p99_ms"),
            "added_tbt_p99_met": (lat["added"].get("tbt_p99_ms") or 0) <= GOALS["added_tbt_p99_ms"],
            "no_errors": not (lat["direct"]["errors"] or lat["router"]["errors"]),
        }
        if "throughput" in policy_entry:
            rps = policy_entry["throughput"]["streamed_req_per_s"]
            g["streamed_req_per_s"] = rps
            g["streamed_req_per_s_met"] = rps >= GOALS["streamed_req_per_s"]
        return g

    doc = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg(), "router_cpus": bench.router_cpus or "unpinned",
                    "harness_cpus": bench.harness_cpus or "unpinned"},
        "command": command,
        "router_policies": policies,
        "workers_command": bench.commands.get("workers"),
        "fake_workers": {"count": args.workers, "ttft_ms": args.ttft * 1e3, "tbt_ms": args.tbt * 1e3,
                         "tokens_per_request": args.tokens, "model": MODEL},
        "prompts": {"kind": args.prompt_kind, "approx_tokens": args.prompt_tokens,
                    "tokenizer": "tiny model (router default)"},
        "goal_thresholds": GOALS,
        "policies": results,
        "goals": {policy: met(entry) for policy, entry in results.items()},
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print_table(doc)
    print(f"wrote {args.out} ({doc['elapsed_s']} s)")
    print(f"command: {command}")


if __name__ == "__main__":
    main()
