"""End to end, as a user runs it: train a tiny GPT (evaluating it as it trains), evaluate
its checkpoint with `gpt/eval/evaluate`, and print completions with `theseus generate`."""

import json

import pytest

from theseus.experiments.sources import load

TRAIN = """
job: gpt/train/pretrain
training: {tokens: 12288, batch_size: 4}
architecture: {block_size: 64, n_layer: 1, n_embd: 32, n_head: 2}
logging: {validation_interval: 24, checkpoint_interval: 24, progress_bar: false, evaluations: [perplexity]}
topology: {devices: 1}
data: {source: %s}
"""


@pytest.mark.slow
def test_evaluate_a_trained_run_and_generate_from_it(tmp_path, theseus_cli):
    from pydoc_data.topics import topics

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(topics[k] for k in sorted(topics)[:6]))
    (tmp_path / "train.yaml").write_text(TRAIN % corpus)  # keys left out take their defaults
    one_device = {"XLA_FLAGS": ""}  # as a user's laptop: not the suite's eight virtual devices
    theseus_cli("run", "dev", tmp_path / "train.yaml", tmp_path / "runs", env=one_device, check=True)
    run = tmp_path / "runs" / "dev"
    final = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]

    (tmp_path / "mc.jsonl").write_text(
        json.dumps({"context": "The function", "choices": ["returns", "xqzv"], "gold": 0}) + "\n"
    )
    tasks = f"[perplexity, 'multiple_choice:{tmp_path / 'mc.jsonl'}']"
    (tmp_path / "eval.yaml").write_text(f"job: gpt/eval/evaluate\nevaluation: {{checkpoint: {run}, tasks: {tasks}}}\n")
    theseus_cli("run", "eval", tmp_path / "eval.yaml", tmp_path / "runs", env=one_device, check=True)
    results = json.loads((tmp_path / "runs" / "eval" / "results.json").read_text())["results"]
    # The run's own held-out set, scored again from the checkpoint: the trainer's last val_loss.
    assert results["perplexity"]["nll"] == pytest.approx(final["val_loss"], rel=1e-5)
    assert results["perplexity"]["bits_per_byte"] == pytest.approx(final["val_loss"] / 0.6931471805599453, rel=1e-5)
    assert set(results[f"multiple_choice:{tmp_path / 'mc.jsonl'}"]) == {"acc", "acc_norm", "n"}
    # The same evaluation, run by the trainer every validation_interval steps.
    during = [json.loads(line) for line in (run / "evaluations.jsonl").read_text().splitlines()]
    assert [row["step"] for row in during] == [24, 48]
    assert during[-1]["perplexity/nll"] == pytest.approx(results["perplexity"]["nll"], rel=1e-5)

    printed = theseus_cli(
        "generate", run, "--prompt", "The function ", "--prompt", "x", "--max-new-tokens", "12", check=True
    )
    completions = load(str(run)).generate(["The function ", "x"], 12)
    assert printed.stdout == "".join(f"{p}{c}\n{'-' * 40}\n" for p, c in zip(["The function ", "x"], completions))
