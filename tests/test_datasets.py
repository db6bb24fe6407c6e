"""Request sources: tokenizer loading, ShareGPT parsing and sampling, synthesis, trace loading."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from aladdin.errors import AladdinError
from aladdin.loadgen.arrivals import make_offsets
from aladdin.loadgen.datasets import (
    MOONCAKE_BLOCK_TOKENS,
    LengthLimits,
    PromptSynthesizer,
    load_sharegpt,
    load_tokenizer,
    load_trace,
    read_sharegpt,
    sample_sharegpt,
    synthetic,
    word_token_ids,
)

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def sharegpt():
    """The packaged ShareGPT file, parsed once for the module."""
    return read_sharegpt()


def count(tokenizer, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False))


# --- tokenizer ----------------------------------------------------------------------------------


def test_load_tokenizer_errors(tmp_path):
    with pytest.raises(AladdinError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    (tmp_path / "tokenizer_config.json").write_text("{not json")
    with pytest.raises(AladdinError, match="cannot load a tokenizer"):
        load_tokenizer(tmp_path)


def test_word_vocabulary_avoids_special_and_byte_ids(tokenizer, tiny_model_dir):
    import sentencepiece

    processor = sentencepiece.SentencePieceProcessor(model_file=str(tiny_model_dir / "tokenizer.model"))
    ids = word_token_ids(tokenizer).tolist()
    assert len(ids) > 10_000
    for i in ids:
        assert not (
            processor.is_control(i)
            or processor.is_byte(i)
            or processor.is_unknown(i)
            or processor.is_unused(i)
        )
        assert processor.id_to_piece(i).startswith("\u2581")


# --- ShareGPT -----------------------------------------------------------------------------------


def test_packaged_sharegpt_keeps_the_complete_conversations(sharegpt):
    assert sharegpt.truncated
    assert sharegpt.records == 17_671
    # Conversations with no human turn followed by a model reply are skipped.
    assert len(sharegpt.pairs) == 17_335
    assert len({p.source_id for p in sharegpt.pairs}) == len(sharegpt.pairs)


def test_sample_sharegpt_counts_and_filters(sharegpt, tokenizer):
    limits = LengthLimits(
        min_prompt_tokens=8,
        max_prompt_tokens=300,
        min_output_tokens=16,
        max_output_tokens=400,
        max_total_tokens=600,
    )
    specs = sample_sharegpt(sharegpt, tokenizer, 150, seed=3, limits=limits)
    assert len(specs) == 150
    assert len({s.source_id for s in specs}) == 150
    replies = {p.source_id: p.reply for p in sharegpt.pairs}
    for spec in specs[:40]:
        assert spec.prompt_tokens == count(tokenizer, spec.prompt)
        assert spec.output_tokens == count(tokenizer, replies[spec.source_id])
    for spec in specs:
        assert spec.arrival is None and spec.prompt_token_ids is None
        assert limits.admits(spec.prompt_tokens, spec.output_tokens)


def test_sample_sharegpt_is_seeded(sharegpt, tokenizer):
    first = sample_sharegpt(sharegpt, tokenizer, 30, seed=1)
    assert first == sample_sharegpt(sharegpt, tokenizer, 30, seed=1)
    assert [s.source_id for s in first] != [
        s.source_id for s in sample_sharegpt(sharegpt, tokenizer, 30, seed=2)
    ]
    # a larger sample extends a smaller one: the order is the seed's shuffle
    assert sample_sharegpt(sharegpt, tokenizer, 50, seed=1)[:30] == first


def test_load_sharegpt_from_a_user_file(tokenizer):
    path = DATA / "sharegpt_truncated.json"
    specs = load_sharegpt(tokenizer, 3, path=path, min_output_tokens=1)
    assert sorted(s.source_id for s in specs) == ["alpha_0", "epsilon_0", "gamma_0"]
    with pytest.raises(AladdinError, match="only 3 of the 3 conversations"):
        load_sharegpt(tokenizer, 4, path=path, min_output_tokens=1)
    with pytest.raises(AladdinError, match="only 0 of the 3"):
        load_sharegpt(tokenizer, 1, path=path, min_prompt_tokens=500)


def test_read_sharegpt_complete_and_truncated_files():
    complete = read_sharegpt(DATA / "sharegpt_complete.json")
    assert (complete.records, complete.truncated) == (6, False)
    assert [p.source_id for p in complete.pairs] == ["alpha_0", "gamma_0", "epsilon_0", "zeta_0"]
    assert complete.pairs[1].prompt.startswith("Übersetze bitte: «the café")
    assert complete.pairs[2].prompt == "Escaped text: café \u2014 \u6f22\u5b57 and a tab\there."
    truncated = read_sharegpt(DATA / "sharegpt_truncated.json")
    assert (truncated.records, truncated.truncated) == (5, True)
    assert truncated.pairs == complete.pairs[:3]


def test_read_sharegpt_survives_a_cut_at_every_byte(tmp_path):
    """Cut anywhere, the file yields exactly the records that end before the cut."""
    raw = (DATA / "sharegpt_complete.json").read_bytes()
    text = raw.decode("utf-8")
    decoder, ends, pos = json.JSONDecoder(), [], 1
    while text[pos:].lstrip(" \n,").startswith("{"):
        pos += len(text[pos:]) - len(text[pos:].lstrip(" \n,"))
        pos = decoder.raw_decode(text, pos)[1]
        ends.append(len(text[:pos].encode("utf-8")))
    first_pair_end = ends[0]
    cut_file = tmp_path / "cut.json"
    for cut in range(1, len(raw)):
        cut_file.write_bytes(raw[:cut])
        if cut < first_pair_end:
            with pytest.raises(AladdinError, match="no conversation"):
                read_sharegpt(cut_file)
            continue
        data = read_sharegpt(cut_file)
        assert data.records == sum(end <= cut for end in ends), cut
        assert data.truncated == (raw[:cut].rstrip() != raw.rstrip()), cut


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "the file is empty"),
        (b'{"id": 1}', "starts with '{'"),
        (b'[{"id": "a", "conversations": []}, {"id": "b" "x": 1}, {"id": "c"}]', "element 2"),
        (b'[{"id": "a\xff"}]', "invalid UTF-8"),
        (b'[{"id": "a", "conversations": []}]', "no conversation"),
    ],
)
def test_read_sharegpt_rejects_corrupt_files(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(AladdinError, match=message) as error:
        read_sharegpt(path)
    assert str(path) in str(error.value)


def test_read_sharegpt_missing_file(tmp_path):
    with pytest.raises(AladdinError, match="does not exist"):
        read_sharegpt(tmp_path / "nope.json")


# --- synthesis ----------------------------------------------------------------------------------


def test_synthetic_fixed_lengths_round_trip(tokenizer):
    specs = synthetic(tokenizer, 20, prompt_tokens=200, output_tokens=32, seed=5)
    assert len(specs) == 20
    for spec in specs:
        assert spec.prompt_tokens == 200 == len(spec.prompt_token_ids)
        assert spec.output_tokens == 32 and spec.arrival is None
        assert tokenizer.encode(spec.prompt, add_special_tokens=False) == list(spec.prompt_token_ids)
    assert len({s.prompt_token_ids for s in specs}) == 20


def test_synthetic_ranges_and_seeds(tokenizer):
    specs = synthetic(tokenizer, 200, prompt_tokens=(4, 64), output_tokens=(1, 8), seed=1)
    prompt_lens = [s.prompt_tokens for s in specs]
    output_lens = [s.output_tokens for s in specs]
    assert min(prompt_lens) >= 4 and max(prompt_lens) <= 64 and len(set(prompt_lens)) > 30
    assert set(output_lens) == set(range(1, 9))
    assert all(len(s.prompt_token_ids) == s.prompt_tokens for s in specs)
    assert specs == synthetic(tokenizer, 200, prompt_tokens=(4, 64), output_tokens=(1, 8), seed=1)
    assert specs != synthetic(tokenizer, 200, prompt_tokens=(4, 64), output_tokens=(1, 8), seed=2)


@pytest.mark.parametrize(
    "prompt_tokens, output_tokens, message",
    [(0, 8, "at least 1"), ((10, 5), 8, "lo <= hi"), ("x", 8, "integer or a"), (8, (0, 3), "lo <= hi")],
)
def test_synthetic_rejects_bad_lengths(tokenizer, prompt_tokens, output_tokens, message):
    with pytest.raises(AladdinError, match=message):
        synthetic(tokenizer, 3, prompt_tokens, output_tokens)
    with pytest.raises(AladdinError, match="positive integer"):
        synthetic(tokenizer, 0, 8, 8)


def test_hash_blocks_are_shared_prefixes(tokenizer):
    synth = PromptSynthesizer(tokenizer, seed=0)
    block = MOONCAKE_BLOCK_TOKENS
    a = synth.token_ids(3 * block, key=1, hash_ids=[7, 8, 9])
    b = synth.token_ids(3 * block, key=2, hash_ids=[7, 8, 10])
    assert (a[: 2 * block] == b[: 2 * block]).all()
    assert (a[2 * block :] != b[2 * block :]).mean() > 0.9
    cut = synth.token_ids(block + 100, key=3, hash_ids=[7, 8, 9])
    assert (cut == a[: block + 100]).all()
    padded = synth.token_ids(block + 100, key=4, hash_ids=[7])
    other = synth.token_ids(block + 100, key=5, hash_ids=[7])
    assert (padded[:block] == a[:block]).all()
    assert (padded[block:] != other[block:]).mean() > 0.9  # padding is the request's own
    assert (
        PromptSynthesizer(tokenizer, seed=1).token_ids(block, key=1, hash_ids=[7]) != a[:block]
    ).mean() > 0.9


# --- traces -------------------------------------------------------------------------------------


def test_azure_trace_sorted_and_scaled(tokenizer):
    specs = load_trace(DATA / "azure_sample.csv", tokenizer)
    assert [s.source_id for s in specs] == ["2", "4", "3", "5", "6"]
    assert [s.prompt_tokens for s in specs] == [374, 879, 396, 91, 1421]
    assert [s.output_tokens for s in specs] == [44, 62, 109, 5, 233]
    assert [s.arrival for s in specs] == pytest.approx([0.0, 1.419410, 4.068183, 4.319410, 15.868183])
    for spec in specs:
        assert len(spec.prompt_token_ids) == spec.prompt_tokens
    fast = load_trace(DATA / "azure_sample.csv", tokenizer, time_scale=0.5)
    assert [s.arrival for s in fast] == pytest.approx([a.arrival * 0.5 for a in specs])
    assert [s.prompt_token_ids for s in fast] == [s.prompt_token_ids for s in specs]
    assert len(load_trace(DATA / "azure_sample.csv", tokenizer, limit=2)) == 2


def test_azure_trace_with_numeric_seconds(tmp_path, tokenizer):
    path = tmp_path / "azure.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n100.5,10,2\n100.0,20,3\n")
    specs = load_trace(path, tokenizer, time_scale=2.0)
    assert [(s.arrival, s.prompt_tokens) for s in specs] == [(0.0, 20), (1.0, 10)]


def test_mooncake_trace_keeps_prefix_reuse(tokenizer):
    specs = load_trace(DATA / "mooncake_sample.jsonl", tokenizer)
    assert [s.source_id for s in specs] == ["1", "2", "3", "4", "6"]
    assert [s.arrival for s in specs] == pytest.approx([0.0, 0.006, 0.011, 3.053, 4.869])
    assert [s.prompt_tokens for s in specs] == [1200, 1100, 700, 600, 300]
    ids = [s.prompt_token_ids for s in specs]
    block = MOONCAKE_BLOCK_TOKENS
    assert ids[0][: 2 * block] == ids[1][: 2 * block]  # hash ids 46, 47 shared
    assert ids[0][2 * block : 1100] != ids[1][2 * block :]
    assert ids[3][:block] == ids[0][:block] and ids[4] == ids[0][:300]
    assert ids[2][:block] != ids[0][:block]


def test_generic_traces(tokenizer):
    jsonl = load_trace(DATA / "generic_sample.jsonl", tokenizer, time_scale=4.0)
    assert [(s.arrival, s.prompt_tokens, s.output_tokens) for s in jsonl] == [
        (0.0, 128, 16),
        (1.0, 64, 32),
        (10.0, 256, 8),
    ]
    csv = load_trace(DATA / "generic_sample.csv", tokenizer)
    assert [(s.arrival, s.prompt_tokens, s.source_id) for s in csv] == [
        (0.0, 50, "3"),
        (0.5, 100, "2"),
        (2.0, 25, "4"),
    ]


def test_trace_arrivals_feed_the_schedule(tokenizer):
    specs = load_trace(DATA / "generic_sample.jsonl", tokenizer, time_scale=0.5)
    offsets = make_offsets("trace", 3, trace_arrivals=[s.arrival for s in specs])
    assert offsets.tolist() == [0.0, 0.125, 1.25]  # (10.0, 10.25, 12.5) s minus the first, x 0.5


def test_trace_format_can_be_forced(tmp_path, tokenizer):
    path = tmp_path / "trace.txt"
    path.write_text('{"timestamp": 0, "prompt_tokens": 5, "output_tokens": 1}\n')
    assert load_trace(path, tokenizer, fmt="generic")[0].prompt_tokens == 5
    with pytest.raises(AladdinError, match="missing column 'input_length'"):
        load_trace(path, tokenizer, fmt="mooncake")
    with pytest.raises(AladdinError, match="must be jsonl, not csv"):
        load_trace(DATA / "generic_sample.csv", tokenizer, fmt="mooncake")
    with pytest.raises(AladdinError, match="unknown trace format 'burst'"):
        load_trace(path, tokenizer, fmt="burst")


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("t.csv", "", "is empty"),
        ("t.jsonl", "\n\n", "is empty"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n", "has no requests"),
        ("t.csv", "TIMESTAMP,ContextTokens\n1,2\n", "missing column 'GeneratedTokens'"),
        ("t.csv", "TIMESTAMP,ContextTokens,GeneratedTokens,Extra\n1,2,3,4\n", "unknown column 'Extra'"),
        ("t.csv", "when,a,b\n1,2,3\n", "cannot tell the trace format"),
        (
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n1,2,3\n2,many,3\n",
            "line 3: column 'ContextTokens' is not a number: 'many'",
        ),
        (
            "t.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,2,3\nsoon,2,3\n",
            "line 3: column 'TIMESTAMP' is not a date-time",
        ),
        (
            "t.csv",
            "timestamp,prompt_tokens,output_tokens\n1,2,0\n",
            "line 2: column 'output_tokens' must be a whole number >= 1",
        ),
        (
            "t.csv",
            "timestamp,prompt_tokens,output_tokens\n1,2.5,1\n",
            "line 2: column 'prompt_tokens' must be a whole number",
        ),
        (
            "t.csv",
            "timestamp,prompt_tokens,output_tokens\n1,,1\n",
            "line 2: column 'prompt_tokens' is not a number",
        ),
        (
            "t.jsonl",
            '{"timestamp": 1, "prompt_tokens": 2, "output_tokens": 3}\n{"timestamp": 2,\n',
            "line 2: not JSON",
        ),
        ("t.jsonl", '[{"timestamp": 1}]\n', "one JSON object per line"),
        (
            "t.jsonl",
            '{"timestamp": 1, "prompt_tokens": 2, "output_tokens": 3}\n{"timestamp": 2, "prompt_tokens": 2}\n',
            "line 2: missing column 'output_tokens'",
        ),
        (
            "t.jsonl",
            '{"timestamp": 1, "prompt_tokens": 2, "output_tokens": 3, "hash_ids": []}\n',
            "unknown column 'hash_ids'",
        ),
        (
            "t.jsonl",
            '{"timestamp": "noon", "prompt_tokens": 2, "output_tokens": 3}\n',
            "line 1: column 'timestamp' is not a number",
        ),
        (
            "t.jsonl",
            '{"timestamp": 1, "prompt_tokens": true, "output_tokens": 3}\n',
            "line 1: column 'prompt_tokens' is not a number",
        ),
        (
            "t.jsonl",
            '{"timestamp": 1, "input_length": 2, "output_length": 3, "hash_ids": "1,2"}\n',
            "line 1: column 'hash_ids' must be a list",
        ),
    ],
)
def test_trace_errors_name_the_problem(tmp_path, tokenizer, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(AladdinError, match=message) as error:
        load_trace(path, tokenizer)
    assert str(path) in str(error.value)


@pytest.mark.parametrize("time_scale", [0, -1.0, float("nan"), float("inf")])
def test_trace_rejects_bad_time_scale(tokenizer, time_scale):
    with pytest.raises(AladdinError, match="time scale"):
        load_trace(DATA / "generic_sample.csv", tokenizer, time_scale=time_scale)


def test_missing_trace(tmp_path, tokenizer):
    with pytest.raises(AladdinError, match="does not exist"):
        load_trace(tmp_path / "nope.csv", tokenizer)
