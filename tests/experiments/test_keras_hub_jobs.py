"""keras-hub families trained through theseus (`keras_hub/...` jobs): tiny random backbones from
their config, each family's own keras-hub tokenizer made offline, WSD, a SIGKILL and an exact
resume through the real command line; and one family under `fsdp+tp` on 8 devices against 1."""

import io
import json
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
import yaml
from support import needs_jax, run_command

from theseus import cli
from theseus.base.mesh import Topology
from theseus.config import ConfigError
from theseus.data.keras_hub import KerasHubTokenizer
from theseus.experiments import JOBS, runs, sources
from theseus.model.axes import Axes
from theseus.model.keras_hub import KerasHubLM

KEY = "keras_hub/train/pretrain"
VOCAB = 320  # rows of every backbone's embedding; the tokenizers have 160 (SentencePiece) and 300 (BPE)
COMMON = {"vocabulary_size": VOCAB, "num_layers": 1, "hidden_dim": 32, "intermediate_dim": 64}
FAMILIES = {  # family: (backbone, its own arguments, its keras-hub tokenizer class)
    "gemma": ("GemmaBackbone", {"num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 16}, "GemmaTokenizer"),
    "gemma3": (
        "Gemma3Backbone",
        {"image_size": None, "num_query_heads": 2, "num_key_value_heads": 2, "head_dim": 16},
        "Gemma3Tokenizer",
    ),
    "phi3": ("Phi3Backbone", {"num_query_heads": 2, "num_key_value_heads": 2}, "Phi3Tokenizer"),
    "falcon": ("FalconBackbone", {"num_attention_heads": 2}, "FalconTokenizer"),
    "opt": ("OPTBackbone", {"num_heads": 2, "max_sequence_length": 64, "dropout": 0.1}, "OPTTokenizer"),
    "bloom": ("BloomBackbone", {"num_heads": 2}, "BloomTokenizer"),
}
STEPS = 12
RUN = {
    "architecture/block_size": 32,
    "training/batch_size": 4,
    "training/tokens": 4 * 32 * STEPS,
    "training/precision": "float32",
    "optimization/lr": 3e-3,
    "logging/checkpoint_interval": 4,
    "logging/validation_interval": 6,
    "logging/validation_batches": 2,
    "logging/log_interval": 2,
    "logging/progress_bar": False,
    "logging/plot": False,
    "logging/peak_flops": 1e12,
    "topology/devices": 1,
}
KILL_AT = Path(__file__).parents[1] / "training" / "kill_at.py"
TIMING = {"tokens_per_sec", "mfu"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pydoc_data.topics import topics

    path = tmp_path_factory.mktemp("text") / "corpus.txt"
    path.write_text(" ".join(topics[k] for k in sorted(topics)[:3])[:6000])
    return path


@pytest.fixture(scope="module")
def tokenizers(corpus, tmp_path_factory):
    """Each family's keras-hub tokenizer, made offline from the corpus and saved as a folder
    (`save_to_preset`): SentencePiece protos for Gemma, Gemma 3 and Phi-3, a byte-level BPE for the rest."""
    import keras_hub
    import sentencepiece
    from tokenizers import ByteLevelBPETokenizer

    text = corpus.read_text()
    root = tmp_path_factory.mktemp("tokenizers")

    def proto(bos, eos, symbols):
        buffer = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(text.split(". ")),
            model_writer=buffer,
            vocab_size=160,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            bos_piece=bos,
            eos_piece=eos,
            user_defined_symbols=symbols,
            minloglevel=2,
        )
        return buffer.getvalue()

    gemma = proto("<bos>", "<eos>", ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<img>"])
    phi3 = proto("<s>", "</s>", ["<|endoftext|>", "<|end|>", "<|user|>", "<|assistant|>", "<|system|>"])
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=300, special_tokens=["<|endoftext|>", "<s>", "</s>", "<pad>", "<unk>"])
    vocabulary, merges = bpe.get_vocab(), [" ".join(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    folders = {}
    for family, (_, _, name) in FAMILIES.items():
        cls = getattr(keras_hub.tokenizers, name)
        made = cls(proto=phi3 if family == "phi3" else gemma) if "Gemma" in name or family == "phi3" else None
        made = made or cls(vocabulary=vocabulary, merges=merges)
        made.save_to_preset(str(root / family))
        folders[family] = root / family
    return folders


def family_config(family, tokenizer, corpus, **extra):
    backbone, arguments, _ = FAMILIES[family]
    return {
        **RUN,
        "architecture/keras_hub/backbone": backbone,
        "architecture/keras_hub/config": yaml.safe_dump({**COMMON, **arguments}, default_flow_style=True).strip(),
        "data/tokenizer": str(tokenizer),
        "data/source": str(corpus),
        **extra,
    }


def write_config(path, config, key=KEY):
    fields, values = runs.configure(key, config, require=True)
    path.write_text(runs.config_text(key, fields, values))
    return path


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_keras_hub_family_trains_with_wsd_and_resumes_exactly_after_sigkill(family, tokenizers, corpus, tmp_path):
    tokenizer = KerasHubTokenizer(tokenizers[family])
    assert type(tokenizer.tokenizer).__name__ == FAMILIES[family][2]
    assert tokenizer.decode(tokenizer.encode("The import statement")) == "The import statement"
    config = write_config(tmp_path / f"{family}.yaml", family_config(family, tokenizers[family], corpus))
    out = tmp_path / "runs"
    assert cli.main(["run", "reference", str(config), str(out)]) == 0
    killed = run_command([sys.executable, str(KILL_AT), "SIGKILL@step:7", "run", "killed", str(config), str(out)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert not (out / "killed" / "checkpoints" / "step_00000008").exists()  # it died between checkpoints 4 and 8
    assert cli.main(["run", "killed", str(config), str(out)]) == 0  # resumes from step 4

    if family == "gemma":  # `theseus generate` on the run: its checkpoint, its keras-hub tokenizer
        assert cli.main(["generate", str(out / "killed"), "--prompt", "The import", "--max-new-tokens", "4"]) == 0
    reference, resumed = rows(out / "reference"), rows(out / "killed")
    validation = [r["val_loss"] for r in reference if "val_loss" in r]
    assert len(validation) == 3 and validation[-1] < validation[0] - 0.1, validation  # steps 0, 6, 12
    assert reference[-1]["step"] == STEPS and reference[-1]["lr"] < 3e-3  # WSD: decayed at the end
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for a, b in zip(reference, resumed):
        for key in set(a) - TIMING:
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), (family, key, a, b)


def train(tmp_path, config, name, key=KEY):
    fields, values = runs.configure(key, config, require=True)
    runs.prepare_run_dir(tmp_path / name, key, fields, values)
    job = JOBS[key](values, tmp_path / name)
    return job, job.run()


@needs_jax()
@pytest.mark.slow
def test_fsdp_tp_on_eight_devices_gives_the_one_device_loss_with_the_table_s_shardings(tokenizers, corpus, tmp_path):
    """Gemma, 3 steps, on one device and on a (batch 4 × shard 2) mesh: the same losses within
    1e-5 (float32 sums in another order), every weight where the layer table puts it."""
    config = family_config("gemma", tokenizers["gemma"], corpus, **{"training/tokens": 4 * 32 * 3})
    config["architecture/keras_hub/config"] = config["architecture/keras_hub/config"].replace("32", "64", 1)
    _, alone = train(tmp_path, config, "one")
    sharded = {"topology/devices": 8, "topology/strategy": "fsdp+tp", "topology/shard": 2, "topology/strict": True}
    job, together = train(tmp_path, {**config, **sharded}, "eight")
    for key in ("initial_val_loss", "val_loss"):
        assert together[key] == pytest.approx(alone[key], rel=1e-5), key
    assert rows(tmp_path / "eight")[-1]["loss"] == pytest.approx(rows(tmp_path / "one")[-1]["loss"], rel=1e-5)
    specs = {
        v.path: tuple(v.value.sharding.spec) + (None,) * (len(v.shape) - len(v.value.sharding.spec))
        for v in job.model.weights
    }
    assert specs["token_embedding/embeddings"] == (None, "batch")  # vocab replicated, width split (FSDP)
    assert specs["decoder_block_0/attention/query/kernel"] == ("shard", "batch", None)  # (heads, hidden, head_dim)
    assert specs["decoder_block_0/attention/attention_output/kernel"] == ("shard", None, "batch")
    assert specs["decoder_block_0/ffw_gating/kernel"] == ("batch", "shard")
    assert specs["decoder_block_0/ffw_linear/kernel"] == ("shard", "batch")
    assert specs["decoder_block_0/pre_attention_norm/scale"] == ("batch",)
    assert len(specs) == 11


def test_a_backbone_without_a_tokenizer_and_a_too_small_vocabulary_are_refused(tokenizers, corpus):
    config = family_config("gemma", "auto", corpus)
    with pytest.raises(ConfigError, match="data/tokenizer is auto but architecture/keras_hub/backbone"):
        JOBS[KEY](runs.configure(KEY, config, require=True)[1])
    config = family_config("opt", tokenizers["opt"], corpus)
    config["architecture/keras_hub/config"] = config["architecture/keras_hub/config"].replace(str(VOCAB), "128")
    with pytest.raises(ConfigError, match="vocabulary_size"):
        JOBS[KEY](runs.configure(KEY, config, require=True)[1])


def gemma_preset(folder, tokenizers):
    """A tiny Gemma keras-hub preset folder (backbone + tokenizer), saved as keras-hub saves them."""
    import keras_hub

    keras_hub.models.GemmaBackbone(**COMMON, **FAMILIES["gemma"][1]).save_to_preset(str(folder))
    KerasHubTokenizer(tokenizers["gemma"]).tokenizer.save_to_preset(str(folder))
    return folder


@pytest.mark.slow
def test_a_preset_folder_fine_tunes_on_its_own_tokenizer_and_evaluates(tokenizers, corpus, tmp_path):
    """A keras-hub preset (backbone + tokenizer, saved as keras-hub saves them): theseus's model of
    it gives keras-hub's own task's logits; fine-tuning reads it with `data/tokenizer: auto`."""
    import keras_hub

    preset = gemma_preset(tmp_path / "preset", tokenizers)
    ids = np.random.default_rng(0).integers(0, 160, (2, 16)).astype("int32")
    task = keras_hub.models.GemmaCausalLM.from_preset(str(preset), preprocessor=None)
    expected = keras.ops.convert_to_numpy(task({"token_ids": ids, "padding_mask": np.ones_like(ids)}))
    lm = KerasHubLM(preset=str(preset))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(lm(ids)), expected, atol=1e-5)

    config = {**RUN, "architecture/keras_hub/preset": str(preset), "data/source": str(corpus)}
    job, result = train(tmp_path, {**config, "training/tokens": 4 * 32 * 2}, "tuned", "keras_hub/train/finetune")
    assert result["total_steps"] == 2 and job.tokenizer().name == str(preset)
    tuned = keras.ops.convert_to_numpy(job.model(ids))
    assert np.abs(tuned - expected).max() > 1e-3  # it trained, from the preset's weights
    assert (
        json.loads((tmp_path / "tuned" / "checkpoints" / "step_00000002" / "state.json").read_text())["base"]["kind"]
        == "keras_hub"
    )
    # `theseus generate` on the run: its saved `data/tokenizer: auto` is the preset's tokenizer again
    assert cli.main(["generate", str(tmp_path / "tuned"), "--prompt", "The import", "--max-new-tokens", "3"]) == 0
    assert sources.load(str(tmp_path / "tuned")).tokenizer.name == str(preset)
    evaluation = {k: config[k] for k in ("architecture/keras_hub/preset", "data/source", "architecture/block_size")}
    fields, values = runs.configure("keras_hub/eval/evaluate", evaluation, require=True)
    results = JOBS["keras_hub/eval/evaluate"](values).run()
    assert np.isfinite(results["perplexity"]["nll"]) and results["perplexity"]["nll"] > 4  # untrained: near ln(320)


@pytest.mark.slow
def test_lora_on_a_preset_trains_only_keras_s_adapters_and_resumes_exactly_after_sigkill(tokenizers, corpus, tmp_path):
    """`lora/enabled` on a keras-hub fine-tune: Keras's own adapters on the layers `lora/targets`
    matches (rank, alpha honoured), every other weight frozen bitwise, checkpoints of the adapters
    alone, the loss falls, a SIGKILLed run resumes to the same rows; the end merges the adapters."""
    import h5py

    preset = gemma_preset(tmp_path / "preset", tokenizers)
    key, rank, alpha = "keras_hub/train/finetune", 4, 8.0
    config = {
        **RUN,
        "architecture/keras_hub/preset": str(preset),
        "data/source": str(corpus),
        "optimization/lr": 2e-2,
        "lora/enabled": True,
        "lora/rank": rank,
        "lora/alpha": alpha,
        "lora/targets": ["attention/(query|value)$", "ffw_linear"],
    }
    job, result = train(tmp_path, config, "reference", key)
    tuned = job.build_model()  # before the end merges them: adapters sharded as their kernels
    assert tuned.logical_axes()["decoder_block_0/ffw_linear/lora_kernel_b"] == (None, Axes.N_EMBD)
    assert not tuned.uncovered(Topology(strategy="fsdp+tp", shard=2, devices=8).rules(tuned))  # strict passes
    validation = [r["val_loss"] for r in rows(tmp_path / "reference") if "val_loss" in r]
    assert validation[-1] < validation[0] - 0.05, validation
    assert result["merged_layers"] == 3 and result["trainable_parameters"] < result["parameters"] / 10

    saved = tmp_path / "reference" / "checkpoints" / f"step_{STEPS:08d}" / "model.weights.h5"
    adapters = {}
    with h5py.File(saved) as f:  # the adapters alone, Keras's: A (.., rank), B (rank, ..)
        f["weights"].visititems(
            lambda path, item: adapters.update({path: item[()]}) if hasattr(item, "shape") else None
        )
    layers = ["decoder_block_0/attention/query", "decoder_block_0/attention/value", "decoder_block_0/ffw_linear"]
    assert sorted(adapters) == sorted(f"{layer}/lora_kernel_{ab}" for layer in layers for ab in "ab")
    base = KerasHubLM(preset=str(preset))
    for before, after in zip(base.weights, job.model.weights, strict=True):
        assert before.path == after.path
        layer = before.path.rsplit("/", 1)[0]
        expected = keras.ops.convert_to_numpy(before.value)
        if layer in layers and before.path.endswith("/kernel"):  # merged: kernel + alpha / rank * A @ B
            a, b = adapters[f"{layer}/lora_kernel_a"], adapters[f"{layer}/lora_kernel_b"]
            assert np.abs(b).max() > 0, layer
            expected = expected + alpha / rank * np.matmul(a, b)
            np.testing.assert_allclose(keras.ops.convert_to_numpy(after.value), expected, rtol=1e-5, atol=1e-6)
        else:  # frozen: bitwise the preset's
            np.testing.assert_array_equal(keras.ops.convert_to_numpy(after.value), expected, err_msg=before.path)

    path, out = write_config(tmp_path / "lora.yaml", config, key), tmp_path / "runs"
    killed = run_command([sys.executable, str(KILL_AT), "SIGKILL@step:7", "run", "killed", str(path), str(out)])
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert cli.main(["run", "killed", str(path), str(out)]) == 0  # resumes from step 4's adapters
    reference, resumed = rows(tmp_path / "reference"), rows(out / "killed")
    assert [r["step"] for r in resumed] == [r["step"] for r in reference]
    for a, b in zip(reference, resumed):
        for name in set(a) - TIMING:
            assert b[name] == pytest.approx(a[name], rel=1e-6, abs=1e-9), (name, a, b)


@pytest.mark.slow
def test_a_keras_hub_run_trains_in_bfloat16_and_branches_a_cooldown_from_its_stable_phase(tokenizers, corpus, tmp_path):
    config = family_config("gemma", tokenizers["gemma"], corpus, **{"training/precision": "bfloat16"})
    job, result = train(tmp_path, config, "parent")
    assert job.model.backbone.compute_dtype == "bfloat16"
    assert {v.dtype for v in job.model.weights} == {"float32"}  # bfloat16 compute, float32 weights
    validation = [r["val_loss"] for r in rows(tmp_path / "parent") if "val_loss" in r]
    assert validation[-1] < validation[0] - 0.1, validation

    assert cli.main(["cooldown", str(tmp_path / "parent"), "--from", "8", "--steps", "2", "--name", "branch"]) == 0
    branch = tmp_path / "branch"
    assert json.loads((branch / "branch.json").read_text())["parent"] == str((tmp_path / "parent").resolve())
    logged = {r["step"]: r for r in rows(branch) if "lr" in r}
    assert sorted(step for step in logged if step > 8) == [10]  # logged every 2 steps
    parent = {r["step"]: r for r in rows(tmp_path / "parent") if "lr" in r}
    assert parent[8]["lr"] == pytest.approx(3e-3, rel=1e-6)  # the branch point is in the stable phase
    assert logged[10]["lr"] < parent[8]["lr"] and np.isfinite(logged[10]["loss"])  # the branch decays
