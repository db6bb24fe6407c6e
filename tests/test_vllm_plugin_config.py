"""The vLLM plugin's configuration and per-request inputs (no engine needed)."""

from __future__ import annotations

import json

import pytest

from aladdin.errors import AladdinError
from aladdin.plugin.vllm.config import CONFIG_ENV, PluginConfig, load_config, request_inputs


def test_config_comes_from_the_env_file_then_vllms_additional_config(tmp_path):
    path = tmp_path / "aladdin.json"
    path.write_text(json.dumps({"ttft_slo": 2.0, "headroom": 0.1}))
    config = load_config({"aladdin": {"headroom": 0.2}}, {CONFIG_ENV: str(path)})
    assert config == PluginConfig(ttft_slo=2.0, headroom=0.2)
    assert load_config(None, {}) == PluginConfig()


@pytest.mark.parametrize("values, message", [
    ({"headroom": 1.5}, "headroom"), ({"lost_ttft": "drop"}, "lost_ttft"), ({"nope": 1}, "unknown keys"),
    ({"ttft_slo": 0}, "ttft_slo"), ({"length_quantile": 1.0}, "length_quantile"),
    ({"default_output_tokens": 0}, "default_output_tokens"),
])
def test_bad_config_is_one_clear_error(values, message):
    with pytest.raises(AladdinError, match=message):
        load_config({"aladdin": values}, {})


def test_request_inputs_are_checked():
    assert request_inputs({"aladdin_output_tokens": "120", "aladdin_atgt_slo": 0.05}).predicted_output_tokens == 120
    assert request_inputs({}).ttft_slo is None
    for bad in ({"aladdin_output_tokens": "lots"}, {"aladdin_output_tokens": 2.5}, {"aladdin_ttft_slo": -1},
                {"aladdin_atgt_slo": "nan"}):
        with pytest.raises(AladdinError, match="vllm_xargs"):
            request_inputs(bad)
