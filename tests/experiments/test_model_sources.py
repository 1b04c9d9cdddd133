import pytest
from hf_checkpoints import save_checkpoint

from theseus.config import ConfigError
from theseus.experiments.completions import complete, read_prompts
from theseus.experiments.sources import describe, load
from theseus.model.models import GPT, Llama


@pytest.mark.slow
def test_a_hugging_face_folder_completes_text_as_transformers_does(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_checkpoint(tmp_path / "llama", "llama", seed=2)
    prompts = ["the quick brown", "a tokenizer for"]
    texts = complete(str(folder), prompts, max_new_tokens=6)
    reference = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    for prompt, text in zip(prompts, texts):
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
        with torch.no_grad():
            out = reference.generate(**ids, max_new_tokens=6, do_sample=False, pad_token_id=tokenizer.eos_token_id)
        new = [t for t in out[0, ids["input_ids"].shape[1] :].tolist() if t != tokenizer.eos_token_id]
        assert text == tokenizer.decode(new)
    with pytest.raises(ConfigError, match="not a GPT"):
        load(str(folder), model_class=GPT)
    assert isinstance(load(str(folder), model_class=Llama).model, Llama)


def test_a_source_that_is_no_model_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="model source not found"):
        describe(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="not a run folder"):
        describe(str(tmp_path))
    (tmp_path / "prompts.txt").write_text("first\n\nsecond\\nline\n")
    assert read_prompts(["cli"], str(tmp_path / "prompts.txt")) == ["cli", "first", "second\nline"]
    with pytest.raises(ConfigError, match="no prompts"):
        read_prompts([], None)


@pytest.mark.slow
def test_a_peft_adapter_folder_is_evaluated_as_peft_runs_it(tmp_path):
    from pydoc_data.topics import topics

    import numpy as np
    import torch
    from peft_adapters import peft_adapter, torch_logits

    from theseus.experiments import JOBS, runs

    base = save_checkpoint(tmp_path / "base", "llama")
    reference = peft_adapter(base, "llama", tmp_path / "adapter")
    ids = np.random.default_rng(0).integers(0, 300, (2, 12)).astype("int32")
    language_model = load(str(tmp_path / "adapter"))
    np.testing.assert_allclose(np.asarray(language_model.model(ids)), torch_logits(reference, ids), atol=1e-4, rtol=0)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(topics[k] for k in sorted(topics)[:2])[:4000])
    overrides = {
        "architecture/huggingface/model": str(tmp_path / "adapter"),
        "data/source": str(corpus),
        "architecture/block_size": 16,
        "evaluation/batch_size": 4,
        "evaluation/tokens": 0,
    }
    job = JOBS["llama/eval/evaluate"](runs.configure("llama/eval/evaluate", overrides, require=True)[1], tmp_path / "e")
    batches = list(job.heldout())
    total, count = 0.0, 0
    with torch.no_grad():
        for inputs, targets, *_ in batches:  # padding rows (if any) have negative targets
            logp = torch.log_softmax(reference(torch.tensor(inputs, dtype=torch.long)).logits.double(), -1)
            real = torch.tensor(targets >= 0)
            picked = logp.gather(-1, torch.tensor(np.maximum(targets, 0), dtype=torch.long)[..., None])[..., 0]
            total -= float(picked[real].sum())
            count += int(real.sum())
    assert job.run()["perplexity"]["nll"] == pytest.approx(total / count, rel=1e-5)
