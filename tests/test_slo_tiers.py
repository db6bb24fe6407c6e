"""Per-request SLO tiers: the --slo-tiers parser, seeded assignment, headers, records, analysis."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import threading
import time
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from click.testing import CliRunner

from aladdin.errors import AladdinError
from aladdin.loadgen.datasets import RequestSpec
from aladdin.loadgen.records import RequestRecord, SLORecord, make_record
from aladdin.loadgen.schedule import ScheduledRequest, schedule_from_jsonable, schedule_to_jsonable
from aladdin.loadgen.slo import ATGT_HEADER, TTFT_HEADER, SLOTier, assign_tiers, parse_slo_tiers, slo_headers
from aladdin.loadgen.workload import WorkloadConfig
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel

PERF = PerfModel(PrefillModel(a=5e-5, q=1e-9, c=0.015), DecodeModel(a=1.5e-4, b=3.4e-7, c=0.012),
                 KVModel(16, 16 * 4000), max_num_seqs=64, max_batched_tokens=2048)
SPEC = "interactive:0.7:ttft=0.5,atgt=0.05;batch:0.3:ttft=10,atgt=0.2"


def test_parse_the_issue_example():
    assert parse_slo_tiers(SPEC) == (SLOTier("interactive", 0.7, 0.5, 0.05), SLOTier("batch", 0.3, 10.0, 0.2))
    assert parse_slo_tiers(" one : 1 : atgt=0.1 , ttft=2 ") == (SLOTier("one", 1.0, 2.0, 0.1),)


@pytest.mark.parametrize("spec,message", [
    ("", "empty"),
    ("   ", "empty"),
    ("a:1:ttft=1,atgt=1;", "empty tier"),
    ("a:1:ttft=1,tbt=1", "unknown key 'tbt'"),
    ("a:0.5:ttft=1,atgt=1;b:0.4:ttft=1,atgt=1", "shares sum to 0.9, not 1"),
    ("a:0.5:ttft=1,atgt=1;a:0.5:ttft=2,atgt=2", "named twice"),
    ("a:1:ttft=0,atgt=1", "must be a positive number"),
    ("a:1:ttft=1,atgt=-0.1", "must be a positive number"),
    ("a:0:ttft=1,atgt=1;b:1:ttft=1,atgt=1", "share must be a positive number"),
    ("a:1:ttft=inf,atgt=1", "must be a positive number"),
    ("a:1:ttft=x,atgt=1", "is not a number"),
    ("a:1:ttft=1", "lacks atgt"),
    ("a:1:ttft=1,ttft=2,atgt=1", "ttft given twice"),
    ("a:1", "is not NAME:SHARE"),
    ("a:1:ttft1", "is not KEY=SECONDS"),
    ("a b:1:ttft=1,atgt=1", "tier name"),
])
def test_bad_specs_are_one_line_errors(spec, message):
    with pytest.raises(AladdinError, match="--slo-tiers") as err:
        parse_slo_tiers(spec)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_shares_within_tolerance_are_accepted():
    parse_slo_tiers("a:0.3333333:ttft=1,atgt=1;b:0.6666667:ttft=1,atgt=1")


def test_assignment_is_seeded_and_follows_the_shares():
    tiers = parse_slo_tiers(SPEC)
    first = [t.name for t in assign_tiers(tiers, 20000, seed=3)]
    assert first == [t.name for t in assign_tiers(tiers, 20000, seed=3)]
    assert first != [t.name for t in assign_tiers(tiers, 20000, seed=4)]
    assert first.count("interactive") / len(first) == pytest.approx(0.7, abs=0.02)


def test_headers_are_milliseconds():
    assert slo_headers(0.5, 0.05) == {TTFT_HEADER: "500", ATGT_HEADER: "50"}
    assert slo_headers(None, None) == {}


def test_workload_config_keeps_old_run_json_loadable_and_checks_tiers():
    old = json.loads(json.dumps(asdict(WorkloadConfig())))
    del old["slo_tiers"]  # run.json files from before --slo-tiers
    assert WorkloadConfig.from_jsonable(old).slo_tiers is None
    with pytest.raises(AladdinError, match="unknown key"):
        WorkloadConfig(slo_tiers="a:1:ttft=1,p99=2").validate()


def _spec(i: int = 0) -> RequestSpec:
    return RequestSpec("x", 3, 4, None, (1, 2, 3), f"s{i}")


def test_schedule_lines_carry_slos_only_when_set():
    plain = ScheduledRequest("r0", 0.0, _spec())
    tiered = ScheduledRequest("r1", 0.5, _spec(1), slo_tier="batch", ttft_slo=10.0, atgt_slo=0.2)
    items = schedule_to_jsonable([plain, tiered])
    assert set(items[0]) == {"id", "offset", "spec"}  # schedules without tiers keep their old lines
    assert schedule_from_jsonable(json.loads(json.dumps(items))) == [plain, tiered]


def test_build_schedule_assigns_tiers_deterministically(tiny_model_dir):
    from aladdin.loadgen.schedule import build_schedule, workload_tokenizer

    config = WorkloadConfig(dataset="synthetic", num_requests=200, seed=7, tokenizer=str(tiny_model_dir),
                            prompt_tokens=(4, 4), output_tokens=(4, 4), slo_tiers=SPEC)
    tokenizer = workload_tokenizer(config)
    a, b = build_schedule(config, tokenizer), build_schedule(config, tokenizer)
    assert [r.slo_tier for r in a] == [r.slo_tier for r in b]
    assert {r.slo_tier for r in a} == {"interactive", "batch"}
    for r in a:
        assert (r.ttft_slo, r.atgt_slo) == ((0.5, 0.05) if r.slo_tier == "interactive" else (10.0, 0.2))
    plain = build_schedule(WorkloadConfig(**{**asdict(config), "slo_tiers": None}), tokenizer)
    assert [(r.offset, r.spec) for r in plain] == [(r.offset, r.spec) for r in a]  # tiers change nothing else
    assert all(r.slo_tier is None and r.ttft_slo is None for r in plain)


class _Recorder(BaseHTTPRequestHandler):
    seen: list[dict] = []

    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.seen.append(dict(self.headers))
        body = (b'data: {"choices":[{"text":"a"}],"usage":{"completion_tokens":1}}\n\n'
                b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}\n\ndata: [DONE]\n\n')
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # /v1/models, which the replayer asks first
        body = b'{"data":[{"id":"m"}]}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recorder():
    _Recorder.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", _Recorder.seen
    server.shutdown()
    server.server_close()


def test_client_sends_slo_headers_and_records_them(recorder):
    from aladdin.loadgen.client import Endpoint, RunClock, StreamingClient

    url, seen = recorder
    client = StreamingClient(Endpoint(url, "m", timeout_s=10), RunClock(time.time()))
    try:
        tiered = client.run("r0", "x", (1, 2, 3), 1, 0.0, 3, slo_tier="interactive", ttft_slo=0.5, atgt_slo=0.05)
        plain = client.run("r1", "x", (1, 2, 3), 1, 0.0, 3)
    finally:
        client.close()
    assert tiered.outcome == plain.outcome == "ok", (tiered.error, plain.error)
    headers = [{k.lower(): v for k, v in h.items()} for h in seen]
    assert headers[0][TTFT_HEADER.lower()] == "500" and headers[0][ATGT_HEADER.lower()] == "50"
    assert TTFT_HEADER.lower() not in headers[1] and ATGT_HEADER.lower() not in headers[1]
    assert (tiered.slo_tier, tiered.ttft_slo, tiered.atgt_slo) == ("interactive", 0.5, 0.05)
    assert type(plain) is RequestRecord and isinstance(tiered, SLORecord)  # old records keep their keys


def test_dispatcher_passes_the_schedule_slos_to_the_client():
    from aladdin.loadgen.client import RunClock
    from aladdin.loadgen.dispatcher import Dispatcher

    calls = []

    class Client:
        def run(self, request_id, *args, **slos):
            calls.append((request_id, slos))
            rec = RequestRecord(id=request_id, scheduled=0.0, requested_output_tokens=4)
            args[-1](rec)
            return rec

    clock = RunClock(time.time())
    schedule = [ScheduledRequest("r0", 0.0, _spec()),
                ScheduledRequest("r1", 0.0, _spec(1), slo_tier="batch", ttft_slo=10.0, atgt_slo=0.2)]
    Dispatcher(Client(), clock, lambda rec: None).run(schedule)
    assert dict(calls) == {"r0": {}, "r1": {"slo_tier": "batch", "ttft_slo": 10.0, "atgt_slo": 0.2}}


def _record(i: int, ttft: float, atgt: float, **slos) -> RequestRecord:
    """A finished request: first token ``ttft`` s after sending, then 4 more tokens ``atgt`` apart."""
    sent = float(i)
    times = [sent + ttft + k * atgt for k in range(5)]
    return make_record(id=f"r{i}", scheduled=sent, requested_output_tokens=5, dispatched=sent, sent=sent,
                         first_byte=times[0], chunk_times=times, chunk_tokens=[1] * 5, done=times[-1],
                         prompt_tokens=3, output_tokens=5, status=200, **slos)


def _analyze(tmp_path, records, old_layout=False):
    from aladdin.analysis.load import load_run_dir
    from aladdin.analysis.metrics import SLO, Window, analyze_run

    run = tmp_path / "run"
    run.mkdir()
    with open(run / "requests.jsonl", "w") as fh:
        for rec in records:
            d = asdict(rec)
            if old_layout:  # records written before per-request SLOs
                assert type(rec) is RequestRecord
            fh.write(json.dumps(d, separators=(",", ":")) + "\n")
    return analyze_run(load_run_dir(run), SLO(ttft=1.0, atgt=0.1), Window())


def test_analysis_uses_each_requests_own_slo_and_reports_tiers(tmp_path):
    inter = {"slo_tier": "interactive", "ttft_slo": 0.5, "atgt_slo": 0.05}
    batch = {"slo_tier": "batch", "ttft_slo": 10.0, "atgt_slo": 0.2}
    records = [
        _record(0, 0.2, 0.01, **inter),  # meets its tight SLO
        _record(1, 0.8, 0.01, **inter),  # meets the default 1 s TTFT, misses its own 0.5 s
        _record(2, 5.0, 0.15, **batch),  # misses the default, meets its own loose SLO
        _record(3, 12.0, 0.15, **batch),  # misses its own TTFT
        _record(4, 0.8, 0.05),  # no tier: the command-line SLO applies, and it meets it
    ]
    result = _analyze(tmp_path, records)
    assert result.requests["slo_ok"].tolist() == [True, False, True, False, True]
    summary = result.summary
    assert summary["attainment"]["joint"] == pytest.approx(3 / 5)
    assert summary["attainment"]["ttft_from_scheduled"] == pytest.approx(3 / 5)
    duration = summary["window"]["duration_s"]
    assert summary["tiers"] == {
        "batch": {"requests": 2, "joint_attainment": 0.5, "goodput_rps": pytest.approx(1 / duration)},
        "interactive": {"requests": 2, "joint_attainment": 0.5, "goodput_rps": pytest.approx(1 / duration)},
    }


def test_analysis_of_records_without_tiers_is_unchanged(tmp_path):
    records = [_record(0, 0.2, 0.01), _record(1, 0.8, 0.5), _record(2, 2.0, 0.01)]
    (tmp_path / "old").mkdir()
    old = _analyze(tmp_path / "old", records, old_layout=True)
    explicit = [SLORecord(**asdict(r)) for r in records]  # the SLO keys present but all null
    new = _analyze(tmp_path, explicit)
    assert "tiers" not in old.summary and "tiers" not in new.summary
    assert "slo_tier" not in old.requests and "ttft_slo" not in new.requests
    assert old.requests["slo_ok"].tolist() == [True, False, False]
    assert json.dumps(old.summary, default=str) == json.dumps(new.summary, default=str).replace(
        str(tmp_path / "run"), str(tmp_path / "old" / "run"))


def test_simulator_places_with_and_records_per_request_slos(tmp_path):
    from aladdin.analysis.load import load_run_dir
    from aladdin.plugin.sim.simulator import ClusterSimulator, SimConfig

    schedule = [ScheduledRequest(f"r{i}", 0.05 * i, RequestSpec("x", 10, 4, None, None, f"s{i}"),
                                 slo_tier="t" if i % 2 else None, ttft_slo=0.5 if i % 2 else None,
                                 atgt_slo=0.05 if i % 2 else None) for i in range(6)]
    sim = ClusterSimulator(PERF, SimConfig(num_workers=1, policy="rr", ttft_slo=2.0))
    result = sim.run(schedule)
    assert [r.ttft_slo for r in sim.requests] == [2.0, 0.5] * 3
    assert [r.atgt_slo for r in sim.requests] == [math.inf, 0.05] * 3
    result.write(tmp_path / "run")
    lines = [json.loads(x) for x in (tmp_path / "run" / "requests.jsonl").read_text().splitlines()]
    records = [json.loads(json.dumps(asdict(r))) for r in result.records()]
    assert [x.keys() for x in lines] == [x.keys() for x in records]
    assert [(x.get("slo_tier"), x.get("ttft_slo")) for x in lines] == [(None, None), ("t", 0.5)] * 3
    assert "slo_tier" not in lines[0]  # a request without SLOs: the old record, byte for byte
    assert list(lines[1])[-4:] == ["schema", "slo_tier", "ttft_slo", "atgt_slo"]
    loaded = load_run_dir(tmp_path / "run").requests
    assert np.isnan(loaded["ttft_slo"].to_numpy()[0]) and loaded["ttft_slo"].tolist()[1] == 0.5


def test_replay_refuses_a_bad_tier_spec_in_one_line(tmp_path):
    cmd = [sys.executable, "-m", "aladdin", "replay", "--host", "http://127.0.0.1:1", "-o", str(tmp_path / "r"),
           "--slo-tiers", "a:0.5:ttft=1,atgt=1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1] == "Error: --slo-tiers: shares sum to 0.5, not 1"


def test_simulate_with_tiers_records_them_and_analysis_reports_each(tmp_path, tiny_model_dir):
    from aladdin.analysis.load import load_run_dir
    from aladdin.analysis.metrics import SLO, Window, analyze_run
    from aladdin.plugin.profile.io import ProfileMeta, save_profile
    from aladdin.plugin.sim.cli import simulate as simulate_command

    profile = save_profile(tmp_path / "p.json", PERF, ProfileMeta("tiny", "sim", 1, "0.26.0", "test"))
    args = ["--profile", str(profile), "--dataset", "synthetic", "--prompt-tokens", "20:200", "--output-tokens", "5:80",
            "--rate", "20", "--num-requests", "100", "--workers", "2", "--tokenizer", str(tiny_model_dir),
            "--slo-tiers", SPEC, "--output", str(tmp_path / "out")]
    result = CliRunner().invoke(simulate_command, args)
    assert result.exit_code == 0, result.output
    run = json.loads((tmp_path / "out" / "run.json").read_text())
    assert run["params"]["workload"]["slo_tiers"] == SPEC
    summary = analyze_run(load_run_dir(tmp_path / "out"), SLO(ttft=1.0, atgt=0.1), Window()).summary
    assert set(summary["tiers"]) == {"interactive", "batch"}
    assert sum(t["requests"] for t in summary["tiers"].values()) == 100


@pytest.mark.parametrize("processes", [1, 2])
def test_replay_sends_and_records_the_schedules_tiers(recorder, tmp_path, tiny_model_dir, processes):
    from aladdin.loadgen.records import iter_records
    from aladdin.loadgen.schedule import load_schedule

    url, seen = recorder
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "aladdin", "replay", "--host", url, "-o", str(out), "--dataset", "synthetic",
           "--prompt-tokens", "4", "--output-tokens", "1", "-n", "12", "--rate", "50", "--seed", "5",
           "--tokenizer", str(tiny_model_dir), "--slo-tiers", SPEC, "--processes", str(processes)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tiers = {r.id: r.slo_tier for r in load_schedule(out / "schedule.jsonl")}
    records = {r["id"]: r for r in iter_records(out / "requests.jsonl")}
    assert {i: r.get("slo_tier") for i, r in records.items()} == tiers and set(tiers.values()) == {"interactive", "batch"}
    for r in records.values():
        assert (r["ttft_slo"], r["atgt_slo"]) == ((0.5, 0.05) if r["slo_tier"] == "interactive" else (10.0, 0.2))
    sent = {h["X-Request-Id"]: (h[TTFT_HEADER], h[ATGT_HEADER]) for h in seen}
    assert sent == {i: ("500", "50") if t == "interactive" else ("10000", "200") for i, t in tiers.items()}
    workload = json.loads((out / "run.json").read_text())["params"]["workload"]
    assert workload["slo_tiers"] == SPEC
