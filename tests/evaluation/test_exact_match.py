import json

import pytest
from lm_fixtures import tiny_lm

from theseus.evaluation.exact_match import ExactMatch


def test_exact_match_counts_the_greedy_answers(tmp_path):
    lm = tiny_lm(block_size=48, batch_size=2)
    prompts = ["Q: 2 + 2 =", "Q: the sky is", "Q: hello"]
    greedy = lm.generate(prompts, max_new_tokens=8)
    assert all(len(g) == 8 for g in greedy)
    answers = [greedy[0], f"  {greedy[1]}\t", greedy[2] + "!"]  # right, right (whitespace), wrong
    path = tmp_path / "qa.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in zip(prompts, answers)))
    task = ExactMatch(str(path), until=(), max_new_tokens=8)
    assert task.generations(lm) == greedy
    assert task(lm) == {"exact_match": pytest.approx(2 / 3), "n": 3}
    # A stop string cuts the generation before it, as the harness's `until` does.
    cut = ExactMatch(str(path), until=(greedy[0][3],), max_new_tokens=8).generations(lm)[0]
    assert cut == greedy[0].split(greedy[0][3])[0]
