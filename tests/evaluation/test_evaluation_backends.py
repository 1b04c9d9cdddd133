"""The same weights score and complete text the same on JAX, TensorFlow and torch."""

import json
import sys
from pathlib import Path

import pytest
from lm_fixtures import tiny_lm
from support import run_command

PAIRS = [["The cat sat on the", " mat"], ["", "no context"], ["Trailing ", "space"]]
TEXTS = ["A text scored whole, in rolling windows of the model's short context."]
SCRIPT = """
import json, sys
sys.path.insert(0, sys.argv[2])
from lm_fixtures import tiny_lm
lm = tiny_lm(block_size=24)
lm.model.load_weights(sys.argv[1])
pairs, texts = json.loads(sys.argv[3]), json.loads(sys.argv[4])
print(json.dumps({"loglikelihood": lm.loglikelihood([tuple(p) for p in pairs]),
                  "rolling": lm.rolling_loglikelihood(texts),
                  "generated": lm.generate([p[0] for p in pairs], 6)}))
"""


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensorflow", "torch"])
def test_scores_and_completions_are_the_same_on_every_backend(backend, tmp_path):
    lm = tiny_lm(block_size=24)
    lm.model.save_weights(tmp_path / "gpt.weights.h5")
    mine = {
        "loglikelihood": lm.loglikelihood([tuple(p) for p in PAIRS]),
        "rolling": lm.rolling_loglikelihood(TEXTS),
        "generated": lm.generate([p[0] for p in PAIRS], 6),
    }
    result = run_command(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(tmp_path / "gpt.weights.h5"),
            str(Path(__file__).parent),
            json.dumps(PAIRS),
            json.dumps(TEXTS),
        ],
        env={"KERAS_BACKEND": backend},
        check=True,
    )
    theirs = json.loads(result.stdout.strip().splitlines()[-1])
    for (logprob, greedy), (other, other_greedy) in zip(mine["loglikelihood"], theirs["loglikelihood"]):
        assert other == pytest.approx(logprob, rel=1e-5) and other_greedy == greedy
    assert theirs["rolling"] == pytest.approx(mine["rolling"], rel=1e-5)
    assert theirs["generated"] == mine["generated"]
