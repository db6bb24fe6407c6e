"""The CLI surface and the model folder: fast, no server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from aladdin.cli import cli

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aladdin", *args], capture_output=True, text=True, timeout=120)


def test_help_lists_every_command():
    out = CliRunner().invoke(cli, ["--help"]).output
    for command in ("model", "cluster", "replay"):
        assert command in out


def test_every_command_has_help():
    runner = CliRunner()

    def walk(group, path):
        for name, command in group.commands.items():
            result = runner.invoke(cli, [*path, name, "--help"])
            assert result.exit_code == 0, (path, name, result.output)
            assert "Usage:" in result.output
            if hasattr(command, "commands"):
                walk(command, [*path, name])

    walk(cli, [])


def test_version():
    from aladdin import __version__

    assert __version__ in CliRunner().invoke(cli, ["--version"]).output


@pytest.mark.parametrize(
    "args",
    [
        ["cluster", "up", "--bogus"],
        ["cluster", "up", "--workers", "0"],
        ["model", "init", "/tmp/x", "--shape", "huge"],
        ["nosuchcommand"],
    ],
)
def test_bad_flags_give_one_line_error(args):
    proc = run_cli(*args)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), proc.stderr
    assert "Traceback" not in proc.stderr


def test_replay_unreachable_host_is_one_line(tmp_path):
    from aladdin.cluster import free_port_block

    proc = run_cli("replay", "--host", f"http://127.0.0.1:{free_port_block(1)}", "-o", str(tmp_path / "run"))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "cannot reach" in proc.stderr


@pytest.mark.parametrize("driver", [["-m", "aladdin", "replay"], ["scripts/gpu/replay_direct.py"]])
def test_replay_refuses_a_folder_that_holds_a_run(tmp_path, driver):
    """Checked before the server is asked anything: the host here answers nothing."""
    from aladdin.cluster import free_port_block

    (tmp_path / "requests.jsonl").write_text("")
    proc = subprocess.run([sys.executable, *driver, "--host", f"http://127.0.0.1:{free_port_block(1)}", "-o",
                           str(tmp_path)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1
    assert proc.stderr == f"Error: {tmp_path} already holds a run (requests.jsonl); choose another --output\n"


@pytest.mark.parametrize("shape,layers,hidden", [("tiny", 2, 256), ("llama2-7b", 32, 4096), ("llama2-13b", 40, 5120)])
def test_model_init_writes_a_llama_folder(tmp_path, shape, layers, hidden):
    result = CliRunner().invoke(cli, ["model", "init", str(tmp_path / shape), "--shape", shape])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / shape / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"]) == (layers, hidden, 32000)


def test_tokenizer_counts_sharegpt_text_realistically(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    assert len(tok) == 32000
    text = (
        "Summarize the main ideas of Jeff Walker's Product Launch Formula into bullet points as it "
        "pertains to a growth marketing agency implementing these strategies and tactics for their clients."
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    # A Llama-style 32k SentencePiece vocabulary gives about 1.3 tokens per English word.
    words = len(text.split())
    assert 1.0 * words <= len(ids) <= 1.8 * words
    assert tok.decode(ids) == text
