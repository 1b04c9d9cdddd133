import json

import keras
import numpy as np
import pytest
from lm_fixtures import ascii_gpt

from theseus.data import ByteTokenizer
from theseus.evaluation.callback import EvaluationCallback
from theseus.evaluation.language_model import LanguageModel
from theseus.evaluation.tasks import evaluations, run_evaluations


@pytest.mark.slow
def test_evaluations_every_n_steps_see_the_weights_of_that_step(tmp_path):
    (tmp_path / "mc.jsonl").write_text(
        "".join(
            json.dumps({"context": c, "choices": ["ab", "ba", "abab"], "gold": 0}) + "\n" for c in ["ab", "abab ab"]
        )
    )
    (tmp_path / "text.txt").write_text("abababab " * 8)
    specs = [f"multiple_choice:{tmp_path / 'mc.jsonl'}", f"perplexity:{tmp_path / 'text.txt'}"]
    model = ascii_gpt(block_size=32)
    model.compile(optimizer=keras.optimizers.AdamW(learning_rate=3e-3))
    tokens = np.frombuffer(b"abababab " * 60, np.uint8).astype("int32")[: 16 * 33].reshape(16, 33)
    callback = EvaluationCallback(
        evaluations(specs),
        ByteTokenizer(),
        interval=2,
        total_steps=4,
        path=tmp_path / "evaluations.jsonl",
        tokens_per_step=128,
    )
    model.fit(tokens[:, :-1], tokens[:, 1:], batch_size=4, epochs=1, shuffle=False, verbose=0, callbacks=[callback])

    rows = [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()]
    assert [(r["step"], r["tokens"]) for r in rows] == [(2, 256), (4, 512)] and rows == callback.history
    final = run_evaluations(LanguageModel(model, ByteTokenizer()), evaluations(specs))
    for spec, metrics in final.items():
        for metric, value in metrics.items():
            assert rows[-1][f"{spec}/{metric}"] == pytest.approx(value, rel=1e-5)
    nll = f"perplexity:{tmp_path / 'text.txt'}/nll"
    assert rows[0][nll] > rows[1][nll]  # step 2 was scored with step 2's weights, not the final ones

    # Resumed from a checkpoint at step 2: the row of step 4 (written after it) goes.
    resumed = EvaluationCallback({}, ByteTokenizer(), interval=2, start_step=2, path=tmp_path / "evaluations.jsonl")
    resumed.on_train_begin()
    assert [json.loads(line) for line in (tmp_path / "evaluations.jsonl").read_text().splitlines()] == rows[:1]
