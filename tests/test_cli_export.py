"""`theseus export RUN --to keras-hub|hf OUT`: a trained GPT run becomes a keras-hub preset
with the run's logits and `theseus generate`'s greedy tokens; bad input is one line, exit 2."""

import json

import numpy as np
import pytest

from theseus.experiments import runs
from theseus.experiments.completions import complete
from theseus.experiments.sources import load

RUN = {
    "architecture/n_layer": 1,
    "architecture/n_embd": 32,
    "architecture/n_head": 2,
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * 6,
    "optimization/warmup": 1,
    "optimization/decay": 2,
    "logging/validation_interval": 6,
    "logging/validation_batches": 1,
    "logging/checkpoint_interval": 6,
    "logging/progress_bar": False,
    "logging/plot": False,
    "topology/devices": 1,
}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("export", "{tmp}/nowhere", "{tmp}/out", "--to", "keras-hub"), "model source not found: {tmp}/nowhere"),
        (
            ("export", "{tmp}/nowhere", "{tmp}/out", "--to", "onnx"),
            "--to: unknown export target 'onnx'; choose one of: hf, keras-hub",
        ),
    ],
)
def test_bad_export_input_is_one_line_and_exit_2(theseus_cli, tmp_path, args, message):
    result = theseus_cli(*[a.format(tmp=tmp_path) for a in args])
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [f"theseus: error: {message.format(tmp=tmp_path)}"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_a_gpt_run_exports_to_a_keras_hub_preset_that_generates_as_theseus_does(theseus_cli, tmp_path):
    import keras_hub

    fields, values = runs.configure("gpt/train/pretrain", RUN, require=True)
    runs.launch("gpt/train/pretrain", fields, values, tmp_path, "run")
    result = theseus_cli("export", tmp_path / "run", tmp_path / "preset", "--to", "keras-hub", check=True)
    assert result.stdout.strip() == f"wrote {tmp_path / 'preset'} (keras-hub)"
    hub = keras_hub.models.CausalLM.from_preset(str(tmp_path / "preset"))
    lm = load(str(tmp_path / "run"))
    ids = np.random.default_rng(0).integers(0, 257, (2, 24)).astype("int32")
    theirs = np.asarray(hub({"token_ids": ids, "padding_mask": np.ones_like(ids, dtype=bool)}))
    np.testing.assert_allclose(theirs, np.asarray(lm.model(ids)), atol=1e-5, rtol=0)

    prompt = lm.encode("def main")
    hub.compile(sampler="greedy")
    hub.preprocessor = None  # token ids in: keras-hub's GPT-2 preprocessor puts EOS before a prompt
    out = hub.generate(
        {"token_ids": np.array([prompt + [0] * 16]), "padding_mask": np.array([[True] * len(prompt) + [False] * 16])},
        stop_token_ids=[lm.tokenizer.eos_id],
    )
    new = np.asarray(out["token_ids"])[0, len(prompt) :][np.asarray(out["padding_mask"])[0, len(prompt) :]]
    assert lm.tokenizer.decode(new) == complete(str(tmp_path / "run"), ["def main"], max_new_tokens=16)[0]

    theseus_cli("export", tmp_path / "run", tmp_path / "hf", check=True)  # --to hf, the default
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
