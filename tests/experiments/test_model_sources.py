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
