"""Output-length prediction from the prompt's text, with an online correction.

The bucket mean (aladdin.plugin.core.predictor) sees only the prompt's length, which on
ShareGPT says little about the reply's. The words say more ("write an essay" vs "yes or
no"), so this model reads hashed word uni- and bi-grams plus a few length and script
features and predicts log(output tokens) with gradient-boosted trees. It is trained offline
(benchmarks/train_length_predictor.py) and shipped beside this module as a pickle plus a JSON
of metadata; the pickle is loaded only from this package's folder or a folder the caller
trusts, never from user input, since unpickling runs code. The pickle names
``aladdin.plugin.predict.text.TextLengthModel``: moving that class means retraining.

Served traffic drifts from the training set (another model, other users), so
:class:`TextLengthPredictor` scales predictions by the median ratio actual / predicted over the
last finished requests, relative to that ratio's median on the training set's validation split.
"""

from __future__ import annotations

import gzip
import json
import math
import pickle
from collections import deque
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from aladdin.errors import AladdinError

if TYPE_CHECKING:
    from aladdin.loadgen.schedule import ScheduledRequest

MODEL_DIR = Path(__file__).resolve().parent
MODEL_FILE = "sharegpt_length.pkl.gz"
META_FILE = "sharegpt_length.json"
RETRAIN = "python benchmarks/train_length_predictor.py"


def sklearn_version() -> str:
    """The installed scikit-learn's version; AladdinError without it (the optional ``predict`` extra)."""
    try:
        import sklearn
    except ImportError:
        raise AladdinError('scikit-learn is not installed; the text length model needs it (pip install -e ".[predict]")') from None
    return sklearn.__version__


def _minor(version: str) -> tuple[str, ...]:
    """Major.minor: scikit-learn patch releases load each other's pickles in practice (with a warning); minor ones may not."""
    return tuple(version.split(".")[:2])


def numeric_features(texts: Sequence[str], prompt_tokens: Sequence[int]) -> np.ndarray:
    """Per prompt: log tokens, log characters, non-ASCII share (tokens per character differ by
    script), log line count, question marks."""
    rows = [
        (
            math.log(max(int(tokens), 1)),
            math.log1p(len(text)),
            sum(ord(c) > 127 for c in text) / max(len(text), 1),
            math.log1p(text.count("\n")),
            float(text.count("?")),
        )
        for text, tokens in zip(texts, prompt_tokens, strict=True)
    ]
    return np.array(rows, dtype=np.float64).reshape(len(rows), 5)


@dataclass(frozen=True)
class TextLengthModel:
    """The fitted parts, applied in order: hashed word and character n-gram counts -> TF-IDF -> a
    ridge text score (both) and a truncated SVD (words) -> boosted trees on [score, numeric
    features, SVD] -> log(output tokens). Character n-grams cover scripts written without spaces.

    ``scale`` multiplies exp(prediction): the factor that minimized the median absolute
    percentage error on the validation split (the log-space median is not that minimizer).
    """

    words: Any  # sklearn HashingVectorizer of word 1-2 grams (stateless)
    word_tfidf: Any  # TfidfTransformer
    chars: Any  # HashingVectorizer of character 2-4 grams within words
    char_tfidf: Any
    ridge: Any  # Ridge on [word TF-IDF, character TF-IDF, numeric features]
    svd: Any  # TruncatedSVD of the word TF-IDF
    booster: Any  # HistGradientBoostingRegressor
    scale: float

    def text_features(self, texts: Sequence[str], prompt_tokens: Sequence[int]) -> tuple[Any, np.ndarray]:
        """The sparse matrix the ridge reads, and the dense [numeric, SVD] columns the trees read."""
        import scipy.sparse as sp

        texts = list(texts)
        words = self.word_tfidf.transform(self.words.transform(texts))
        chars = self.char_tfidf.transform(self.chars.transform(texts))
        numeric = numeric_features(texts, prompt_tokens)
        return sp.hstack([words, chars, numeric]).tocsr(), np.column_stack([numeric, self.svd.transform(words)])

    def booster_input(self, ridge_score: np.ndarray, dense: np.ndarray) -> np.ndarray:
        return np.column_stack([ridge_score, dense])

    def predict(self, texts: Sequence[str], prompt_tokens: Sequence[int]) -> np.ndarray:
        """Predicted output tokens (floats >= 1), before any online correction."""
        sparse, dense = self.text_features(texts, prompt_tokens)
        log_tokens = self.booster.predict(self.booster_input(self.ridge.predict(sparse), dense))
        return np.maximum(np.exp(log_tokens) * self.scale, 1.0)


@dataclass(frozen=True)
class ModelMeta:
    """What the JSON beside the pickle records: versions to check before unpickling, and provenance."""

    sklearn_version: str
    log_residual_median: float  # median log(actual / predicted) on the validation split: the correction's zero
    training: dict[str, Any]  # how the training set was built (sizes, split, features)
    # quantiles of log(actual / predicted) on the validation split, by quantile ("0.9"): a
    # quantile prediction's factor until enough served requests have finished
    log_residual_quantiles: dict[str, float] = field(default_factory=dict)

    def residual_quantile(self, quantile: float) -> float:
        """The validation split's ``quantile`` of log(actual / predicted), interpolated between
        the recorded ones; AladdinError outside them."""
        known = sorted((float(q), value) for q, value in self.log_residual_quantiles.items())
        if not known or not known[0][0] <= quantile <= known[-1][0]:
            span = f"{known[0][0]:g}-{known[-1][0]:g}" if known else "none recorded"
            raise AladdinError(f"the text length model knows residual quantiles {span}, not {quantile:g}; "
                               f"retrain with {RETRAIN}")
        qs, values = zip(*known)
        return float(np.interp(quantile, qs, values))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def save_model(model: TextLengthModel, meta: ModelMeta, folder: Path = MODEL_DIR) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / MODEL_FILE, "wb", compresslevel=9) as fh:
        pickle.dump(model, fh, protocol=pickle.HIGHEST_PROTOCOL)
    (folder / META_FILE).write_text(json.dumps(meta.to_dict(), indent=2) + "\n")


def load_model(folder: Path = MODEL_DIR) -> tuple[TextLengthModel, ModelMeta]:
    """The shipped model (or one in a trusted ``folder``); AladdinError if missing or built by
    another scikit-learn minor version."""
    installed = sklearn_version()
    meta_path, model_path = folder / META_FILE, folder / MODEL_FILE
    if not meta_path.is_file() or not model_path.is_file():
        raise AladdinError(f"no text length model in {folder}; train one with {RETRAIN}")
    try:
        meta = ModelMeta(**json.loads(meta_path.read_text()))
    except (ValueError, TypeError) as exc:
        raise AladdinError(f"{meta_path} is not a text length model's metadata: {exc}") from None
    if _minor(meta.sklearn_version) != _minor(installed):
        raise AladdinError(
            f"the text length model was trained with scikit-learn {meta.sklearn_version}, but {installed} is installed; "
            f"install scikit-learn {'.'.join(_minor(meta.sklearn_version))}.x or retrain with {RETRAIN}"
        )
    with gzip.open(model_path, "rb") as fh:
        model = pickle.load(fh)  # noqa: S301 (the package's own file, or a folder the caller trusts)
    if not isinstance(model, TextLengthModel):
        raise AladdinError(f"{model_path} does not hold a TextLengthModel")
    return model, meta


@dataclass(frozen=True)
class CorrectionConfig:
    """The online correction: the median log ratio over the last ``window`` finished requests,
    applied once ``min_samples`` are in (a median of a few is noise)."""

    window: int = 256
    min_samples: int = 32

    def __post_init__(self) -> None:
        if self.window < 1 or not 1 <= self.min_samples <= self.window:
            raise AladdinError(f"need window >= 1 and 1 <= min_samples <= window, got {self.window}, {self.min_samples}")


class TextLengthPredictor:
    """Output tokens from the prompt text; ``observe`` feeds finished requests to the correction.

    ``quantile`` None predicts a typical length (the model's, corrected for drift). A value in
    (0, 1) predicts that quantile of the length instead, for reservations that must rarely fall
    short: the model's prediction times exp(that quantile of the recent log ratios actual /
    predicted), or of the validation split's until enough requests have finished.
    """

    def __init__(self, model: TextLengthModel, meta: ModelMeta, correction: CorrectionConfig | None = None,
                 quantile: float | None = None):
        if quantile is not None:
            if not 0.0 < quantile < 1.0:
                raise AladdinError(f"the length quantile must be in (0, 1) or None for a typical length, got {quantile}")
            meta.residual_quantile(quantile)  # known to the model, or one clear error now
        self.model = model
        self.meta = meta
        self.quantile = quantile
        self.correction_config = correction or CorrectionConfig()
        self._log_ratios: deque[float] = deque(maxlen=self.correction_config.window)
        self._factor: float | None = None  # None: stale, recomputed on the next prediction

    @classmethod
    def load(cls, folder: Path = MODEL_DIR, correction: CorrectionConfig | None = None,
             quantile: float | None = None) -> TextLengthPredictor:
        return cls(*load_model(folder), correction, quantile)

    @property
    def correction(self) -> float:
        """The factor predictions are multiplied by. Typical lengths: exp(median recent log
        ratio - the validation median), 1 before ``min_samples``; a quantile: exp(that quantile
        of the recent log ratios), the validation split's before ``min_samples``."""
        if self._factor is None:
            ratios = self._log_ratios
            enough = len(ratios) >= self.correction_config.min_samples
            if self.quantile is None:
                self._factor = math.exp(float(np.median(ratios)) - self.meta.log_residual_median) if enough else 1.0
            else:
                self._factor = math.exp(float(np.quantile(ratios, self.quantile)) if enough
                                        else self.meta.residual_quantile(self.quantile))
        return self._factor

    def predict_raw(self, texts: Sequence[str], prompt_tokens: Sequence[int]) -> np.ndarray:
        """The model's predictions (floats), uncorrected: what ``observe`` compares against."""
        if len(texts) != len(prompt_tokens):
            raise AladdinError(f"got {len(texts)} prompts but {len(prompt_tokens)} token counts")
        return self.model.predict(texts, prompt_tokens)

    def predict(self, text: str, prompt_tokens: int) -> int:
        """Predicted output tokens (>= 1) of one request, corrected."""
        return self.corrected(float(self.predict_raw([text], [prompt_tokens])[0]))

    def corrected(self, raw: float) -> int:
        """An uncorrected prediction (from ``predict_raw``) times the current correction, as tokens."""
        return max(1, math.ceil(raw * self.correction - 1e-9))

    def observe(self, raw_prediction: float, output_tokens: int) -> None:
        """Learn one finished request: its uncorrected prediction and its real output length."""
        if output_tokens < 1 or not raw_prediction > 0:
            raise AladdinError(f"need output_tokens >= 1 and a positive prediction, got {output_tokens}, {raw_prediction}")
        self._log_ratios.append(math.log(output_tokens / raw_prediction))
        self._factor = None


def with_predictions(schedule: Sequence[ScheduledRequest], predictor: TextLengthPredictor) -> list[ScheduledRequest]:
    """The schedule with each request's length predicted from its prompt text, at the
    predictor's current correction (a fresh one: the validation split's; a simulation learns no
    drift, as its workload is the model's own distribution). One batch: fast."""
    if not schedule:
        return []
    raw = predictor.predict_raw([r.spec.prompt for r in schedule], [r.spec.prompt_tokens for r in schedule])
    return [replace(r, predicted_output_tokens=predictor.corrected(float(value))) for r, value in zip(schedule, raw)]
