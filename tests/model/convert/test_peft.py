"""PEFT LoRA adapters against real `peft`: a folder `peft` saved loads into theseus (merged
into its base) with peft's logits; theseus's adapters, saved with `save_peft`, load into
`peft.PeftModel` over the base with theseus's logits; bad adapters are one ConfigError."""

import json
import shutil

import keras
import numpy as np
import peft  # the test extra's: loaded by peft itself, never skipped
import pytest
from hf_checkpoints import FAMILIES, VOCAB, hf_model, save_checkpoint
from peft_adapters import base_model, peft_adapter, torch_logits

from theseus.config import ConfigError
from theseus.model.huggingface import HFCompat, save_peft
from theseus.training import lora


@pytest.fixture(scope="module")
def bases(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    return {family: save_checkpoint(root / family, family) for family in FAMILIES}


def token_ids():
    return np.random.default_rng(1).integers(0, VOCAB, (2, 10)).astype("int32")


@pytest.mark.parametrize("family", FAMILIES)
def test_an_adapter_saved_by_peft_loads_merged_with_peft_logits(family, bases, tmp_path):
    settings = {"rank_pattern": {"v_proj": 2}, "use_rslora": True} if family == "qwen3" else {}
    reference = peft_adapter(bases[family], family, tmp_path / "adapter", **settings)
    assert json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        bases[family]
    )
    ids = token_ids()
    ours = keras.ops.convert_to_numpy(HFCompat(id=str(tmp_path / "adapter"))(ids))
    base = keras.ops.convert_to_numpy(HFCompat(id=str(bases[family]))(ids))
    expected = torch_logits(reference, ids)
    assert np.abs(expected - base).max() > 1e-2  # the adapter is not a no-op
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(("family", "targets"), [("gpt2", ["query", "value", "mlp"]), ("llama", ["attn", "mlp"])])
def test_theseus_adapters_load_into_peft_over_the_base_with_the_same_logits(family, targets, bases, tmp_path):
    model = HFCompat(id=str(bases[family]))
    lora.enable_lora(model, rank=4, alpha=12.0, targets=targets)
    rng = np.random.default_rng(0)
    for layer in lora.lora_layers(model):
        for variable in (layer.lora_kernel_a, layer.lora_kernel_b):
            variable.assign(0.2 * rng.standard_normal(variable.shape).astype("float32"))
    adapters = lora.adapters(model)
    folder = save_peft(model, tmp_path / "peft", adapters.weights, 4, 12.0, base=str(bases[family]))
    ids = token_ids()
    ours = keras.ops.convert_to_numpy(model(ids))
    loaded = peft.PeftModel.from_pretrained(base_model(bases[family]), str(folder))
    assert sum("lora_A" in name for name, _ in loaded.named_parameters()) == (6 if family == "gpt2" else 14)
    expected = torch_logits(loaded, ids)
    assert np.abs(expected - torch_logits(hf_model(family), ids)).max() > 1e-2
    np.testing.assert_allclose(expected, ours, atol=1e-4, rtol=0)
    # and back: the folder theseus wrote, read by theseus, merged
    again = keras.ops.convert_to_numpy(HFCompat(id=str(folder))(ids))
    np.testing.assert_allclose(again, ours, atol=1e-4, rtol=0)


def test_a_bad_adapter_is_one_line(bases, tmp_path):
    good = tmp_path / "good"
    peft_adapter(bases["llama"], "llama", good)

    def refusal(edit):
        folder = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        shutil.copytree(good, folder)
        edit(folder)
        with pytest.raises(ConfigError) as error:
            HFCompat(id=str(folder))
        assert "\n" not in str(error.value)
        return str(error.value)

    def config(folder, **changes):
        path = folder / "adapter_config.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))

    assert "no adapter_model.safetensors" in refusal(lambda f: (f / "adapter_model.safetensors").unlink())
    assert "an adapter of another base" in refusal(lambda f: config(f, base_model_name_or_path=str(bases["qwen3"])))
    assert "not a LoRA weight of a projection of the gpt2" in refusal(
        lambda f: config(f, base_model_name_or_path=str(bases["gpt2"]))
    )
    assert "the base of the PEFT adapter" in refusal(lambda f: config(f, base_model_name_or_path=str(tmp_path / "no")))
    assert "rank 2" in refusal(lambda f: config(f, r=2))
    assert "of type IA3" in refusal(lambda f: config(f, peft_type="IA3"))
