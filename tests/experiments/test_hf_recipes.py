"""The shipped Hugging Face recipes: every YAML validates, and every tiny config.json means
the same model to theseus and to `transformers`."""

import json
from pathlib import Path

import pytest
import transformers

from theseus.experiments import JOBS, runs
from theseus.model.huggingface import HFCompat

REPO = Path(__file__).resolve().parents[2]
FAMILIES = ("gpt2", "llama", "mistral", "qwen2", "qwen3")
RECIPES = sorted(p.relative_to(REPO) for family in FAMILIES for p in (REPO / "recipes" / family).glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_every_recipe_validates(recipe):
    key, fields, values = runs.read_config(REPO / recipe)
    assert key.split("/")[0] == recipe.parts[1] and key in JOBS


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_architectures_mean_the_same_model_to_transformers(family, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name their folders relative to the repository root
    recipe = f"recipes/{family}/tiny.yaml"
    key, fields, values = runs.read_config(recipe)
    job = JOBS[key](values)  # builds nothing yet: checks the folder, the tokenizer and the topology
    assert job.checkpoint.model_type == family and job.config.init == "random"
    ours = HFCompat(id=values["architecture/huggingface/model"], pretrained=False)
    config = transformers.AutoConfig.from_pretrained(values["architecture/huggingface/model"])
    assert ours.count_params() == transformers.AutoModelForCausalLM.from_config(config).num_parameters()
    assert json.loads((REPO / f"recipes/{family}/tiny/config.json").read_text())["vocab_size"] >= 257  # bytes + EOS
