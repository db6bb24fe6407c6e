"""``aladdin analyze`` end to end through click: table, JSON, CSV, plots, HTML, and one-line errors."""

from __future__ import annotations

import csv
import json

import pytest
from click.testing import CliRunner
from test_analysis_load import bench_result, write_bench
from test_analysis_metrics import REFERENCE, write_run

from aladdin.analysis.cli import analyze
from aladdin.cli import cli

SLO_ARGS = ["--ttft-slo", "0.45", "--atgt-slo", "0.15"]


def run_cli(*args: str):
    """Through the ``aladdin`` group when the command is registered there, else the command itself."""
    if "analyze" in cli.commands:
        return CliRunner().invoke(cli, ["analyze", *map(str, args)])
    return CliRunner().invoke(analyze, list(map(str, args)))


@pytest.fixture
def two_runs(tmp_path):
    ours = write_run(tmp_path / "ours", REFERENCE, {"label": "aladdin", "start_epoch": 0, "params": {}})
    return ours, write_bench(tmp_path, bench_result())


def test_table_and_outputs(tmp_path, two_runs):
    out = tmp_path / "out"
    out.mkdir()
    result = run_cli(*two_runs, *SLO_ARGS, "--tbt-slo", "0.2", "--json", out / "a.json", "--csv", out / "r.csv",
                     "--report", out / "report.html", "--plots", out / "plots",
                     "--sweep-atgt", "0.05:0.5:4", "--sweep-ttft", "0.1:1:4")
    assert result.exit_code == 0, result.output
    written = [line for line in result.output.splitlines() if line.startswith("wrote ")]
    lines = result.output.splitlines()[len(written):]  # the table comes last
    assert lines[0].startswith("SLO: TTFT <= 450 ms and ATGT <= 150 ms and 99% of TBT gaps <= 200 ms")
    row = next(line for line in lines if line.startswith("aladdin "))
    assert "28.57%" in row  # joint attainment 2/7 with the TBT SLO
    assert any(line.startswith("vllm-bench ") for line in lines)
    assert "aladdin: 1 single-token output(s): no ATGT, judged on TTFT only" in lines

    doc = json.loads((out / "a.json").read_text())
    assert doc["schema"] == 1 and doc["slo"] == {"ttft_s": 0.45, "atgt_s": 0.15, "tbt_s": 0.2, "tbt_gap_percentile": 99}
    assert [r["label"] for r in doc["runs"]] == ["aladdin", "vllm-bench"]
    first = doc["runs"][0]
    assert set(first) == {"label", "source", "format", "records", "partial_lines", "window", "counts",
                          "latency_s", "attainment", "throughput", "preemptions", "meta", "sweeps"}
    assert first["preemptions"] == {"count": None, "source": None}  # a replay keeps no preemption count
    assert first["attainment"]["joint"] == pytest.approx(2 / 7)
    assert len(first["sweeps"]["atgt"]["joint_attainment"]) == 4

    with open(out / "r.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7 + 3
    assert rows[0]["run"] == "aladdin" and rows[0]["id"] == "r1" and rows[0]["slo_ok"] == "True"
    assert rows[0]["output_tokens"] == "4"

    pngs = sorted(p.name for p in (out / "plots").iterdir())
    assert pngs == ["attainment_vs_atgt_slo.png", "attainment_vs_ttft_slo.png", "cdf_atgt.png", "cdf_tbt.png",
                    "cdf_ttft.png", "timeseries.png"]
    assert all((out / "plots" / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)

    page = (out / "report.html").read_text()
    assert 'id="attainment"' in page and '<b id="attainment-0">28.57%</b>' in page
    assert page.count("data:image/png;base64,") == 6
    assert "<script" not in page and 'src="http' not in page and "<link" not in page  # self-contained


def test_partial_lines_are_reported(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE)
    with open(folder / "requests.jsonl", "a") as fh:
        fh.write('{"id":"cut","scheduled":9.0,"chunk_ti')
    result = run_cli(folder, *SLO_ARGS, "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    assert "run: 1 unreadable line(s) skipped" in result.output
    assert json.loads((tmp_path / "a.json").read_text())["runs"][0]["partial_lines"] == 1


def test_bench_at_infinite_rate_is_flagged(tmp_path):
    result = run_cli(write_bench(tmp_path, bench_result(request_rate="inf")), *SLO_ARGS)
    assert result.exit_code == 0, result.output
    assert "vllm-bench: vLLM bench sent every request at once (request rate inf)" in result.output


@pytest.mark.parametrize("args, message", [
    (["--ttft-slo", "0", "--atgt-slo", "0.1"], "--ttft-slo must be a positive number"),
    (["--ttft-slo", "1", "--atgt-slo", "-2"], "--atgt-slo must be a positive number"),
    ([*SLO_ARGS, "--sweep-atgt", "0.1:0.05:3"], "--sweep-atgt '0.1:0.05:3': expected START:STOP:COUNT"),
    ([*SLO_ARGS, "--warmup", "100"], "leave no steady-state window"),
])
def test_bad_arguments_give_one_line(tmp_path, args, message):
    folder = write_run(tmp_path / "run", REFERENCE)
    result = run_cli(folder, *args)
    assert result.exit_code != 0
    assert result.output.strip().splitlines() == [f"Error: {result.output.strip()[7:]}"]
    assert message in result.output
    assert "Traceback" not in result.output


def test_missing_run_folder(tmp_path):
    result = run_cli(tmp_path / "nope", *SLO_ARGS)
    assert result.exit_code != 0 and "no such run folder or result file" in result.output


def test_output_folders_are_created(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE)
    result = run_cli(folder, *SLO_ARGS, "--json", tmp_path / "new" / "a.json")
    assert result.exit_code == 0 and (tmp_path / "new" / "a.json").is_file()


def test_unwritable_output(tmp_path):
    folder = write_run(tmp_path / "run", REFERENCE)
    (tmp_path / "file").write_text("")
    result = run_cli(folder, *SLO_ARGS, "--json", tmp_path / "file" / "a.json")
    assert result.exit_code != 0 and result.output.strip().splitlines()[-1].startswith("Error: cannot write")


def test_slos_are_required(tmp_path):
    result = run_cli(write_run(tmp_path / "run", REFERENCE), "--ttft-slo", "1")
    assert result.exit_code == 2 and "--atgt-slo" in result.output


def test_help_lists_the_options():
    result = run_cli("--help")
    assert result.exit_code == 0
    for option in ("--ttft-slo", "--atgt-slo", "--tbt-slo", "--warmup", "--cooldown", "--json", "--csv",
                   "--report", "--plots", "--sweep-atgt", "--sweep-ttft"):
        assert option in result.output


@pytest.mark.slow
def test_chromium_renders_the_report(tmp_path, chromium):
    """The report needs nothing but the file: Debian's chromium shows the attainment headline."""
    report = tmp_path / "report.html"
    result = run_cli(write_run(tmp_path / "run", REFERENCE), *SLO_ARGS, "--report", report)
    assert result.exit_code == 0, result.output
    dom, shot = chromium(report)
    assert '<section id="attainment">' in dom
    assert '<b id="attainment-0">42.86%</b>' in dom  # 3 of 7 requests
    assert shot.stat().st_size > 10_000 and shot.read_bytes()[:4] == b"\x89PNG"


def test_compressed_bench_results_are_read(tmp_path):
    import gzip
    import lzma

    plain = write_bench(tmp_path, bench_result(label=None))
    (tmp_path / "b.json.gz").write_bytes(gzip.compress(plain.read_bytes()))
    (tmp_path / "c.json.xz").write_bytes(lzma.compress(plain.read_bytes()))
    result = run_cli(plain, tmp_path / "b.json.gz", tmp_path / "c.json.xz", *SLO_ARGS, "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    runs = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert [r["label"] for r in runs] == ["bench", "b", "c"]
    for run in runs[1:]:
        for key in ("counts", "latency_s", "attainment", "throughput"):
            assert run[key] == runs[0][key], key
    (tmp_path / "cut.json.gz").write_bytes(gzip.compress(plain.read_bytes())[:-12])
    cut = run_cli(tmp_path / "cut.json.gz", *SLO_ARGS)
    assert cut.exit_code != 0 and "Traceback" not in cut.output
    (line,) = cut.output.strip().splitlines()
    assert line.startswith(f"Error: {tmp_path / 'cut.json.gz'}: corrupt gzip file")


def test_preemptions_from_the_simulator_and_from_vllms_counter(tmp_path):
    sim = write_run(tmp_path / "sim", REFERENCE, {"label": "sim", "simulated": True, "summary": {"preemptions": 7}})
    real = write_run(tmp_path / "real", REFERENCE, {"label": "real"})
    (real / "counters.json").write_text(json.dumps({"preemptions": 12.0, "rejected": 0.0}))
    plain = write_run(tmp_path / "plain", REFERENCE, {"label": "plain"})
    result = run_cli(sim, real, plain, *SLO_ARGS, "--json", tmp_path / "a.json")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    header = next(line for line in lines if line.startswith("run "))
    column = header.split().index("preemptions")
    cells = {line.split()[0]: line.split()[column] for line in lines if line.split()[:1] in (["sim"], ["real"], ["plain"])}
    assert cells == {"sim": "7", "real": "12", "plain": "-"}
    assert any(line.startswith("preemptions: over the whole run") and "'-': not recorded" in line for line in lines)
    runs = json.loads((tmp_path / "a.json").read_text())["runs"]
    assert [r["preemptions"] for r in runs] == [{"count": 7, "source": "simulator"},
                                                {"count": 12, "source": "vllm:num_preemptions_total"},
                                                {"count": None, "source": None}]
    alone = run_cli(plain, *SLO_ARGS)  # no run recorded any: no column, no note
    assert alone.exit_code == 0 and "preemptions" not in alone.output
    (real / "counters.json").write_text(json.dumps({"preemptions": "many"}))
    bad = run_cli(real, *SLO_ARGS)
    assert bad.exit_code != 0 and "Traceback" not in bad.output
    assert bad.output.strip().splitlines() == [
        f"Error: {real / 'counters.json'}: 'preemptions' must be a whole number >= 0, got 'many'"]


def test_simulated_run_preemptions_reach_the_analysis(tmp_path):
    from test_sim import PERF, schedule

    from aladdin.plugin.core.perfmodel import KVModel, PerfModel
    from aladdin.plugin.sim.simulator import SimConfig, simulate

    small = PerfModel(PERF.prefill, PERF.decode, KVModel(16, 16 * 20), max_num_seqs=8, max_batched_tokens=2048)
    result = simulate(schedule([(0.0, 100, 150), (0.01, 100, 150)]), small, SimConfig(num_workers=1, policy="jsq"))
    result.write(tmp_path / "run", label="sim")
    assert result.preemptions.sum() > 0
    out = run_cli(tmp_path / "run", *SLO_ARGS, "--json", tmp_path / "a.json")
    assert out.exit_code == 0, out.output
    assert json.loads((tmp_path / "a.json").read_text())["runs"][0]["preemptions"] == {
        "count": int(result.preemptions.sum()), "source": "simulator"}
