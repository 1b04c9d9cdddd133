import pickle

import numpy as np
import pytest
from data_fixtures import train_bpe
from transformers import AutoTokenizer

from theseus.config import ConfigError
from theseus.data import ByteTokenizer, HFTokenizer, embedded_corpus, load_tokenizer
from theseus.data.tokenizers import token_dtype


def test_byte_tokenizer_round_trips_and_separates_documents():
    tok = ByteTokenizer()
    text = "héllo wörld ✓"
    assert tok.decode(tok.encode(text)) == text
    stream = tok.encode_documents(["ab", "c"])
    assert stream.tolist() == [97, 98, 256, 99, 256]


def test_hf_batch_encode_is_the_tokenizers_own(bpe_folder):
    documents = embedded_corpus()[30:40] + ["", "<|endoftext|> inside a text", "  two  spaces\n\ttab"]
    tok = load_tokenizer(str(bpe_folder))
    reference = AutoTokenizer.from_pretrained(str(bpe_folder))(documents, add_special_tokens=False)["input_ids"]
    ours = tok.encode_batch(documents)
    assert [o.tolist() for o in ours] == reference
    assert all(o.dtype == np.uint16 for o in ours)
    stream = tok.encode_documents(documents)
    assert stream.tolist() == [i for ids in reference for i in ids + [tok.eos_id]]
    # a worker process gets the light encoder, which encodes the same
    encoder = pickle.loads(pickle.dumps(tok.encoder))
    assert [e.tolist() for e in encoder.encode_batch(documents)] == reference


def test_fingerprint_names_the_vocabulary_not_the_path(bpe_folder, tmp_path):
    a = load_tokenizer(str(bpe_folder))
    copy = tmp_path / "copy"
    copy.mkdir()
    for file in bpe_folder.iterdir():
        (copy / file.name).write_bytes(file.read_bytes())
    assert load_tokenizer(str(copy)).fingerprint == a.fingerprint
    other = train_bpe(tmp_path / "other", vocab_size=300)
    assert load_tokenizer(str(other)).fingerprint != a.fingerprint
    assert ByteTokenizer().fingerprint != a.fingerprint


def test_token_dtype_is_the_smallest_that_holds_every_id():
    assert token_dtype(65536) == np.uint16
    assert token_dtype(65537) == np.uint32


def test_unknown_tokenizer_is_one_config_error(tmp_path):
    with pytest.raises(ConfigError, match="data/tokenizer: unknown tokenizer 'nope'"):
        load_tokenizer("nope")
    with pytest.raises(ConfigError, match=f"data/tokenizer: no Hugging Face tokenizer in {tmp_path}"):
        load_tokenizer(str(tmp_path))
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    assert HFTokenizer  # the public name still exists
