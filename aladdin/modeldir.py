"""Model folders that vLLM serves with ``--load-format dummy``.

No weights can be downloaded, so a model is a ``config.json`` of a real architecture's
shape (random weights, real compute) plus a real 32k SentencePiece tokenizer taken from
the ``mistral-common`` package, so prompt token counts are realistic.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from aladdin.errors import AladdinError
from aladdin.paths import aladdin_home

VOCAB_SIZE = 32000


@dataclass(frozen=True)
class ModelShape:
    """The few numbers that set a Llama model's compute and KV footprint."""

    name: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int

    @property
    def kv_bytes_per_token(self) -> int:
        """Bytes of KV cache one token holds in bf16/fp16 (K and V, every layer)."""
        head_dim = self.hidden_size // self.num_attention_heads
        return 2 * self.num_hidden_layers * self.num_key_value_heads * head_dim * 2

    @property
    def weight_bytes(self) -> int:
        """Bytes of the weights in bf16/fp16: embeddings and LM head, attention, MLP, norms."""
        head_dim = self.hidden_size // self.num_attention_heads
        attention = 2 * self.hidden_size * self.hidden_size + 2 * self.hidden_size * self.num_key_value_heads * head_dim
        layer = attention + 3 * self.hidden_size * self.intermediate_size + 2 * self.hidden_size
        return 2 * (2 * VOCAB_SIZE * self.hidden_size + self.num_hidden_layers * layer + self.hidden_size)

    def config(self) -> dict:
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "max_position_embeddings": self.max_position_embeddings,
            "vocab_size": VOCAB_SIZE,
            "hidden_act": "silu",
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "tie_word_embeddings": False,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
            "pad_token_id": 0,
        }


SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("tiny", 256, 512, 2, 4, 4, 4096),
        ModelShape("llama2-7b", 4096, 11008, 32, 32, 32, 4096),
        ModelShape("llama2-13b", 5120, 13824, 40, 40, 40, 4096),
    )
}

# Llama-2 chat format, so /v1/chat/completions works on the dummy model.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}<<SYS>>\n{{ m['content'] }}\n<</SYS>>\n\n"
    "{% elif m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]"
    "{% else %} {{ m['content'] }}{{ eos_token }}{% endif %}{% endfor %}"
)


def sentencepiece_model_path() -> Path:
    """The real 32k SentencePiece model shipped inside ``mistral-common``."""
    try:
        data = resources.files("mistral_common") / "data" / "tokenizer.model.v1"
    except ModuleNotFoundError:
        raise AladdinError(
            "mistral-common is not installed; it ships the tokenizer (run the set-up: make setup)"
        ) from None
    path = Path(str(data))
    if not path.is_file():
        raise AladdinError(f"mistral-common has no tokenizer file at {path}")
    return path


def write_model_dir(directory: str | Path, shape: str = "tiny") -> Path:
    """Write config.json and the tokenizer files for ``shape`` into ``directory``."""
    if shape not in SHAPES:
        raise AladdinError(f"unknown model shape {shape!r}; choose one of {', '.join(SHAPES)}")
    out = Path(directory)
    if out.exists() and not out.is_dir():
        raise AladdinError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    spec = SHAPES[shape]
    (out / "config.json").write_text(json.dumps(spec.config(), indent=2) + "\n")
    shutil.copyfile(sentencepiece_model_path(), out / "tokenizer.model")
    (out / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": False,
                "model_max_length": spec.max_position_embeddings,
                "chat_template": CHAT_TEMPLATE,
            },
            indent=2,
        )
        + "\n"
    )
    (out / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2}, indent=2) + "\n"
    )
    (out / "aladdin_model.json").write_text(
        json.dumps({"shape": shape, "kv_bytes_per_token": spec.kv_bytes_per_token}, indent=2) + "\n"
    )
    return out


def default_model_dir(shape: str = "tiny") -> Path:
    """The shared model folder for ``shape`` under ``$ALADDIN_HOME/models``, written on first use."""
    directory = aladdin_home() / "models" / shape
    if not (directory / "aladdin_model.json").exists():
        write_model_dir(directory, shape)
    return directory


def read_shape(directory: str | Path) -> ModelShape:
    """The shape a model folder was written with (``aladdin model init``)."""
    marker = Path(directory) / "aladdin_model.json"
    try:
        return SHAPES[json.loads(marker.read_text())["shape"]]
    except FileNotFoundError:
        raise AladdinError(f"{directory} is not a model folder made by 'aladdin model init'") from None
    except (KeyError, ValueError) as exc:
        raise AladdinError(f"{marker} is corrupt: {exc}") from None
