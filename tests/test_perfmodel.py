"""Performance models, their fitting and the profile file (pure numpy, no vLLM)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from aladdin.errors import AladdinError
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.profile.fit import abs_pct_error, error_summary, fit_decode, fit_prefill, fit_prefill_mixed
from aladdin.plugin.profile.io import ProfileMeta, load_profile, save_profile

PREFILL = PrefillModel(a=1.5e-4, q=2e-9, c=0.012)
DECODE = DecodeModel(a=2e-4, b=3e-7, c=0.008)
KV = KVModel(block_size=16, capacity_tokens=16 * 1000)
PERF = PerfModel(PREFILL, DECODE, KV, max_num_seqs=256, max_batched_tokens=8192, meta={})
META = ProfileMeta(
    model="tiny", hardware="1x H100", gpus_per_worker=1, vllm_version="0.26.0", command="aladdin profile"
)


def relative_error(got: float, want: float) -> float:
    return abs(got - want) / abs(want)


# --- prefill ---------------------------------------------------------------------------


def test_prefill_batch_time_sums_linear_and_quadratic_terms():
    assert PREFILL.time([100, 300]) == pytest.approx(1.5e-4 * 400 + 2e-9 * (100**2 + 300**2) + 0.012)
    assert PREFILL.time([]) == 0.0


def test_prefill_single_and_chunk_agree_and_vectorize():
    prompts = np.array([1, 50, 2000])
    singles = PREFILL.time_single(prompts)
    assert isinstance(singles, np.ndarray)
    assert singles == pytest.approx([PREFILL.time([n]) for n in prompts])
    assert PREFILL.chunk_time(prompts, 0) == pytest.approx(singles)
    assert isinstance(PREFILL.time_single(7), float)
    assert PREFILL.chunk_time(0, 500) == 0.0


def test_chunk_work_of_a_split_prompt_equals_the_whole_prompt():
    chunks, computed = np.array([512, 512, 300]), np.array([0, 512, 1024])
    whole = PREFILL.time_single(1324) - PREFILL.c
    assert np.sum(PREFILL.chunk_work(chunks, computed)) == pytest.approx(whole, rel=1e-12)
    # attention over the prefix makes a later chunk dearer than the first one
    assert PREFILL.chunk_time(512, 1024) > PREFILL.chunk_time(512, 0)


# --- decode ----------------------------------------------------------------------------


def test_decode_time_scalar_array_and_empty_batch():
    assert DECODE.time(8, 4000) == pytest.approx(2e-4 * 8 + 3e-7 * 4000 + 0.008)
    times = DECODE.time(np.array([0, 1, 32]), np.array([0, 100, 9000]))
    assert times[0] == 0.0
    assert times[1:] == pytest.approx([DECODE.time(1, 100), DECODE.time(32, 9000)])


def brute_force_atgt(model: DecodeModel, context: list[int], remaining: list[int]) -> list[float]:
    """Step the batch one iteration at a time."""
    totals = [0.0] * len(context)
    for k in range(max(remaining)):
        alive = [i for i, r in enumerate(remaining) if r > k]
        step = model.time(len(alive), sum(context[i] + k for i in alive))
        for i in alive:
            totals[i] += step
    return [total / r for total, r in zip(totals, remaining)]


def test_predicted_atgt_matches_step_by_step_simulation():
    rng = np.random.default_rng(0)
    context = rng.integers(1, 3000, size=40).tolist()
    remaining = rng.integers(1, 400, size=40).tolist()
    expected = brute_force_atgt(DECODE, context, remaining)
    assert DECODE.predicted_atgt(context, remaining) == pytest.approx(expected)


def test_predicted_atgt_edge_cases():
    assert DECODE.predicted_atgt([], []).shape == (0,)
    # a lone request for one more token sees exactly one iteration
    assert DECODE.predicted_atgt([100], [1])[0] == pytest.approx(DECODE.time(1, 100))
    # overrun predictions (<= 0) count as one token; fractional ones round up
    clamped = DECODE.predicted_atgt([100, 100], [1, 3])
    assert DECODE.predicted_atgt([100, 100], [0, 2.2]) == pytest.approx(clamped)
    with pytest.raises(ValueError):
        DECODE.predicted_atgt([1, 2], [1])


# --- KV --------------------------------------------------------------------------------


def test_kv_blocks_and_tokens_held_round_each_request_up():
    assert KV.blocks(0) == 0 and KV.blocks(1) == 1 and KV.blocks(16) == 1 and KV.blocks(17) == 2
    assert KV.blocks(np.array([15, 33])).tolist() == [1, 3]
    assert KV.tokens_held([1, 17, 32]) == 16 * (1 + 2 + 2)
    assert KV.free_tokens([1, 17, 32]) == 16_000 - 80
    assert KV.num_blocks == 1000


def test_kv_fits_now_and_over_the_future():
    small = KVModel(block_size=16, capacity_tokens=64)
    assert small.fits([16, 16, 16, 16])
    assert not small.fits([16, 16, 16, 17])
    assert small.free_tokens([16, 16, 16, 17]) == -16
    # one request fits now but its growth to 16 + 20 - 1 tokens needs a third block
    assert small.peak_tokens_held([16, 16], [1, 20]) == 48
    assert small.fits([16, 16], [1, 20])
    assert not small.fits([16, 16, 16], [1, 20, 20])


def brute_force_peak(kv: KVModel, context: list[int], remaining: list[int]) -> int:
    return max(
        kv.tokens_held([c + k for c, r in zip(context, remaining) if r > k]) for k in range(max(remaining))
    )


def test_kv_peak_matches_step_by_step_simulation():
    rng = np.random.default_rng(1)
    for _ in range(5):
        context = rng.integers(1, 500, size=25).tolist()
        remaining = rng.integers(1, 300, size=25).tolist()
        assert KV.peak_tokens_held(context, remaining) == brute_force_peak(KV, context, remaining)
    assert KV.peak_tokens_held([], []) == 0


def test_kv_rejects_inconsistent_sizes():
    with pytest.raises(ValueError):
        KVModel(block_size=0, capacity_tokens=0)
    with pytest.raises(ValueError):
        KVModel(block_size=16, capacity_tokens=100)
    with pytest.raises(ValueError):
        KVModel(block_size=16, capacity_tokens=-16)


# --- whole iterations ------------------------------------------------------------------


def test_iteration_time_reduces_to_the_pure_models():
    assert PERF.iteration_time(0, 0) == 0.0
    assert PERF.iteration_time(12, 5000) == pytest.approx(DECODE.time(12, 5000))
    assert PERF.iteration_time(0, 0, [700], [0]) == pytest.approx(PREFILL.time_single(700) - PERF.frontend_s)
    assert PERF.iteration_time(0, 0, [256], [1024]) == pytest.approx(PREFILL.chunk_time(256, 1024) - PERF.frontend_s)


def test_mixed_iteration_pays_one_decode_pass_and_the_rest_of_c_p_is_front_end_time():
    mixed = PERF.iteration_time(12, 5000, [256, 100], [1024, 0])
    chunk_work = PREFILL.chunk_work(256, 1024) + PREFILL.chunk_work(100, 0)
    assert mixed == pytest.approx(DECODE.time(12, 5000) + chunk_work)
    # a lone prompt's TTFT = front end + one prefill-only pass, whichever constant is larger
    assert PERF.frontend_s + PERF.iteration_time(0, 0, [700], [0]) == pytest.approx(PREFILL.time_single(700))
    assert PERF.ttft_alone(700) == pytest.approx(PREFILL.time_single(700))
    assert PERF.ttft_alone([5000])[0] == pytest.approx(
        PERF.frontend_s + PREFILL.chunk_work(5000, 0) + np.ceil(5000 / PERF.max_batched_tokens) * PERF.prefill_pass_s)
    fast_prefill = PerfModel(PrefillModel(PREFILL.a, PREFILL.q, DECODE.c / 2), DECODE, PERF.kv, 8, 512)
    assert fast_prefill.frontend_s == 0.0 and fast_prefill.prefill_pass_s == DECODE.c / 2


def test_admission_cost_comes_out_of_the_front_end_and_into_the_iteration_that_admits():
    admitting = PerfModel(PREFILL, DECODE, PERF.kv, 256, 8192, admit_s=2e-3)
    assert admitting.frontend_s == pytest.approx(PERF.frontend_s - 2e-3)
    assert admitting.ttft_alone(700) == pytest.approx(PREFILL.time_single(700))  # a lone prompt: as measured
    assert admitting.iteration_time(12, 5000, [100, 50], [0, 0], admitted=2) == pytest.approx(
        PERF.iteration_time(12, 5000, [100, 50], [0, 0]) + 4e-3)
    assert admitting.iteration_time(12, 5000, [256], [1024]) == PERF.iteration_time(12, 5000, [256], [1024])
    # a cost above c_p - c_d leaves no front end, and a lone prompt pays the rest
    costly = PerfModel(PREFILL, DECODE, PERF.kv, 256, 8192, admit_s=PERF.frontend_s + 1e-3)
    assert costly.frontend_s == 0.0 and costly.ttft_alone(700) == pytest.approx(PREFILL.time_single(700) + 1e-3)
    with pytest.raises(ValueError, match="admit_s"):
        PerfModel(PREFILL, DECODE, PERF.kv, 256, 8192, admit_s=-1e-3)


# --- fitting ---------------------------------------------------------------------------


def prefill_samples(model: PrefillModel, rng: np.random.Generator, count: int = 60):
    batches = [rng.integers(16, 4096, size=rng.integers(1, 6)) for _ in range(count)]
    sums = np.array([b.sum() for b in batches], dtype=float)
    squares = np.array([(b.astype(float) ** 2).sum() for b in batches])
    times = np.array([model.time(b) for b in batches])
    return sums, squares, times


def decode_samples(model: DecodeModel, rng: np.random.Generator, count: int = 60):
    sizes = rng.integers(1, 256, size=count).astype(float)
    contexts = sizes * rng.integers(100, 2000, size=count)
    return sizes, contexts, model.time(sizes, contexts)


@pytest.mark.parametrize("nonneg", [True, False])
def test_fits_recover_exact_coefficients(nonneg):
    rng = np.random.default_rng(2)
    prefill, prefill_fit = fit_prefill(*prefill_samples(PREFILL, rng), nonneg=nonneg)
    decode, decode_fit = fit_decode(*decode_samples(DECODE, rng), nonneg=nonneg)
    for got, want in [(prefill.a, PREFILL.a), (prefill.q, PREFILL.q), (prefill.c, PREFILL.c),
                      (decode.a, DECODE.a), (decode.b, DECODE.b), (decode.c, DECODE.c)]:
        assert relative_error(got, want) < 1e-6
    for fit in (prefill_fit, decode_fit):
        assert fit.n_samples == 60
        assert fit.r_squared == pytest.approx(1.0)
        assert fit.median_abs_pct_error < 1e-6
        assert fit.method == ("nnls" if nonneg else "lstsq")


def test_fits_with_noise_are_close():
    rng = np.random.default_rng(3)
    sums, squares, times = prefill_samples(PREFILL, rng, count=300)
    prefill, prefill_fit = fit_prefill(sums, squares, times * rng.normal(1.0, 0.02, size=times.size))
    sizes, contexts, dtimes = decode_samples(DECODE, rng, count=300)
    decode, decode_fit = fit_decode(sizes, contexts, dtimes * rng.normal(1.0, 0.02, size=dtimes.size))
    assert relative_error(prefill.a, PREFILL.a) < 0.05
    assert relative_error(decode.a, DECODE.a) < 0.1 and relative_error(decode.b, DECODE.b) < 0.05
    for fit in (prefill_fit, decode_fit):
        assert fit.r_squared > 0.98
        assert 0.5 < fit.median_abs_pct_error < 4.0
        assert fit.rms_residual_s > 0


def test_nonneg_fit_clamps_what_lstsq_makes_negative():
    tokens = np.array([100.0, 200, 400, 800, 1600])
    times = 1e-4 * tokens - 0.005  # exact least squares has a negative intercept
    free, _ = fit_prefill(tokens, tokens**2, times, quadratic=False, nonneg=False)
    clamped, _ = fit_prefill(tokens, tokens**2, times, quadratic=False)
    assert free.c == pytest.approx(-0.005)
    assert clamped.c == 0.0 and clamped.a > 0 and clamped.q == 0.0


def test_linear_prefill_fit_has_zero_quadratic_term():
    rng = np.random.default_rng(4)
    linear = PrefillModel(a=2e-4, q=0.0, c=0.01)
    model, _ = fit_prefill(*prefill_samples(linear, rng), quadratic=False)
    assert model.q == 0.0 and relative_error(model.a, linear.a) < 1e-6


def test_weighted_prefill_fit_follows_the_heavy_samples():
    tokens = np.array([16.0, 64, 256, 1024, 4000])
    times = PREFILL.time_single(tokens)
    shifted = times + np.array([0.005, 0.005, 0.0, 0.0, 0.0])  # short prompts 5 ms slower
    plain, _ = fit_prefill(tokens, tokens**2, times, weights=np.ones(5))
    assert relative_error(plain.c, PREFILL.c) < 1e-6
    light, _ = fit_prefill(tokens, tokens**2, shifted, weights=[1e-3, 1e-3, 1, 1, 1])
    heavy, diagnostics = fit_prefill(tokens, tokens**2, shifted, weights=[1e3, 1e3, 1, 1, 1])
    assert light.c < heavy.c and heavy.time_single(16.0) == pytest.approx(shifted[0], rel=0.01)
    assert diagnostics.n_samples == 5 and diagnostics.rms_residual_s > 0  # unweighted residuals
    with pytest.raises(ValueError, match="weights must be > 0"):
        fit_prefill(tokens, tokens**2, times, weights=[1, 1, 0, 1, 1])
    with pytest.raises(ValueError, match="same length"):
        fit_prefill(tokens, tokens**2, times, weights=[1, 1])


def test_mixed_prefill_fit_weighs_each_kind_as_a_whole():
    """Many synthetic points do not outvote a few realistic ones that pay a higher fixed cost."""
    synthetic = np.tile(np.array([16.0, 128, 512, 1024, 2048, 4000]), 20)
    realistic = np.array([20.0, 30, 40, 60, 90, 120])
    offset = 0.004
    model, fit = fit_prefill_mixed(synthetic, PREFILL.time_single(synthetic),
                                   realistic, PREFILL.time_single(realistic) + offset)
    plain, _ = fit_prefill(np.concatenate([synthetic, realistic]), np.concatenate([synthetic, realistic]) ** 2,
                           np.concatenate([PREFILL.time_single(synthetic), PREFILL.time_single(realistic) + offset]))
    assert fit.n_samples == synthetic.size + realistic.size
    assert model.c - PREFILL.c > 2 * (plain.c - PREFILL.c) > 0
    with pytest.raises(ValueError, match="synthetic and realistic"):
        fit_prefill_mixed(synthetic, PREFILL.time_single(synthetic), [], [])


def test_fit_rejects_bad_samples():
    with pytest.raises(ValueError, match="same length"):
        fit_decode([1, 2, 3], [1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="at least 3"):
        fit_decode([1, 2], [1, 2], [1, 2])
    with pytest.raises(ValueError, match="NaN"):
        fit_prefill([1, 2, 3], [1, 4, 9], [0.1, np.nan, 0.3])


# --- accuracy --------------------------------------------------------------------------


def test_abs_pct_error_and_summary():
    assert abs_pct_error([110, 90, 0, 5], [100, 100, 0, 0]).tolist() == [10.0, 10.0, 0.0, np.inf]
    summary = error_summary(np.arange(1, 11) + 100.0, np.full(10, 100.0))
    assert summary.n == 10
    assert summary.median_pct == pytest.approx(5.5)
    assert summary.p90_pct == pytest.approx(9.1)
    assert summary.max_pct == pytest.approx(10.0)
    with pytest.raises(ValueError):
        error_summary([], [])


# --- profile file ----------------------------------------------------------------------


def test_profile_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    sums, squares, times = prefill_samples(PREFILL, rng, count=10)
    prefill, prefill_fit = fit_prefill(sums, squares, times)
    decode, decode_fit = fit_decode(*decode_samples(DECODE, rng, count=10))
    perf = PerfModel(prefill, decode, KV, max_num_seqs=128, max_batched_tokens=2048)
    path = save_profile(
        tmp_path / "sub" / "p.json", perf, META, prefill_fit=prefill_fit, decode_fit=decode_fit,
        samples={"prefill": {"sum_tokens": sums, "time": times}},
    )
    loaded = load_profile(path)
    assert loaded == perf  # meta is not compared
    assert loaded.meta["model"] == "tiny" and loaded.meta["gpus_per_worker"] == 1
    assert loaded.meta["command"] == "aladdin profile" and loaded.meta["created"]
    assert loaded.meta["prefill_fit"] == prefill_fit and loaded.meta["decode_fit"] == decode_fit
    assert loaded.meta["samples"]["prefill"]["time"] == times.tolist()
    document = json.loads(path.read_text())
    assert document["format"] == "aladdin-profile" and document["version"] == 1
    assert document["kv"] == {"block_size": 16, "num_blocks": 1000, "capacity_tokens": 16000}


def test_profile_without_diagnostics_or_samples(tmp_path):
    loaded = load_profile(save_profile(tmp_path / "p.json", PERF, META))
    assert loaded == PERF
    assert loaded.meta["prefill_fit"] is None and loaded.meta["samples"] is None


def test_profile_admission_cost_round_trip(tmp_path):
    admitting = PerfModel(PREFILL, DECODE, KV, 256, 8192, admit_s=2.1e-3,
                          meta={"admission": {"n_samples": 72, "method": "joins into a steady decode batch"}})
    path = save_profile(tmp_path / "p.json", admitting, META)
    assert json.loads(path.read_text())["admission"] == {"cost_s": 2.1e-3, "n_samples": 72,
                                                         "method": "joins into a steady decode batch"}
    loaded = load_profile(path)
    assert loaded == admitting and loaded.meta["admission"]["n_samples"] == 72
    assert "admission" not in json.loads(save_profile(tmp_path / "q.json", PERF, META).read_text())
    assert load_profile(tmp_path / "q.json").admit_s == 0.0  # profiles measured before it: no cost


def write_variant(tmp_path, change) -> str:
    path = save_profile(tmp_path / "p.json", PERF, META)
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document))
    return str(path)


BAD_PROFILES = {
    "wrong format": (lambda d: d.update(format="something-else"), "not an Aladdin profile"),
    "unsupported version": (lambda d: d.update(version=2), "unsupported version 2"),
    "missing top-level key": (lambda d: d.pop("max_num_seqs"), "missing key max_num_seqs"),
    "missing coefficient": (lambda d: d["decode"].pop("b"), "missing key decode.b"),
    "missing section": (lambda d: d.pop("kv"), "missing key kv"),
    "section not an object": (lambda d: d.update(prefill=[1, 2, 3]), "prefill must be an object"),
    "non-numeric coefficient": (lambda d: d["prefill"].update(a="fast"), "prefill.a must be a finite number"),
    "boolean coefficient": (lambda d: d["decode"].update(c=True), "decode.c must be a finite number"),
    "non-finite coefficient": (lambda d: d["decode"].update(c=float("nan")), "decode.c must be a finite number"),
    "negative capacity": (lambda d: d["kv"].update(capacity_tokens=-16), "kv.capacity_tokens must be a positive"),
    "zero blocks": (lambda d: d["kv"].update(num_blocks=0), "kv.num_blocks must be a positive"),
    "inconsistent capacity": (lambda d: d["kv"].update(capacity_tokens=999), "not num_blocks 1000 x block_size 16"),
    "fractional max_num_seqs": (lambda d: d.update(max_num_seqs=2.5), "max_num_seqs must be a positive integer"),
    "non-string model": (lambda d: d.update(model=7), "model must be a string"),
    "negative admission cost": (lambda d: d.update(admission={"cost_s": -0.001}), "admission.cost_s must be >= 0"),
    "admission without its cost": (lambda d: d.update(admission={}), "missing key admission.cost_s"),
    "bad fit diagnostics": (lambda d: d["prefill"].update(fit={"method": "nnls"}), "missing key prefill.fit.n_samples"),
}


@pytest.mark.parametrize("case", list(BAD_PROFILES))
def test_bad_profiles_name_the_file_and_the_problem(tmp_path, case):
    change, message = BAD_PROFILES[case]
    path = write_variant(tmp_path, change)
    with pytest.raises(AladdinError, match="profile .*p.json: .*" + message.replace(".", r"\.")):
        load_profile(path)


def test_unreadable_and_malformed_profiles(tmp_path):
    with pytest.raises(AladdinError, match="missing.json: cannot read"):
        load_profile(tmp_path / "missing.json")
    broken = tmp_path / "broken.json"
    broken.write_text('{"format": "aladdin-profile", ')
    with pytest.raises(AladdinError, match="broken.json: not valid JSON"):
        load_profile(broken)
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    with pytest.raises(AladdinError, match="list.json: not an Aladdin profile"):
        load_profile(listed)


def test_tensor_parallel_derivation_splits_work_and_adds_memory():
    from aladdin.plugin.profile.fit import TensorParallelAssumptions, scale_tensor_parallel

    base = PerfModel(PrefillModel(1e-4, 1e-8, 0.02), DecodeModel(2e-4, 4e-7, 0.01), KVModel(16, 16 * 1000),
                     max_num_seqs=64, max_batched_tokens=2048, meta={"gpus_per_worker": 1})
    tp = scale_tensor_parallel(base, 4, num_layers=32, weight_bytes=16_000_000, kv_bytes_per_token=1000,
                               assumptions=TensorParallelAssumptions(parallel_share=0.5, allreduce_s=1e-5))
    assert tp.decode.a == pytest.approx(5e-5) and tp.decode.b == pytest.approx(1e-7)
    assert tp.decode.c == pytest.approx(0.01 * (0.5 / 4 + 0.5) + 64 * 1e-5)
    assert tp.prefill.q == pytest.approx(2.5e-9)
    # 4 x 16,000 tokens, plus the first GPU's weight memory now free: 3 x 16,000 bytes / 1000
    assert tp.kv.capacity_tokens == 4 * 16_000 + 3 * 16_000
    assert tp.meta["gpus_per_worker"] == 4 and tp.meta["derived"]["parallel_share"] == 0.5
    assert scale_tensor_parallel(base, 1, num_layers=32, weight_bytes=1, kv_bytes_per_token=1).decode == base.decode
    admitting = PerfModel(base.prefill, base.decode, base.kv, 64, 2048, admit_s=2e-3, meta=base.meta)
    assert scale_tensor_parallel(admitting, 4, num_layers=32, weight_bytes=1, kv_bytes_per_token=1).admit_s == 2e-3


def test_profile_derive_command_writes_a_marked_profile(tmp_path):
    from click.testing import CliRunner

    from aladdin.cli import cli
    from aladdin.plugin.profile.io import ProfileMeta, load_profile, save_profile

    base = PerfModel(PrefillModel(1e-4, 1e-8, 0.02), DecodeModel(2e-4, 4e-7, 0.01), KVModel(16, 16 * 1000),
                     max_num_seqs=64, max_batched_tokens=2048)
    source = save_profile(tmp_path / "g1.json", base, ProfileMeta("m", "gpu", 1, "0.26.0", "aladdin profile"))
    out = tmp_path / "g2.json"
    result = CliRunner().invoke(cli, ["profile", "derive", str(source), "--gpus", "2", "--shape", "llama2-7b",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    derived = load_profile(out)
    assert derived.meta["gpus_per_worker"] == 2 and derived.meta["derived"]["source"] == str(source)
    again = CliRunner().invoke(cli, ["profile", "derive", str(out), "--gpus", "4", "--shape", "llama2-7b",
                                     "-o", str(tmp_path / "g4.json")])
    assert again.exit_code != 0 and "not a measured 1-GPU profile" in again.output
