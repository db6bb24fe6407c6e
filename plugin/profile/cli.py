"""``aladdin profile``: measure a live vLLM into a profile; ``aladdin profile validate``: check one."""

from __future__ import annotations

import json
import secrets
import shlex
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import click

from aladdin.clicommand import group
from aladdin.errors import AladdinError
from aladdin.machine import cpu_description


def _engine(host: str, model: str | None):
    from aladdin.loadgen.client import served_models
    from aladdin.plugin.profile.profiler import LiveEngine

    try:
        models = served_models(host)
    except ConnectionError as exc:
        raise AladdinError(str(exc)) from None
    model = model or (models[0] if models else None)
    if model is None:
        raise AladdinError(f"{host} serves no models")
    try:
        return LiveEngine(host, model)
    except ValueError as exc:
        raise AladdinError(f"{host}: {exc}") from None


def _synthesizer(tokenizer_dir):
    from aladdin.loadgen.datasets import load_tokenizer, synthetic
    from aladdin.modeldir import default_model_dir

    tokenizer = load_tokenizer(tokenizer_dir or default_model_dir("tiny"))

    salt = secrets.randbelow(2**30)  # fresh prompts each run: a warm prefix cache would shorten prefills

    def synthesize(n: int, prompt: int, output: int, seed: int):
        """Exact-length prompts sent as text, like real traffic: the server's tokenization is measured too."""
        specs = synthetic(tokenizer, n, prompt, output, seed=salt + seed)
        return [replace(s, prompt_token_ids=None) for s in specs]

    return tokenizer, synthesize


@contextmanager
def _progress(total: int, failure: str):
    """A progress bar on stderr whose ``step(message)`` advances it; a measurement that goes
    wrong (a failed request, too few samples to fit) ends as one ``failure: reason`` line."""
    with click.progressbar(length=total, label="profiling", file=sys.stderr, show_pos=True) as bar:

        def step(message: str) -> None:
            bar.label = message
            bar.update(1)

        try:
            yield step
        except (RuntimeError, ValueError) as exc:
            raise AladdinError(f"{failure}: {exc}") from None


@group("profile", invoke_without_command=True)
@click.option("--host", help="Base URL of the vLLM server to profile.")
@click.option("--model", default=None, help="Model name (default: the server's first).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), help="Profile file to write.")
@click.option("--quick", is_flag=True, help="Fewer, shorter experiments (about a minute on the CPU test server).")
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model folder whose tokenizer builds exact-length prompts (default: the tiny model).")
@click.option("--max-num-seqs", type=click.IntRange(min=1), default=64, show_default=True,
              help="The server's --max-num-seqs (recorded; bounds the decode batches).")
@click.option("--max-batched-tokens", type=click.IntRange(min=1), default=2048, show_default=True,
              help="The server's --max-num-batched-tokens (chunked-prefill budget; recorded).")
@click.option("--max-prompt-tokens", type=click.IntRange(min=64), default=2048, show_default=True,
              help="Longest prompt the full plan measures; keep it below the server's --max-model-len.")
@click.option("--decode-tokens", type=click.IntRange(min=16), default=64, show_default=True,
              help="Tokens each request of a decode batch streams (full plan); 128 suits a GPU with hundreds of sequences.")
@click.option("--prefill-tokens", type=click.IntRange(min=1), default=1, show_default=True,
              help="Tokens each lone prefill request asks for (full plan); its TTFT is the time to the first.")
@click.option("--gpus-per-worker", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--hardware", default=None, help="Hardware description (default: this machine's CPU).")
@click.pass_context
def profile(ctx, host, model, output, quick, tokenizer, max_num_seqs, max_batched_tokens, max_prompt_tokens,
            decode_tokens, prefill_tokens, gpus_per_worker, hardware):
    """Profile a live vLLM: fit prefill, decode and KV models and write PROFILE.json.

    Run 'aladdin profile validate PROFILE.json --host URL' to measure its prediction errors.
    """
    if ctx.invoked_subcommand is not None:
        return
    if not host or not output:
        raise click.UsageError("--host and --output are required to make a profile")
    from aladdin.plugin.profile.io import ProfileMeta, save_profile
    from aladdin.plugin.profile.profiler import ProfilePlan, run_profile

    engine = _engine(host, model)
    _, synthesize = _synthesizer(tokenizer)
    plan = ProfilePlan.quick() if quick else ProfilePlan.full(max_prompt_tokens, decode_tokens, prefill_tokens)
    steps = (len(plan.prefill_lengths) + len(plan.decode_grid(engine.info.kv_model(), max_num_seqs))
             + (len(plan.admission.batch_sizes) if plan.admission else 0))
    with _progress(steps, "profiling failed") as step:
        run = run_profile(engine, synthesize, plan, max_num_seqs, max_batched_tokens, step)
    meta = ProfileMeta(
        model=engine.endpoint.model, hardware=hardware or cpu_description(), gpus_per_worker=gpus_per_worker,
        vllm_version=engine.info.vllm_version, command="aladdin " + shlex.join(sys.argv[1:]),
    )
    save_profile(output, run.perf, meta, prefill_fit=run.prefill_fit, decode_fit=run.decode_fit, samples=run.samples)
    p, d, kv = run.perf.prefill, run.perf.decode, run.perf.kv
    click.echo(f"prefill: T = {p.a:.3e}*sum(n) + {p.q:.3e}*sum(n^2) + {p.c:.3e} s   "
               f"(R^2 {run.prefill_fit.r_squared:.3f}, fit median error {run.prefill_fit.median_abs_pct_error:.1f}%)")
    click.echo(f"decode:  T = {d.a:.3e}*B + {d.b:.3e}*S + {d.c:.3e} s   "
               f"(R^2 {run.decode_fit.r_squared:.3f}, fit median error {run.decode_fit.median_abs_pct_error:.1f}%)")
    click.echo(f"KV: {kv.capacity_tokens} tokens in blocks of {kv.block_size}")
    _echo_admission(run.perf)
    click.echo(f"wrote {output}")


def _echo_admission(perf) -> None:
    if not perf.meta.get("admission"):
        return
    low, high = perf.meta["admission"]["iqr_s"]
    click.echo(f"admission: {1000 * perf.admit_s:.2f} ms per request (IQR {1000 * low:.2f}-{1000 * high:.2f} ms, "
               f"{perf.meta['admission']['n_samples']} joins); front end {1000 * perf.frontend_s:.2f} ms")


def _check_same_worker(profile_file: Path, perf, engine, host: str) -> None:
    if engine.info.kv_model() != perf.kv:
        raise AladdinError(
            f"{profile_file} describes a KV cache of {perf.kv.capacity_tokens} tokens (blocks of "
            f"{perf.kv.block_size}) but {host} has {engine.info.kv_model().capacity_tokens} (blocks of "
            f"{engine.info.block_size}): not the same worker configuration"
        )


@profile.command("admission")
@click.argument("profile_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", required=True, help="Base URL of the server the profile describes.")
@click.option("--model", default=None)
@click.option("--quick", is_flag=True, help="One small batch and 8 joins (seconds on the CPU test server).")
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Model folder whose tokenizer builds exact-length prompts (default: the tiny model).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Profile file to write (default: PROFILE_FILE itself).")
def admission(profile_file, host, model, quick, tokenizer, output):
    """Measure the engine time each admitted request costs and add it to a profile.

    Lone prompts join a steady decode batch; what they add to its steps beyond their prefill
    work is the profile's admission cost (docs/perfmodel.md, "Admission cost"). The rest of the
    profile is kept as it was measured.
    """
    from aladdin.plugin.profile.io import ProfileMeta, load_profile, save_profile
    from aladdin.plugin.profile.profiler import AdmissionPlan, run_admission, with_admission

    perf = load_profile(profile_file)
    if perf.meta.get("derived"):
        raise AladdinError(f"{profile_file} is derived, not measured; measure the admission cost on a measured profile")
    engine = _engine(host, model)
    _check_same_worker(profile_file, perf, engine, host)
    _, synthesize = _synthesizer(tokenizer)
    plan = AdmissionPlan.quick() if quick else AdmissionPlan.full()
    with _progress(len(plan.batch_sizes), "measuring the admission cost failed") as step:
        fit = run_admission(engine, synthesize, perf, plan, progress=step)
    measured = with_admission(perf, fit, command="aladdin " + shlex.join(sys.argv[1:]),
                              vllm_version=engine.info.vllm_version)
    meta = perf.meta
    samples = {**(meta["samples"] or {}), "admission": fit.samples}
    save_profile(output or profile_file, measured,
                 ProfileMeta(meta["model"], meta["hardware"], meta["gpus_per_worker"], meta["vllm_version"],
                             meta["command"], meta["created"]),
                 prefill_fit=meta["prefill_fit"], decode_fit=meta["decode_fit"], samples=samples)
    _echo_admission(measured)
    click.echo(f"wrote {output or profile_file}")


@profile.command("validate")
@click.argument("profile_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--host", required=True, help="Base URL of the server the profile describes.")
@click.option("--model", default=None)
@click.option("--num-requests", "-n", type=click.IntRange(min=4), default=40, show_default=True,
              help="Held-out ShareGPT requests (half alone for prefill, half in groups for decode and KV).")
@click.option("--max-output-tokens", type=click.IntRange(min=4), default=96, show_default=True,
              help="Cap on held-out output lengths (keeps the CPU run short).")
@click.option("--group-size", type=click.IntRange(min=1), default=8, show_default=True,
              help="Held-out decode requests launched together (up to the server's --max-num-seqs).")
@click.option("--seed", type=int, default=12345, show_default=True, help="Held-out sample seed.")
@click.option("--tokenizer", type=click.Path(file_okay=False, path_type=Path), default=None)
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path), default=None)
def validate(profile_file, host, model, num_requests, max_output_tokens, group_size, seed, tokenizer, json_path):
    """Replay held-out ShareGPT requests and report each model's prediction error."""
    from aladdin.loadgen.datasets import load_sharegpt
    from aladdin.plugin.profile.io import load_profile
    from aladdin.plugin.profile.profiler import validate_profile

    perf = load_profile(profile_file)
    engine = _engine(host, model)
    _check_same_worker(profile_file, perf, engine, host)
    tok, synthesize = _synthesizer(tokenizer)
    # A unique tag in front of each prompt: the server may have seen these prompts before, and a
    # prefix-cache hit would make its prefill look faster than the model says.
    specs = [
        replace(s, prompt=f"{secrets.token_hex(4)} {s.prompt}")
        for s in load_sharegpt(tok, num_requests, seed=seed, max_output_tokens=max_output_tokens)
    ]
    half = num_requests // 2
    prefill_specs, decode_specs = specs[:half], specs[half:]
    groups = [decode_specs[i:i + group_size] for i in range(0, len(decode_specs), group_size)]
    with _progress(2 + len(groups), "validation failed") as step:
        report = validate_profile(engine, perf, prefill_specs, groups, synthesize, step)
    report = {"profile": str(profile_file), "host": host, "num_requests": num_requests, "seed": seed,
              "group_size": group_size, "max_output_tokens": max_output_tokens, "models": report}
    click.echo(format_validation(report["models"]))
    if json_path:
        json_path.write_text(json.dumps(report, indent=2) + "\n")
        click.echo(f"wrote {json_path}")


def format_validation(models: dict) -> str:
    def pct(x):
        return "n/a" if x is None else f"{x:.1f}%"

    rows = [("model", "n", "median |err|", "p90 |err|", "noise floor (median)")]
    for name in ("prefill", "decode", "kv"):
        m = models[name]
        rows.append((name, str(m["n"]), pct(m["median_pct"]), pct(m["p90_pct"]), pct(m["noise_floor_pct"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in rows)


@profile.command("derive")
@click.argument("profile_file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--gpus", type=click.IntRange(min=2), required=True, help="GPUs of the derived worker (tensor parallel).")
@click.option("--shape", type=click.Choice(["llama2-7b", "llama2-13b"]), required=True,
              help="The served model's shape (its weights and KV bytes per token).")
@click.option("--parallel-share", type=click.FloatRange(0, 1), default=0.8, show_default=True,
              help="Share of a forward pass's fixed cost that splits over the GPUs.")
@click.option("--allreduce-us", type=click.FloatRange(min=0), default=10.0, show_default=True,
              help="Time of one all-reduce (two per layer per pass), microseconds.")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path), required=True)
def derive(profile_file, gpus, shape, parallel_share, allreduce_us, output):
    """Estimate a G-GPU worker's profile from a measured 1-GPU profile (docs/perfmodel.md).

    For planning before the G-GPU worker can be measured: the file is marked as derived, and
    a real profile of that worker replaces it.
    """
    from aladdin.modeldir import SHAPES
    from aladdin.plugin.profile.fit import TensorParallelAssumptions, scale_tensor_parallel
    from aladdin.plugin.profile.io import ProfileMeta, load_profile, save_profile

    perf = load_profile(profile_file)
    if perf.meta["gpus_per_worker"] != 1 or perf.meta.get("derived"):
        raise AladdinError(f"{profile_file} is not a measured 1-GPU profile; derive from one")
    spec = SHAPES[shape]
    assumptions = TensorParallelAssumptions(parallel_share, allreduce_us * 1e-6)
    derived = scale_tensor_parallel(perf, gpus, num_layers=spec.num_hidden_layers, weight_bytes=spec.weight_bytes,
                                    kv_bytes_per_token=spec.kv_bytes_per_token, assumptions=assumptions)
    derived.meta["derived"]["source"] = str(profile_file)
    command = shlex.join(["aladdin", "profile", "derive", str(profile_file), "--gpus", str(gpus), "--shape", shape,
                          "--parallel-share", f"{parallel_share:g}", "--allreduce-us", f"{allreduce_us:g}",
                          "-o", str(output)])
    meta = ProfileMeta(perf.meta["model"], perf.meta["hardware"], gpus, perf.meta["vllm_version"], command)
    save_profile(output, derived, meta)
    click.echo(f"wrote {output}: {gpus} GPUs, KV {derived.kv.capacity_tokens} tokens, "
               f"decode c {1000 * derived.decode.c:.2f}ms (derived, not measured)")
