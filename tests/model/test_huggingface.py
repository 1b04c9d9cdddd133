"""HFCompat against real `transformers` models: logits, exact round trips, axes and layouts,
loading cost and bad input. Checkpoints are tiny random ones made here with `save_pretrained`."""

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import keras
import numpy as np
import pytest
import torch
from hf_checkpoints import FAMILIES, VOCAB, hf_model, reference_logits, save_checkpoint, token_batch
from safetensors.numpy import save_file
from safetensors.torch import load_file
from support import needs_jax

from theseus.config import ConfigError
from theseus.model.axes import Axes
from theseus.model.huggingface import HFCompat, LogicalAxes, save_hf
from theseus.model.models import GPT, Llama

TESTS = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf")
    return {family: save_checkpoint(root / family, family) for family in FAMILIES}


def logits(model, ids, mask=None):
    return keras.ops.convert_to_numpy(model(ids) if mask is None else model(ids, padding_mask=mask))


def tensors(folder):
    found = {}
    for path in sorted(folder.glob("*.safetensors")):
        found.update(load_file(str(path)))
    return found


# ----------------------------------------------------------------------------- logits


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_with_and_without_padding(checkpoints, family):
    model = HFCompat(id=str(checkpoints[family]))
    reference = hf_model(family)
    ids, mask = token_batch()
    np.testing.assert_allclose(logits(model, ids), reference_logits(reference, ids), atol=1e-4, rtol=0)
    got, want = logits(model, ids, mask), reference_logits(reference, ids, mask)
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4, rtol=0)
    # a padded row is the row alone
    np.testing.assert_allclose(got[1, 4:], reference_logits(reference, ids[1:2, 4:])[0], atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "family, settings",
    [
        ("llama", dict(attention_bias=True, mlp_bias=True)),
        ("qwen3", dict(attention_bias=True, tie_word_embeddings=True)),
    ],
)
def test_optional_biases_match_transformers(family, settings, tmp_path):
    reference = hf_model(family, **settings)
    reference.save_pretrained(str(tmp_path / family))
    ids, mask = token_batch()
    model = HFCompat(id=str(tmp_path / family))
    np.testing.assert_allclose(
        logits(model, ids, mask)[mask], reference_logits(reference, ids, mask)[mask], atol=1e-4, rtol=0
    )
    assert model.architecture.out_bias and model.architecture.mlp_bias == (family == "llama")


OTHER_BACKEND = textwrap.dedent(
    """
    import json, sys
    import numpy as np, torch, keras
    sys.path.insert(0, {tests!r})
    from hf_checkpoints import hf_model
    from theseus.model.huggingface import HFCompat
    ids = np.array({ids}, dtype="int32"); mask = np.array({mask}, dtype=bool)
    positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0)
    errors = {{}}
    for family, folder in {folders}.items():
        model, reference = HFCompat(id=folder), hf_model(family)
        with torch.no_grad():
            want = reference(torch.tensor(ids).long()).logits.numpy()
            want_padded = reference(torch.tensor(ids).long(), attention_mask=torch.tensor(mask).long(),
                                    position_ids=torch.tensor(positions).long()).logits.numpy()
        got = keras.ops.convert_to_numpy(model(ids))
        got_padded = keras.ops.convert_to_numpy(model(ids, padding_mask=mask))
        errors[family] = [float(np.abs(got - want).max()), float(np.abs(got_padded - want_padded)[mask].max())]
    print(json.dumps({{"backend": keras.backend.backend(), "errors": errors}}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "tensorflow"])
def test_logits_match_transformers_on_other_backends(checkpoints, backend):
    ids, mask = token_batch()
    script = OTHER_BACKEND.format(
        tests=str(TESTS),
        ids=ids.tolist(),
        mask=mask.tolist(),
        folders={f: str(p) for f, p in checkpoints.items()},
    )
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["backend"] == backend and set(report["errors"]) == set(FAMILIES)
    for family, (plain, padded) in report["errors"].items():
        assert plain < 1e-4 and padded < 1e-4, (family, plain, padded)


# ----------------------------------------------------------------------------- round trips


def assert_loads_cleanly(folder):
    """`transformers` loads `folder` with no missing, unexpected or mismatched weight."""
    import transformers

    model, info = transformers.AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
    assert not any(info.values()), info
    return model.eval()


@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_is_bitwise_and_loads_in_transformers(checkpoints, family, tmp_path):
    source = checkpoints[family]
    HFCompat(id=str(source)).save_pretrained(tmp_path / "out")
    before, after = tensors(source), tensors(tmp_path / "out")
    assert set(before) == set(after)
    for name in before:
        assert before[name].dtype == after[name].dtype and torch.equal(before[name], after[name]), name
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    ids, _ = token_batch()
    np.testing.assert_array_equal(
        reference_logits(assert_loads_cleanly(tmp_path / "out"), ids),
        reference_logits(assert_loads_cleanly(source), ids),
    )


def test_sharded_checkpoints_load_and_export(tmp_path):
    source = save_checkpoint(tmp_path / "sharded", "llama", max_shard_size="20KB")
    assert (source / "model.safetensors.index.json").is_file() and len(list(source.glob("*.safetensors"))) > 2
    model = HFCompat(id=str(source))
    ids, _ = token_batch()
    np.testing.assert_allclose(logits(model, ids), reference_logits(hf_model("llama"), ids), atol=1e-4, rtol=0)
    out = save_hf(model, tmp_path / "out", max_shard_size=30_000)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 2 and not (out / "model.safetensors").exists()
    assert set(index["weight_map"]) == set(tensors(source))
    for name, value in tensors(source).items():
        assert torch.equal(value, tensors(out)[name]), name
    assert_loads_cleanly(out)


def test_bfloat16_checkpoint_round_trips_in_bfloat16(tmp_path):
    hf_model("qwen3").to(torch.bfloat16).save_pretrained(str(tmp_path / "bf16"))
    model = HFCompat(id=str(tmp_path / "bf16"))
    assert all(v.dtype == "float32" for v in model.weights)  # computed in float32
    out = model.save_pretrained(tmp_path / "out")
    before, after = tensors(tmp_path / "bf16"), tensors(out)
    assert all(t.dtype == torch.bfloat16 for t in after.values())
    assert all(torch.equal(before[name], after[name]) for name in before)
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"


def test_gpt2_saved_as_a_base_model_with_mask_buffers_loads(tmp_path):
    """The layout of the original GPT-2 files: names without `transformer.`, causal-mask buffers."""
    source = save_checkpoint(tmp_path / "gpt2", "gpt2")
    weights = {k.removeprefix("transformer."): v.numpy() for k, v in tensors(source).items()}
    weights["h.0.attn.bias"] = np.tril(np.ones((1, 1, 32, 32), np.float32))
    (source / "model.safetensors").unlink()
    save_file(weights, str(source / "model.safetensors"), metadata={"format": "pt"})
    ids, _ = token_batch()
    model = HFCompat(id=str(source))
    np.testing.assert_allclose(logits(model, ids), reference_logits(hf_model("gpt2"), ids), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "model, model_type",
    [
        (GPT(vocab_size=VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=32, tie_embeddings=False), "gpt2"),
        (Llama(vocab_size=VOCAB, n_layer=1, n_head=4, n_kv_head=2, n_embd=32, tie_embeddings=True), "llama"),
        (Llama(vocab_size=VOCAB, n_layer=1, n_head=4, n_kv_head=1, n_embd=32, qkv_bias=True), "qwen2"),
        (Llama(vocab_size=VOCAB, n_layer=1, n_head=2, n_embd=32, head_dim=24, qk_norm=True), "qwen3"),
        (Llama(vocab_size=VOCAB, n_layer=1, n_head=4, n_embd=32, sliding_window=4, rope_theta=500.0), "mistral"),
    ],
    ids=["gpt", "llama", "qwen2", "qwen3", "mistral"],
)
def test_native_models_export_to_the_family_that_expresses_them(model, model_type, tmp_path):
    ids, _ = token_batch()
    want = logits(model, ids)
    save_hf(model, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == model_type
    np.testing.assert_allclose(reference_logits(assert_loads_cleanly(tmp_path / "out"), ids), want, atol=1e-4, rtol=0)


def test_a_model_no_family_expresses_is_refused(tmp_path):
    model = GPT(vocab_size=VOCAB, block_size=32, n_layer=1, n_head=2, n_embd=32, position="rope")
    with pytest.raises(ConfigError, match="GPT matches no Hugging Face family.*learned positions"):
        save_hf(model, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_export_refuses_to_overwrite_a_folder(checkpoints, tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="exists and is not empty"):
        HFCompat(id=str(checkpoints["gpt2"])).save_pretrained(tmp_path / "out")
    assert os.listdir(tmp_path / "out") == ["keep.txt"]


# ----------------------------------------------------------------------------- axes and layouts


@pytest.mark.parametrize("family", FAMILIES)
def test_every_weight_keeps_the_axes_its_layer_declares(checkpoints, family):
    """An HF tensor's logical axes are those of the theseus weight it fills: `axes` overrides nothing by default."""
    model = HFCompat(id=str(checkpoints[family]))
    native = model.family.model(**model.checkpoint.kwargs)
    native.build((None, None))
    assert all(HFCompat.axes(name) is None for name in tensors(checkpoints[family]))
    ours = {path.split("/", 1)[1]: axes for path, axes in model.logical_axes().items()}
    assert ours == native.logical_axes()
    assert all(axes is not None for axes in ours.values())
    assert model.uncovered() == {}  # every logical axis has a sharding rule


@pytest.mark.parametrize("family", ["gpt2", "llama", "qwen3"])
def test_layout_on_eight_devices_follows_the_rules(checkpoints, family, tmp_path):
    """The layout map of the imported model equals the native model's under the same rules,
    a real build under ModelParallel places every weight so, and it computes and exports
    exactly what the unsharded model does."""
    if keras.backend.backend() != "jax":
        pytest.skip("keras.distribution shards on JAX only")
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    plain = HFCompat(id=str(checkpoints[family]))
    layout_map = plain.layout_map(mesh)
    native = plain.family.model(**plain.checkpoint.kwargs)
    native.build((None, None))
    native_map = native.layout_map(mesh, plain.sharding)
    expected = {
        "attn/query/kernel": (None, "shard"),
        "attn/output/kernel": ("shard", None),
        "mlp/up/kernel": (None, "shard"),
        "mlp/down/kernel": ("shard", None),
        "wte/embeddings": (None, None),
    }
    for variable in plain.weights:
        below = variable.path.split("/", 1)[1]  # the same path below the model's own name
        assert tuple(layout_map[variable.path].axes) == tuple(native_map[below].axes), variable.path
        for suffix, layout in expected.items():
            if variable.path.endswith(suffix):
                assert tuple(layout_map[variable.path].axes) == layout, variable.path
    with keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="batch").scope():
        sharded = HFCompat(id=str(checkpoints[family]))
        ids, mask = token_batch()
        got = logits(sharded, ids, mask)
    for variable in sharded.weights:
        spec = tuple(variable.value.sharding.spec)
        want = tuple(layout_map[variable.path].axes)
        assert spec + (None,) * (len(want) - len(spec)) == want, variable.path
    np.testing.assert_allclose(got[mask], logits(plain, ids, mask)[mask], atol=1e-5, rtol=0)
    sharded.save_pretrained(tmp_path / "out")
    for name, value in tensors(checkpoints[family]).items():
        assert torch.equal(value, tensors(tmp_path / "out")[name]), name


@needs_jax()
def test_a_subclass_whose_axes_returns_none_shards_as_the_plain_model(checkpoints):
    """The tutorial's `axes` returning None: every weight keeps its layer's axes."""

    class NoAxes(HFCompat):
        @classmethod
        def axes(cls, x: str):
            return None

    model = NoAxes(id=str(checkpoints["llama"]))
    plain = HFCompat(id=str(checkpoints["llama"]))
    assert model.name == "no_axes" and model.uncovered() == {}
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    ours, theirs = model.layout_map(mesh, strict=True), plain.layout_map(mesh, strict=True)
    assert {k.split("/", 1)[1]: tuple(v.axes) for k, v in ours.items()} == {
        k.split("/", 1)[1]: tuple(v.axes) for k, v in theirs.items()
    }
    assert tuple(ours["no_axes/llama/block_0/attn/query/kernel"].axes) == (None, "shard")


@needs_jax()
def test_axes_of_a_subclass_override_the_layers_transposed_with_their_tensor(checkpoints):
    """A tuple from `axes` wins over the layer's axes, given as the checkpoint stores the tensor."""

    class ShardOverrides(HFCompat):
        @classmethod
        def axes(cls, x: str) -> LogicalAxes:
            if x.endswith("embed_tokens.weight"):
                return (Axes.VOCAB, Axes.N_EMBD)  # the layer's own
            if x == "lm_head.weight":  # stored (vocab, width): theseus's (width, vocab) gets (n_attn, None)
                return (None, Axes.N_ATTN)
            return super().axes(x)

    model = ShardOverrides(id=str(checkpoints["llama"]))
    assert model.logical_axes()["shard_overrides/llama/lm_head"] == (Axes.N_ATTN, None)
    mesh = keras.distribution.DeviceMesh((2, 4), ("batch", "shard"), keras.distribution.list_devices()[:8])
    layout_map = model.layout_map(mesh)
    assert tuple(layout_map["shard_overrides/llama/lm_head"].axes) == ("shard", None)  # the plain model: (None, None)
    assert tuple(layout_map["shard_overrides/llama/wte/embeddings"].axes) == (None, None)
    rules = [(Axes.VOCAB.value, "shard")] + model.sharding[1:]
    assert tuple(model.layout_map(mesh, rules)["shard_overrides/llama/wte/embeddings"].axes) == ("shard", None)


# ----------------------------------------------------------------------------- loading cost

MEMORY_PROBE = textwrap.dedent(
    """
    import json, sys
    import keras
    import numpy as np
    from theseus.model.huggingface import HFCompat

    def status(key):  # bytes; VmHWM is this process's peak resident set (ru_maxrss survives exec)
        line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    keras.Variable(np.zeros(4, "float32"))  # start the backend's runtime first: not a cost of loading
    before = status("VmRSS")
    model = HFCompat(id=sys.argv[1])
    print(json.dumps({"before": before, "peak": status("VmHWM"), "params": model.count_params()}))
    """
)


@pytest.mark.slow
def test_loading_streams_and_peaks_under_twice_the_checkpoint(tmp_path):
    import transformers

    config = transformers.LlamaConfig(
        vocab_size=8192,
        hidden_size=512,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(config).save_pretrained(str(tmp_path / "ckpt"))
    size = (tmp_path / "ckpt" / "model.safetensors").stat().st_size
    assert size > 60e6
    # a fresh process that has imported everything (and passed its import peak) before loading
    result = subprocess.run(
        [sys.executable, "-c", MEMORY_PROBE, str(tmp_path / "ckpt")],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "KERAS_BACKEND": "jax"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["params"] * 4 == pytest.approx(size, rel=0.01)
    assert report["peak"] - report["before"] < 2 * size, (report, size)


# ----------------------------------------------------------------------------- bad input


def test_bad_folders_are_one_clear_error(checkpoints, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match=r"empty has no config.json, so it is not a Hugging Face model folder"):
        HFCompat(id=str(empty))
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(
        ConfigError, match=r"model_type 'bert' .* not supported; supported: gpt2, llama, mistral, qwen2, qwen3"
    ):
        HFCompat(id=str(bert))
    with pytest.raises(ConfigError, match=r"no folder \./nowhere"):
        HFCompat(id="./nowhere")


def test_a_weight_of_the_wrong_shape_is_refused_before_any_is_loaded(checkpoints, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(checkpoints["qwen2"], folder)
    weights = {k: v.numpy() for k, v in tensors(folder).items()}
    weights["model.layers.1.self_attn.k_proj.weight"] = np.zeros((32, 32), np.float32)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(
        ConfigError,
        match=r"weight 'model.layers.1.self_attn.k_proj.weight' has shape \(32, 32\) but config.json implies \(16, 32\)",
    ):
        HFCompat(id=str(folder))
    del weights["model.layers.1.self_attn.k_proj.weight"]
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"1 weights are missing .* 'model.layers.1.self_attn.k_proj.weight'"):
        HFCompat(id=str(folder))
    weights["model.layers.1.self_attn.k_proj.weight"] = np.zeros((16, 32), np.float32)
    weights["model.layers.1.extra.weight"] = np.zeros((4,), np.float32)
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ConfigError, match=r"unexpected weight 'model.layers.1.extra.weight'"):
        HFCompat(id=str(folder))


def test_config_alone_builds_a_random_model_and_refuses_to_pretend_weights(checkpoints, tmp_path):
    folder = tmp_path / "config-only"
    folder.mkdir()
    shutil.copy(checkpoints["mistral"] / "config.json", folder)
    with pytest.raises(ConfigError, match=r"has no \*.safetensors weights; to pretrain from its config.json alone"):
        HFCompat(id=str(folder))
    random = HFCompat(id=str(folder), pretrained=False)
    loaded = HFCompat(id=str(checkpoints["mistral"]))
    assert random.count_params() == loaded.count_params()
    ids, _ = token_batch()
    assert np.abs(logits(random, ids) - logits(loaded, ids)).max() > 0.1


def fake_cache(cache, repo, source):
    """The Hugging Face cache layout for `repo` holding a copy of `source`."""
    revision = "0123456789abcdef0123456789abcdef01234567"
    root = cache / f"models--{repo.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(revision)
    shutil.copytree(source, root / "snapshots" / revision)


def test_hub_ids_resolve_through_the_local_cache_only(checkpoints, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    fake_cache(tmp_path / "cache", "tiny/qwen3", checkpoints["qwen3"])
    ids, _ = token_batch()
    model = HFCompat(id="tiny/qwen3")
    np.testing.assert_allclose(logits(model, ids), reference_logits(hf_model("qwen3"), ids), atol=1e-4, rtol=0)
    with pytest.raises(
        ConfigError, match=r"'tiny/absent' is neither a folder nor in the local Hugging Face cache .* never downloads"
    ):
        HFCompat(id="tiny/absent")


BAD_INPUT = {
    "no-config": r"has no config.json, so it is not a Hugging Face model folder",
    "unsupported": r"model_type 'bert' .* not supported; supported: gpt2, llama, mistral, qwen2, qwen3",
    "shape": r"weight 'model.norm.weight' has shape \(16,\) but config.json implies \(32,\)",
    "uncached": r"'tiny/absent' is neither a folder nor in the local Hugging Face cache",
}


@pytest.mark.slow
def test_bad_input_through_the_cli_is_one_line_and_exit_code_2(checkpoints, tmp_path, theseus_cli):
    (tmp_path / "no-config").mkdir()
    (tmp_path / "unsupported").mkdir()
    (tmp_path / "unsupported" / "config.json").write_text(json.dumps({"model_type": "bert"}))
    shutil.copytree(checkpoints["llama"], tmp_path / "shape")
    weights = {k: v.numpy() for k, v in tensors(tmp_path / "shape").items()}
    weights["model.norm.weight"] = np.ones(16, np.float32)
    save_file(weights, str(tmp_path / "shape" / "model.safetensors"), metadata={"format": "pt"})
    folders = {
        "no-config": tmp_path / "no-config",
        "unsupported": tmp_path / "unsupported",
        "shape": tmp_path / "shape",
        "uncached": "tiny/absent",
    }
    env = {"HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    for case, message in BAD_INPUT.items():
        config = tmp_path / f"{case}.yaml"  # every other key at its default
        config.write_text(f"job: llama/train/finetune\narchitecture:\n  huggingface:\n    model: {folders[case]}\n")
        result = theseus_cli("run", case, config, tmp_path / "runs", env=env)
        assert result.returncode == 2, (case, result.stderr[-2000:])
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("theseus: error: ") and re.search(message, lines[0]), (
            case,
            lines,
        )
        assert not (tmp_path / "runs" / case).exists()
