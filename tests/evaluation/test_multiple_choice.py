import json

import numpy as np
import pytest
from lm_fixtures import hand_loglikelihood, tiny_lm

from theseus.config import ConfigError
from theseus.evaluation.multiple_choice import MultipleChoice

CONTEXTS = ["The weather today", "Numbers: 1, 2, 3", "def main():", "Paris is the capital of"]


@pytest.fixture(scope="module")
def lm():
    return tiny_lm(block_size=48, batch_size=4)


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def greedy_choices(lm, rng):
    """Per context: the model's own greedy continuation (after the delimiter space) as the
    gold choice, at a random index among distractors that differ from it in the last
    character only: same prefix, a worse last token, so the gold one must score highest."""
    golds = lm.generate([context + " " for context in CONTEXTS], max_new_tokens=6)
    rows = []
    for context, gold in zip(CONTEXTS, golds):
        assert len(gold) == 6 and gold.isascii()
        distractors = {gold[:-1] + chr(c) for c in rng.choice(range(33, 127), 6, replace=False)} - {gold}
        choices = sorted(distractors)[:3]
        index = int(rng.integers(0, len(choices) + 1))
        rows.append({"context": context, "choices": choices[:index] + [gold] + choices[index:], "gold": index})
    return rows


def test_the_models_own_greedy_continuation_is_always_chosen(lm, tmp_path):
    rows = greedy_choices(lm, np.random.default_rng(0))
    task = MultipleChoice(write_jsonl(tmp_path / "greedy.jsonl", rows))
    assert task(lm) == {"acc": 1.0, "acc_norm": 1.0, "n": len(rows)}
    for row, scores in zip(rows, task.loglikelihoods(lm)):
        for choice, score in zip(row["choices"], scores):
            tokens = list((row["context"] + " " + choice).encode())
            assert score == pytest.approx(hand_loglikelihood(lm.model, tokens, len(choice) + 1)[0], rel=1e-5)


def test_accuracy_and_length_normalised_accuracy_as_the_harness_defines_them(lm, tmp_path):
    rng = np.random.default_rng(1)
    words = ["a", "yes", "no", "maybe not", "x y z", "zzzz", "the end", "q"]
    rows = [
        {"context": context, "choices": list(rng.choice(words, 4, replace=False)), "gold": int(rng.integers(0, 4))}
        for context in CONTEXTS * 3
    ]
    task = MultipleChoice(write_jsonl(tmp_path / "random.jsonl", rows), delimiter=": ")
    hand = [
        [
            hand_loglikelihood(lm.model, list((row["context"] + ": " + c).encode()), len(c) + 2)[0]
            for c in row["choices"]
        ]
        for row in rows
    ]
    acc = np.mean([np.argmax(h) == row["gold"] for h, row in zip(hand, rows)])
    acc_norm = np.mean(
        [np.argmax(np.array(h) / [len(c) for c in row["choices"]]) == row["gold"] for h, row in zip(hand, rows)]
    )
    assert task(lm) == {"acc": pytest.approx(acc), "acc_norm": pytest.approx(acc_norm), "n": 12}
    np.testing.assert_allclose(task.loglikelihoods(lm), hand, rtol=1e-5)


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"context": "a", "choices": ["b"]}', "missing key"),
        ('{"context": "a", "choices": ["b", "c"], "gold": 2}', "'gold' must be an index"),
        ('{"context": "a", "choices": "bc", "gold": 0}', "list of non-empty strings"),
        ("{not json", "not valid JSON"),
    ],
)
def test_a_bad_example_is_one_error_naming_its_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"context": "ok", "choices": ["x", "y"], "gold": 1}\n' + line + "\n")
    with pytest.raises(ConfigError, match=message) as error:
        MultipleChoice(str(path))
    assert "2" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ConfigError, match="needs a JSONL file"):
        MultipleChoice()
