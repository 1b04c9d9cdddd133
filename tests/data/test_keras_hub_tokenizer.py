"""`KerasHubTokenizer`: a keras-hub tokenizer folder behind theseus's tokenizer interface."""

import json

import keras
import numpy as np
import pytest
from tokenizers import ByteLevelBPETokenizer

from theseus.config import ConfigError
from theseus.data import load_tokenizer
from theseus.data.keras_hub import KerasHubTokenizer, is_keras_hub_tokenizer

TEXT = "The import statement binds names. The with statement wraps a block. " * 20


@pytest.fixture(scope="module")
def opt_folder(tmp_path_factory):
    """keras-hub's OPT tokenizer over a byte-level BPE trained here, saved as keras-hub saves one."""
    import keras_hub

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([TEXT], vocab_size=290, special_tokens=["<s>", "</s>", "<pad>", "<unk>"])
    merges = [" ".join(pair) for pair in json.loads(bpe.to_str())["model"]["merges"]]
    folder = tmp_path_factory.mktemp("opt")
    keras_hub.tokenizers.OPTTokenizer(vocabulary=bpe.get_vocab(), merges=merges).save_to_preset(str(folder))
    return folder


def test_load_tokenizer_reads_a_keras_hub_tokenizer_folder_with_keras_hub_s_ids(opt_folder):
    tokenizer = load_tokenizer(str(opt_folder))
    assert isinstance(tokenizer, KerasHubTokenizer) and is_keras_hub_tokenizer(opt_folder)
    assert tokenizer.vocab_size == len(tokenizer.tokenizer.get_vocabulary()) and tokenizer.eos_id == 1  # </s>
    ids = tokenizer.encode_documents(["The import", "a block"])
    assert ids.dtype == np.uint16 and list(ids).count(tokenizer.eos_id) == 2
    assert (
        keras.ops.convert_to_numpy(tokenizer.tokenizer("The import")).tolist()
        == tokenizer.encode("The import").tolist()
    )
    assert tokenizer.decode(tokenizer.encode("The with statement")) == "The with statement"
    past = [tokenizer.vocab_size, tokenizer.vocab_size + 7]  # a padded model vocabulary's ids: no text
    assert tokenizer.decode([*tokenizer.encode("The with"), *past]) == "The with" and tokenizer.decode(past) == ""
    assert KerasHubTokenizer(opt_folder).fingerprint == tokenizer.fingerprint


def test_a_folder_without_a_tokenizer_is_refused_in_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"class_name": "NoSuchTokenizer", "config": {}}')
    with pytest.raises(ConfigError, match="data/tokenizer"):
        load_tokenizer(str(tmp_path))
