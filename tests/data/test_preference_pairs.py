"""Preference pairs (theseus/data/preference.py; named apart from tests/training/test_preference.py,
as pytest needs unique basenames): records read and refused, answers found (plain text and the chat
template's final turn), rows cut and padded, batches interleaved and a pure function of the step."""

import json

import numpy as np
import pytest
from hf_checkpoints import tokenizer

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError
from theseus.data import ByteTokenizer, HFTokenizer
from theseus.data.preference import (
    PreferenceBatches,
    PreferencePairs,
    encode_answer,
    last_run,
    read_preference_records,
    split_pairs,
)

TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def test_records_of_both_forms_are_read_and_a_bad_one_is_named(tmp_path):
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    path = write(
        tmp_path / "pairs.jsonl",
        [{"prompt": "2+2=", "chosen": "4", "rejected": "5"}, {"messages": messages, "chosen": "a", "rejected": "b"}],
    )
    assert read_preference_records(path) == [("2+2=", "4", "5"), (messages, "a", "b")]
    write(tmp_path / "bad.jsonl", [{"prompt": "x", "chosen": "y", "rejected": "z"}, {"prompt": "x", "chosen": 1}])
    with pytest.raises(ConfigError, match=r"line 2 of .*bad.jsonl needs `chosen` and `rejected` strings"):
        read_preference_records(tmp_path / "bad.jsonl")
    with pytest.raises(ConfigError, match="preference data not found"):
        read_preference_records(tmp_path / "missing.jsonl")


def test_a_plain_answer_is_its_text_and_eos():
    tok = ByteTokenizer()
    ids, mask = encode_answer(tok, "ab=", "cd")
    assert ids.tolist() == [*b"ab=cd", tok.eos_id]
    assert mask.tolist() == [False, False, False, True, True, True]


def test_a_chat_answer_is_the_final_assistant_turn_alone(tmp_path):
    tokenizer(tmp_path / "tok", chat_template=TEMPLATE)
    tok = HFTokenizer(tmp_path / "tok")
    history = [
        {"role": "user", "content": "the"},
        {"role": "assistant", "content": "quick"},
        {"role": "user", "content": "brown"},
    ]
    ids, mask = encode_answer(tok, history, "fox")
    assert tok.decode(ids[mask]) == "fox<|endoftext|>"  # not the earlier assistant turn
    plain_ids, plain_mask = encode_answer(tok, "lazy", "dog")  # a plain prompt is the user's turn
    assert tok.decode(plain_ids) == "<|user|>lazy<|endoftext|><|assistant|>dog<|endoftext|>"
    assert tok.decode(plain_ids[plain_mask]) == "dog<|endoftext|>"


def test_last_run():
    mask = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0], bool)
    assert last_run(mask).tolist() == [0, 0, 0, 0, 0, 1, 1, 1, 0]
    assert not last_run(np.zeros(3, bool)).any()


def test_rows_are_cut_on_the_left_padded_on_the_right_and_interleaved():
    tok = ByteTokenizer()
    records = [("p=", "long answer", "no"), ("q=", "x", "y")]
    pairs = PreferencePairs(records, tok, block_size=7, pad_id=0)
    assert pairs.truncated == 1
    inputs, targets = pairs.rows(np.array([0, 1]))
    assert inputs.shape == targets.shape == (4, 7)
    assert bytes(pairs.ids[0, 0, :-1].tolist()) == b" answer"  # the last 8 tokens: "answer" and EOS kept
    assert targets[1].tolist() == [IGNORE_INDEX, ord("n"), ord("o"), tok.eos_id] + [IGNORE_INDEX] * 3  # rejected "no"
    assert inputs[2, :3].tolist() == [*b"q=x"]  # pair 1's chosen row follows pair 0's rejected one
    with pytest.raises(ConfigError, match="pair 0 has an answer with no token"):
        PreferencePairs([("", "", "x")], tok, block_size=4, pad_id=0)  # an empty answer of an empty prompt


def test_batches_are_a_pure_function_of_the_step_and_carry_the_reference():
    tok = ByteTokenizer()
    pairs = PreferencePairs([(f"{i}=", "a", "b") for i in range(10)], tok, block_size=8, pad_id=0)
    reference = -np.arange(20, dtype=np.float32).reshape(10, 2)
    train, held = split_pairs(10, 0.2)
    assert held.tolist() == [4, 9]
    run = PreferenceBatches(pairs, train, reference, 2, steps=6, seed=3)
    resumed = PreferenceBatches(pairs, train, reference, 2, steps=2, seed=3, start_step=4)
    for step in (4, 5):
        np.testing.assert_array_equal(run[step][0], resumed[step - 4][0])
        np.testing.assert_array_equal(run[step][1], resumed[step - 4][1])
    seen = np.concatenate([run.chosen(i) for i in range(4)])  # one pass: every training pair once
    assert sorted(seen.tolist()) == train.tolist()
    inputs, y = run[0]
    assert inputs.shape == (4, 8) and y.shape == (4, 9)
    chosen = run.chosen(0)
    np.testing.assert_array_equal(y[:, -1], reference[chosen].reshape(-1))
    validation = PreferenceBatches(pairs, held, reference, 2, steps=1, shuffle=False)
    assert validation.chosen(0).tolist() == [4, 9]
    with pytest.raises(ConfigError, match="2 held-out pairs, fewer than the 3 pairs of a batch"):
        PreferenceBatches(pairs, held, reference, 3, steps=1, shuffle=False)
