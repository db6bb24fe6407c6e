"""The text output-length model: the shipped file loads, predicts, corrects online, and refuses a
scikit-learn it was not trained with."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

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
