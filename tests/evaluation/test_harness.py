"""lm-evaluation-harness runs its own tasks (YAML files over local JSONL: no download) on
a theseus model, and reports what theseus's own evaluators report on the same data."""

import json
import textwrap

import numpy as np
import pytest

pytest.importorskip("lm_eval")

from lm_eval.utils import get_rolling_token_windows, make_disjoint_window  # noqa: E402
from lm_fixtures import tiny_lm  # noqa: E402

from theseus.evaluation.exact_match import ExactMatch  # noqa: E402
from theseus.evaluation.harness import evaluate_harness  # noqa: E402
from theseus.evaluation.multiple_choice import MultipleChoice  # noqa: E402
from theseus.evaluation.tasks import evaluation  # noqa: E402
from theseus.evaluation.text_perplexity import Perplexity  # noqa: E402

TASKS = {
    "multiple_choice": """
        output_type: multiple_choice
        doc_to_text: context
        doc_to_choice: choices
        doc_to_target: gold
        metric_list:
          - metric: acc
          - metric: acc_norm
    """,
    "loglikelihood_rolling": """
        output_type: loglikelihood_rolling
        doc_to_text: ""
        doc_to_target: text
        metric_list:
          - metric: bits_per_byte
    """,
    "generate_until": """
        output_type: generate_until
        doc_to_text: prompt
        doc_to_target: answer
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 8
          do_sample: false
        metric_list:
          - metric: exact_match
            regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]
    """,
}


def write_task(folder, name, rows, body):
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    header = f"task: theseus_{name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\ntest_split: test\n"
    (folder / f"{name}.yaml").write_text(header + textwrap.dedent(body))
    return str(folder / f"{name}.yaml"), str(data)


@pytest.mark.slow
def test_harness_tasks_agree_with_theseus_evaluators(tmp_path):
    lm = tiny_lm(block_size=40, batch_size=4)
    rng = np.random.default_rng(0)
    words = ["red", "a", "blue and green and yellow", "zz", "one two three four five six"]
    choice_rows = []
    for number, context in enumerate(["The sky is", "Colours:", "Count: ", "Say", "x =", "Grass is", "Name one:", "?"]):
        choices = [str(c) for c in rng.choice(words, 3, replace=False)]
        # Gold: mostly the shortest choice (a raw log-likelihood favours it), else the
        # longest (per-character normalisation may favour it): acc and acc_norm then differ.
        pick = min if number < 6 else max
        choice_rows.append({"context": context, "choices": choices, "gold": choices.index(pick(choices, key=len))})
    texts = [
        {"text": "Rolling windows over a text longer than the forty-token context of this model."},
        {"text": "Short one."},
    ]
    prompts = ["Q: 1 + 1 =", "Q: colour of grass?", "Q: name?"]
    greedy = lm.generate(prompts, 8, until=("\n",))
    answer_rows = [{"prompt": p, "answer": a} for p, a in zip(prompts, [greedy[0], greedy[1] + " ", "wrong"])]
    mc_yaml, mc_data = write_task(tmp_path, "multiple_choice", choice_rows, TASKS["multiple_choice"])
    ppl_yaml, _ = write_task(tmp_path, "loglikelihood_rolling", texts, TASKS["loglikelihood_rolling"])
    gen_yaml, gen_data = write_task(tmp_path, "generate_until", answer_rows, TASKS["generate_until"])
    for row in texts:
        (tmp_path / "texts").mkdir(exist_ok=True)
        (tmp_path / "texts" / f"{len(row['text'])}.txt").write_text(row["text"])

    harness = evaluate_harness(lm, [mc_yaml, ppl_yaml, gen_yaml])

    mine = MultipleChoice(mc_data)(lm)
    assert 0 < mine["acc"] < 1 and mine["acc"] != mine["acc_norm"]  # a test that can tell them apart
    assert harness["theseus_multiple_choice"]["acc"] == pytest.approx(mine["acc"])
    assert harness["theseus_multiple_choice"]["acc_norm"] == pytest.approx(mine["acc_norm"])
    perplexity = Perplexity(str(tmp_path / "texts"))(lm)
    assert harness["theseus_loglikelihood_rolling"]["bits_per_byte"] == pytest.approx(
        perplexity["bits_per_byte"], rel=1e-6
    )
    exact = ExactMatch(gen_data, until=("\n",), max_new_tokens=8)(lm)
    assert exact["exact_match"] == pytest.approx(2 / 3)
    assert harness["theseus_generate_until"]["exact_match"] == pytest.approx(exact["exact_match"])
    # The same harness task through theseus's registry, as an evaluation job names it.
    assert evaluation(f"lm_eval:{mc_yaml}")(lm)["acc"] == pytest.approx(mine["acc"])


def test_rolling_windows_are_the_harness_windows():
    lm = tiny_lm(block_size=16)
    tokens = list(range(50, 50 + 45))
    harness = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, lm.prefix_id, 16, 1)]
    mine = [(window[:-n], window[-n:]) for window, n in lm.rolling_windows(tokens)]
    # The harness scores `continuation` after `context`; theseus the last n of one window.
    assert [(c + t[:-1])[-16:] for c, t in harness] == [(c + t[:-1])[-16:] for c, t in mine]
    assert [t for _, t in harness] == [t for _, t in mine]
