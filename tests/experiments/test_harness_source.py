"""lm-evaluation-harness on a model source: `model="theseus"` with `model_args="source=..."`
scores a Hugging Face folder as theseus's own evaluator does."""

import json

import pytest

pytest.importorskip("lm_eval")

import lm_eval  # noqa: E402
from hf_checkpoints import save_checkpoint  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

import theseus.experiments.harness  # noqa: E402, F401  (registers `theseus`)
from theseus.evaluation.multiple_choice import MultipleChoice  # noqa: E402
from theseus.experiments.sources import load  # noqa: E402

TASK = """task: theseus_source_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: context
doc_to_choice: choices
doc_to_target: gold
metric_list:
  - metric: acc
"""


@pytest.mark.slow
def test_a_source_by_name_scores_as_theseus_does(tmp_path):
    folder = save_checkpoint(tmp_path / "llama", "llama", seed=1)
    rows = [
        {"context": c, "choices": ["red", "a tree", "zz"], "gold": g} for c, g in [("Sky:", 0), ("Plant:", 1), ("x", 2)]
    ]
    data = tmp_path / "choice.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    (tmp_path / "choice.yaml").write_text(TASK.format(data=data))
    output = lm_eval.simple_evaluate(
        model="theseus",
        model_args=f"source={folder},batch_size=4",
        tasks=["theseus_source_choice"],
        task_manager=TaskManager(include_path=str(tmp_path), include_defaults=False),
        bootstrap_iters=0,
    )
    mine = MultipleChoice(str(data))(load(str(folder), batch_size=4))
    assert output["results"]["theseus_source_choice"]["acc,none"] == pytest.approx(mine["acc"])
