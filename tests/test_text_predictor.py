"""The text output-length model: the shipped file loads, predicts, corrects online, and refuses a
scikit-learn it was not trained with."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sklearn")

from aladdin.errors import AladdinError  # noqa: E402
from aladdin.plugin.predict.text import (  # noqa: E402
    META_FILE,
    MODEL_DIR,
    MODEL_FILE,
    CorrectionConfig,
    TextLengthPredictor,
    load_model,
)

ESSAY = "Write a detailed 1500-word essay on the history of the Roman Empire, with an introduction, five sections and a conclusion."
YES_NO = "Answer with yes or no only: is 7 a prime number?"


@pytest.fixture(scope="module")
def shipped():
    return load_model()


def test_the_shipped_model_loads_and_reads_the_words(shipped) -> None:
    predictor = TextLengthPredictor(*shipped)
    essay, yes_no = predictor.predict(ESSAY, 30), predictor.predict(YES_NO, 14)
    assert isinstance(essay, int) and 1 <= yes_no < essay <= 4096
    assert predictor.meta.training["train"] > 1000
    assert (MODEL_DIR / MODEL_FILE).stat().st_size < 5_000_000


def test_the_correction_moves_predictions_toward_observed_lengths(shipped) -> None:
    predictor = TextLengthPredictor(*shipped, CorrectionConfig(window=64, min_samples=8))
    raw = float(predictor.predict_raw([ESSAY], [30])[0])
    before = predictor.predict(ESSAY, 30)
    for _ in range(7):
        predictor.observe(raw, math.ceil(3 * raw))
    assert predictor.predict(ESSAY, 30) == before  # fewer than min_samples: no correction yet
    predictor.observe(raw, math.ceil(3 * raw))
    after = predictor.predict(ESSAY, 30)
    assert abs(after - 3 * raw) < abs(before - 3 * raw)
    assert predictor.correction == pytest.approx(3 * math.exp(-predictor.meta.log_residual_median), rel=0.01)


def test_another_sklearn_minor_version_is_one_clear_error(tmp_path: Path) -> None:
    shutil.copy(MODEL_DIR / MODEL_FILE, tmp_path / MODEL_FILE)
    meta = json.loads((MODEL_DIR / META_FILE).read_text())
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "sklearn_version": "0.1.0"}))
    with pytest.raises(AladdinError, match=r"trained with scikit-learn 0\.1\.0, but .* is installed"):
        load_model(tmp_path)


def test_a_missing_model_and_bad_observations_are_refused(tmp_path: Path, shipped) -> None:
    with pytest.raises(AladdinError, match="no text length model"):
        load_model(tmp_path)
    predictor = TextLengthPredictor(*shipped)
    with pytest.raises(AladdinError, match="output_tokens >= 1"):
        predictor.observe(10.0, 0)
    with pytest.raises(AladdinError, match="2 prompts but 1 token counts"):
        predictor.predict_raw(["a", "b"], [1])
    with pytest.raises(AladdinError, match="min_samples"):
        CorrectionConfig(window=4, min_samples=8)


def test_a_quantile_prediction_starts_at_the_validation_quantile_and_then_follows_served_lengths(shipped) -> None:
    model, meta = shipped
    typical = TextLengthPredictor(model, meta)
    q90 = TextLengthPredictor(model, meta, CorrectionConfig(window=64, min_samples=8), quantile=0.9)
    assert q90.correction == pytest.approx(math.exp(meta.residual_quantile(0.9)))
    assert q90.predict(ESSAY, 30) > typical.predict(ESSAY, 30)
    raw = float(q90.predict_raw([ESSAY], [30])[0])
    served = [math.ceil(ratio * raw) for ratio in (0.5, 1, 1, 1, 1, 1, 1, 1, 2, 4)]  # mostly as predicted, a long tail
    for tokens in served:
        q90.observe(raw, tokens)
    assert q90.correction == pytest.approx(math.exp(float(np.quantile(np.log(np.array(served) / raw), 0.9))))
    assert 2.0 <= q90.correction <= 4.0
    with pytest.raises(AladdinError, match=r"in \(0, 1\)"):
        TextLengthPredictor(model, meta, quantile=1.5)
    with pytest.raises(AladdinError, match="residual quantiles"):
        TextLengthPredictor(model, meta, quantile=0.999)


def test_the_simulator_places_with_the_text_models_predictions(shipped) -> None:
    from aladdin.loadgen.datasets import RequestSpec
    from aladdin.loadgen.schedule import ScheduledRequest
    from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
    from aladdin.plugin.predict.text import with_predictions
    from aladdin.plugin.sim.simulator import SimConfig, simulate

    perf = PerfModel(PrefillModel(1e-5, 0.0, 1e-3), DecodeModel(1e-4, 1e-8, 5e-3), KVModel(16, 65536), 64, 2048)
    schedule = [ScheduledRequest(f"r{i}", 0.1 * i, RequestSpec(text, tokens, 50, None, None, f"r{i}"))
                for i, (text, tokens) in enumerate([(ESSAY, 30), (YES_NO, 14), (ESSAY, 30)])]
    predicted = with_predictions(schedule, TextLengthPredictor(*shipped))
    assert [r.predicted_output_tokens for r in predicted] == [TextLengthPredictor(*shipped).predict(r.spec.prompt,
                                                              r.spec.prompt_tokens) for r in schedule]
    result = simulate(predicted, perf, SimConfig(num_workers=2, policy="aladdin"))
    assert result.first_prediction.tolist() == [min(r.predicted_output_tokens, 4096) for r in predicted]
    assert with_predictions([], TextLengthPredictor(*shipped)) == []
