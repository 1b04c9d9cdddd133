"""Chat data: the loss mask is exactly the assistant's tokens, checked token by token
against transformers' own assistant mask (from `{% generation %}` markers that theseus
does not use), and rows carry it as IGNORE_INDEX targets."""

import json

import numpy as np
import pytest
from transformers import AutoTokenizer

from theseus.base.targets import IGNORE_INDEX
from theseus.config import ConfigError
from theseus.data import ChatRows, chat_datasets, load_tokenizer
from theseus.data.sft import read_chat_records, render_chat

TWO_TURNS = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2 + 2?"},
    {"role": "assistant", "content": "4, of course."},
]


def test_the_mask_covers_exactly_the_assistant_tokens_of_a_two_turn_chat(bpe_folder):
    ids, assistant = render_chat(load_tokenizer(str(bpe_folder)), TWO_TURNS)
    reference = AutoTokenizer.from_pretrained(str(bpe_folder)).apply_chat_template(
        TWO_TURNS, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    assert ids.tolist() == reference["input_ids"]
    assert assistant.astype(int).tolist() == reference["assistant_masks"]  # token by token
    tokenizer = AutoTokenizer.from_pretrained(str(bpe_folder))
    pieces = np.split(np.arange(len(ids)), np.flatnonzero(np.diff(assistant.astype(int))) + 1)
    said = [tokenizer.decode(ids[piece]) for piece in pieces if assistant[piece[0]]]
    assert said == ["Hello!<|im_end|>", "4, of course.<|im_end|>"]  # each answer and its end-of-turn, nothing else


def test_prompt_response_records_are_a_user_and_an_assistant_turn(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"messages": TWO_TURNS}),
                json.dumps({"prompt": "Name a colour.", "response": "Blue.", "system": "Be brief."}),
                "",
                json.dumps({"prompt": "Hi", "response": "Hello"}),
            ]
        )
    )
    records = read_chat_records(path)
    assert records[0] == TWO_TURNS
    assert records[1] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ]
    assert records[2] == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    path.write_text(json.dumps({"question": "?", "answer": "!"}) + "\n")
    with pytest.raises(
        ConfigError,
        match=r"line 1 of .*chat.jsonl has neither `messages` nor `prompt` and `response` \(it has \['answer', 'question'\]\)",
    ):
        read_chat_records(path)
    path.write_text(json.dumps({"messages": [{"role": "user"}]}) + "\n")
    with pytest.raises(ConfigError, match="`messages` must be a list of {role, content} strings"):
        read_chat_records(path)


def test_a_tokenizer_without_a_chat_template_is_refused():
    with pytest.raises(ConfigError, match="data/tokenizer 'byte' has no chat template"):
        render_chat(load_tokenizer("byte"), TWO_TURNS)


def conversations(n=3):
    """Hand-made (ids, assistant) pairs: ids count up, the assistant says every third token."""
    out, start = [], 0
    for length in (7, 12, 5)[:n]:
        ids = np.arange(start, start + length, dtype=np.int32)
        out.append((ids, ids % 3 == 0))
        start += length
    return out


def test_packed_rows_target_the_next_token_only_where_it_is_the_assistants():
    rows = ChatRows(conversations(), block_size=5, packing="packed")
    ids = np.arange(24)
    assert len(rows) == 4 and rows.dropped == 0  # 24 tokens = 4 windows of 6
    x, y = rows.examples(np.arange(4))
    np.testing.assert_array_equal(x, ids.reshape(4, 6)[:, :-1])
    following = ids.reshape(4, 6)[:, 1:]
    np.testing.assert_array_equal(y, np.where(following % 3 == 0, following, IGNORE_INDEX))


def test_padded_rows_hold_one_conversation_each_cut_at_block_size():
    rows = ChatRows(conversations(), block_size=8, packing="padded", pad_id=99)
    x, y = rows.examples(np.arange(len(rows)))
    assert x.shape == (3, 8)
    np.testing.assert_array_equal(x[0], [0, 1, 2, 3, 4, 5, 6, 99])
    np.testing.assert_array_equal(y[0], [-100, -100, 3, -100, -100, 6, -100, -100])
    np.testing.assert_array_equal(x[1], np.arange(7, 15))  # 12 tokens cut to 9
    np.testing.assert_array_equal(y[1], [-100, 9, -100, -100, 12, -100, -100, 15])
    # a row whose only assistant token is its first one has no target: dropped
    only_first = [(np.array([3, 4, 5]), np.array([True, False, False]))]
    assert len(ChatRows(only_first, 4, "padded")) == 0


def test_chat_datasets_shuffle_by_step_and_hold_out_conversations(bpe_folder, tmp_path):
    path = tmp_path / "chat.jsonl"
    with open(path, "w") as f:
        for i in range(40):
            f.write(json.dumps({"prompt": f"What is {i} + {i}?", "response": f"It is {2 * i}."}) + "\n")
    tokenizer = load_tokenizer(str(bpe_folder))
    train, validation = chat_datasets(
        str(path), tokenizer, 64, 4, steps=12, seed=1, packing="padded", validation_fraction=0.2
    )
    assert len(train.sources[0]) == 32 and len(validation) == 2  # 8 conversations held out
    resumed, _ = chat_datasets(
        str(path), tokenizer, 64, 4, steps=4, seed=1, start_step=8, packing="padded", validation_fraction=0.2
    )
    for i in range(4):
        np.testing.assert_array_equal(resumed[i][1], train[8 + i][1])
    x, y = train[0]
    for row_x, row_y in zip(x, y):  # every target is an answer token: decoded, they are "It is N.<|im_end|>"
        answer = AutoTokenizer.from_pretrained(str(bpe_folder)).decode(row_y[row_y != IGNORE_INDEX])
        assert answer.startswith("It is ") and answer.endswith(".<|im_end|>")
        assert (
            answer
            in AutoTokenizer.from_pretrained(str(bpe_folder)).decode(row_x[row_x != tokenizer.eos_id]) + "<|im_end|>"
        )


@pytest.mark.slow
def test_fine_tuning_on_chat_rows_lowers_the_answer_loss(bpe_folder, tmp_path):
    import keras

    from theseus.model.models import GPT

    path = tmp_path / "chat.jsonl"
    with open(path, "w") as f:
        for i in range(200):
            f.write(
                json.dumps({"prompt": f"Repeat {i % 7}", "response": f"{i % 7} {i % 7} {i % 7}"}) + "\n"
            )  # every 10th is held out; % 7 puts each digit on both sides
    tokenizer = load_tokenizer(str(bpe_folder))
    train, validation = chat_datasets(
        str(path), tokenizer, 32, 8, steps=60, seed=0, packing="packed", validation_fraction=0.1
    )
    keras.utils.set_random_seed(0)
    model = GPT(vocab_size=tokenizer.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=32)
    model.compile(optimizer=keras.optimizers.AdamW(3e-3))
    before = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    model.fit(train, epochs=1, shuffle=False, verbose=0)
    after = model.evaluate(validation, verbose=0, return_dict=True)["loss"]
    assert np.isfinite(after) and after < 0.5 * before
