"""Reading run folders and vLLM bench results, and the one-line errors for bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_analysis_metrics import REFERENCE, rec, write_run

from aladdin.analysis.load import load_path, load_run_dir, load_runs
from aladdin.analysis.metrics import SLO, Window, analyze_run
from aladdin.errors import AladdinError

approx = pytest.approx


@pytest.mark.parametrize("cut", [40, 120, -5])  # inside the scalars, inside chunk_times, near the end
@pytest.mark.parametrize("compact", [True, False])
def test_truncated_last_line_is_skipped_and_counted(tmp_path, cut, compact):
    folder = write_run(tmp_path / "run", REFERENCE[:3], compact=compact)
    last = rec(9, 9.0, 9.0, [9.5, 9.6], done=9.7).to_json()
    with open(folder / "requests.jsonl", "a") as fh:
        fh.write(last[:cut])
    run = load_run_dir(folder)
    assert run.partial_lines == 1
    assert run.requests["id"].tolist() == ["r1", "r2", "r3"]
    assert run.chunk_times.tolist() == approx([0.5, 0.6, 0.8, 1.2, 1.5, 2.3])


def test_bad_line_in_the_middle_is_skipped(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE[:2])
    lines = (folder / "requests.jsonl").read_text().splitlines()
    (folder / "requests.jsonl").write_text("\n".join([lines[0], "{not json", "", lines[1]]) + "\n")
    run = load_run_dir(folder)
    assert run.partial_lines == 1 and len(run.requests) == 2


def test_labels_from_run_json_or_folder_and_made_unique(tmp_path):
    a = write_run(tmp_path / "a", REFERENCE[:1], {"label": "same", "start_epoch": 1.0, "params": {"rate": 2}})
    b = write_run(tmp_path / "b", REFERENCE[:1], {"label": "same", "start_epoch": 1.0, "params": {}})
    c = write_run(tmp_path / "c", REFERENCE[:1])  # no run.json: metadata is optional
    runs = load_runs([a, b, c])
    assert [r.label for r in runs] == ["same", "same (2)", "c"]
    assert runs[0].meta["params"] == {"rate": 2} and runs[2].meta == {}


def test_records_file_stands_for_its_folder(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE[:2])
    (run,) = load_path(folder / "requests.jsonl")
    assert run.label == "run" and len(run.requests) == 2


def test_missing_folder(tmp_path):
    with pytest.raises(AladdinError, match="no such run folder"):
        load_path(tmp_path / "nope")


def test_folder_without_records(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(AladdinError, match="no requests.jsonl"):
        load_path(tmp_path / "empty")


def test_empty_records_file(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "requests.jsonl").write_text("")
    with pytest.raises(AladdinError, match="no complete records"):
        load_path(tmp_path / "run")


def test_unknown_schema_version(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE[:1])
    text = (folder / "requests.jsonl").read_text().replace('"schema":1', '"schema":99')
    (folder / "requests.jsonl").write_text(text)
    with pytest.raises(AladdinError, match="schema version 99"):
        load_path(folder)


def test_chunk_lists_of_different_lengths(tmp_path):
    folder = write_run(tmp_path / "run", [rec(1, 0.0, 0.0, [0.5, 0.6], [1], done=0.7)])
    with pytest.raises(AladdinError, match="2 chunk_times but 1 chunk_tokens"):
        load_path(folder)


def test_bad_run_json(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE[:1])
    (folder / "run.json").write_text("{oops")
    with pytest.raises(AladdinError, match="run.json: not valid JSON"):
        load_path(folder)


# --------------------------------------------------------------------------- vLLM bench results


def bench_result(**changes) -> dict:
    """A vllm bench serve result saved with --save-result --save-detailed (3 requests, one failed)."""
    doc = {
        "date": "20260101-120000", "backend": "vllm", "label": "vllm-bench", "model_id": "tiny",
        "num_prompts": 3, "request_rate": 2.0, "burstiness": 1.0, "max_concurrency": None,
        "duration": 1.2, "completed": 2, "failed": 1, "total_input_tokens": 30, "total_output_tokens": 4,
        "input_lens": [10, 20, 30], "output_lens": [3, 1, 0], "ttfts": [0.1, 0.2, 0.0],
        "itls": [[0.02, 0.03], [], []], "latencies": [0.15, 0.2, 0.0], "start_times": [100.0, 100.5, 101.0],
        "errors": ["", "", "Bad Request"], "generated_texts": ["abc", "d", ""],
    }
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not ...}


def write_bench(tmp_path, doc, name="bench.json"):
    path = tmp_path / name
    path.write_text(json.dumps(doc))
    return path


def test_bench_import(tmp_path):
    (run,) = load_path(write_bench(tmp_path, bench_result()))
    assert run.label == "vllm-bench" and run.format == "vllm-bench"
    assert run.meta["request_rate"] == 2.0 and "ttfts" not in run.meta
    assert run.requests["n_chunks"].tolist() == [3, 1, 0]
    assert run.chunk_times.tolist() == approx([0.1, 0.12, 0.15, 0.7])
    result = analyze_run(run, SLO(ttft=0.15, atgt=0.03), Window())
    frame = result.requests
    assert frame["outcome"].tolist() == ["ok", "ok", "error"]
    assert frame["ttft"].tolist()[:2] == approx([0.1, 0.2])
    assert frame["atgt"].tolist()[0] == approx(0.025)  # vLLM's TPOT: (latency - ttft) / (n - 1)
    assert frame["e2e"].tolist()[:2] == approx([0.15, 0.2])
    s = result.summary
    assert s["counts"]["errors"] == 1 and s["counts"]["single_token"] == 1
    assert s["attainment"]["joint"] == approx(1 / 3)  # request 2 misses TTFT, request 3 failed
    assert s["window"]["duration_s"] == approx(1.0)


def test_bench_queue_times_give_scheduled_time(tmp_path):
    (run,) = load_path(write_bench(tmp_path, bench_result(queue_times=[0.0, 0.3, 0.0])))
    frame = analyze_run(run, SLO(1, 1), Window()).requests
    assert frame["ttft_from_scheduled"].tolist()[1] == approx(0.5)


def test_bench_without_optional_fields(tmp_path):
    doc = bench_result(start_times=..., errors=..., latencies=..., input_lens=..., output_lens=...,
                       label=None, ttfts=[0.1, 0.2], itls=[[0.02], [0.01, 0.01]])
    (run,) = load_path(write_bench(tmp_path, doc, "my-bench.json"))
    assert run.label == "my-bench"
    s = analyze_run(run, SLO(1, 1), Window()).summary
    assert s["counts"]["ok"] == 2
    assert s["latency_s"]["atgt"]["mean"] == approx(0.015)
    assert s["throughput"]["offered_rps"] is None  # no start times: no time base for rates


def test_bench_appended_results_are_separate_runs(tmp_path):
    path = tmp_path / "appended.json"
    path.write_text(json.dumps(bench_result()) + "\n" + json.dumps(bench_result(label="second")))
    assert [r.label for r in load_path(path)] == ["vllm-bench#1", "second#2"]


def test_bench_without_detail(tmp_path):
    doc = {k: v for k, v in bench_result().items() if not isinstance(v, list)}
    with pytest.raises(AladdinError, match="--save-detailed"):
        load_path(write_bench(tmp_path, doc))


@pytest.mark.parametrize("content, message", [
    ('{"foo": 1}', "not a vLLM bench serve result"),
    ("[1, 2]", "not a vLLM bench serve result"),
    ("hello", "not JSON"),
    ("", "empty file"),
    ('{"ttfts": [0.1], "itls": [0.1]}', "'itls' must be a list of 1 lists"),
    ('{"ttfts": [0.1, 0.2], "itls": [[], []], "start_times": [1.0]}', "'start_times' has 1 entries"),
])
def test_not_a_bench_result(tmp_path, content, message):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(AladdinError, match=message):
        load_path(path)


def test_bench_and_aladdin_runs_compare(tmp_path):
    runs = load_runs([write_run(tmp_path / "ours", REFERENCE), write_bench(tmp_path, bench_result())])
    summaries = [analyze_run(r, SLO(0.45, 0.15), Window()).summary for r in runs]
    assert [s["format"] for s in summaries] == ["aladdin", "vllm-bench"]
    assert all(np.isfinite(s["attainment"]["joint"]) for s in summaries)
