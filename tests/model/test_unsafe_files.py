"""Nothing unsafe is loaded: a Hugging Face folder whose weights are only a pickle is refused
on every path that reads weights (one line, exit 2, nothing written, the pickle never
opened), the command the refusal gives converts it, and no code in theseus sets
`trust_remote_code` or unpickles a file."""

import pickle
import re
from pathlib import Path

import pytest
import torch
from hf_checkpoints import hf_model, save_checkpoint

from theseus import cli
from theseus.config import ConfigError
from theseus.model.huggingface import HFCheckpoint

THESEUS = Path(__file__).resolve().parents[2] / "theseus"
UNSAFE = re.compile(
    r"trust_remote_code\s*=\s*(?!False)|torch\.load\b|pickle\.loads?\b|allow_pickle\s*=\s*True|weights_only\s*=\s*False"
)


def test_no_code_in_theseus_unpickles_a_file_or_runs_remote_code():
    found = [
        f"{path.relative_to(THESEUS.parent)}:{number}: {line.strip()}"
        for path in sorted(THESEUS.rglob("*.py"))
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if UNSAFE.search(line)
    ]
    assert found == []


class Planted:
    """Unpickled, this creates the file `marker`: the proof that a pickle was opened."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def pickled_folder(folder: Path, marker: Path) -> Path:
    """A Llama folder (config.json, tokenizer) whose weights are only a planted pickle."""
    save_checkpoint(folder, "llama")
    for path in folder.glob("*.safetensors*"):
        path.unlink()
    (folder / "pytorch_model.bin").write_bytes(pickle.dumps(Planted(str(marker))))
    return folder


def test_a_pickle_only_folder_is_refused_before_anything_is_written_on_every_path(tmp_path, capsys):
    marker = tmp_path / "unpickled"
    folder = pickled_folder(tmp_path / "llama", marker)
    before = sorted(p.name for p in folder.iterdir())
    capsys.readouterr()  # what saving the folder printed
    configs = {
        "finetune": f"job: llama/train/finetune\narchitecture:\n  huggingface:\n    model: {folder}\n",
        "evaluate": f"job: llama/eval/evaluate\narchitecture:\n  huggingface:\n    model: {folder}\n",
        "evaluate-any": f"job: gpt/eval/evaluate\nevaluation:\n  checkpoint: {folder}\n",
    }
    commands = {name: ["run", name, str(tmp_path / f"{name}.yaml"), str(tmp_path / "runs")] for name in configs}
    commands["generate"] = ["generate", str(folder), "--prompt", "Hello"]
    for name, text in configs.items():
        (tmp_path / f"{name}.yaml").write_text(text)
    for name, command in commands.items():
        assert cli.main(command) == 2, name
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1, (name, captured.err)
        assert lines[0].startswith(
            f"theseus: error: architecture/huggingface/model: {folder} holds its weights only as "
            "pytorch_model.bin, a pickle, which theseus never loads"
        ), (name, lines)
        assert "safe_serialization=True" in lines[0], lines
    assert not (tmp_path / "runs").exists()
    assert not marker.exists()
    assert sorted(p.name for p in folder.iterdir()) == before


def test_the_command_the_refusal_gives_converts_the_folder(tmp_path):
    folder = tmp_path / "pt"
    model = hf_model("llama")
    model.config.save_pretrained(str(folder))
    torch.save(model.state_dict(), folder / "pytorch_model.bin")  # as older transformers saved weights
    with pytest.raises(ConfigError, match="a pickle, which theseus never loads") as error:
        HFCheckpoint(str(folder)).plan()
    command = re.search(r'python -c "(.*)"$', str(error.value)).group(1)
    exec(command, {})  # as the user would run it: transformers reads its own pickle, safely (weights only)
    assert len(HFCheckpoint(str(folder)).plan()) > 0
