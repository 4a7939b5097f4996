"""Chat rendering and loss masks, token by token, against hand-built expectations.

Each expectation is written as the rendered text cut into pieces, each marked
trained or not; the expected ids are the pieces tokenized one by one, so these
tests also pin that the template renders exactly that text.
"""

from __future__ import annotations

import json

import pytest

from toolkit.config import Config, DatasetConfig
from toolkit.templates import template_text
from toolkit.trainer.chat import (
    IGNORE_INDEX,
    ChatEncoder,
    RowError,
    TurnRule,
    normalize_conversation,
)

TWO_TURNS = [
    {"role": "user", "content": "Spell green backwards."},
    {"role": "assistant", "content": "neerg"},
    {"role": "user", "content": "And forwards?"},
    {"role": "assistant", "content": "green"},
]


def expected(tok, pieces: list[tuple[str, bool]]) -> tuple[list[int], list[int]]:
    ids, labels = [], []
    for text, trained in pieces:
        piece = tok(text, add_special_tokens=False)["input_ids"]
        ids += piece
        labels += piece if trained else [IGNORE_INDEX] * len(piece)
    return ids, labels


def encode(tok, messages, template="qwen3", roles=("assistant",), eos="turn", inputs=False):
    encoder = ChatEncoder(tok, template_text(template), ["<|im_end|>"])
    return tuple(encoder.encode(messages, TurnRule(frozenset(roles), eos, eos, inputs))[:2])


def test_qwen3_multi_turn_trains_assistant_turns_and_their_end_tokens(tiny_tokenizer):
    assert encode(tiny_tokenizer, TWO_TURNS) == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nSpell green backwards.<|im_end|>\n<|im_start|>assistant\n", False),
            ("neerg<|im_end|>", True),
            ("\n<|im_start|>user\nAnd forwards?<|im_end|>\n<|im_start|>assistant\n", False),
            # Qwen3 renders an empty think block in the final reply; the model must learn it.
            ("<think>\n\n</think>\n\ngreen<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_qwen3_reasoning_content_is_trained_inside_think(tiny_tokenizer):
    messages = [
        {"role": "user", "content": "What is 3 plus 4?"},
        {"role": "assistant", "content": "7", "reasoning_content": "Add them."},
    ]
    assert encode(tiny_tokenizer, messages) == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nWhat is 3 plus 4?<|im_end|>\n<|im_start|>assistant\n", False),
            ("<think>\nAdd them.\n</think>\n\n7<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_train_on_eos_none_leaves_end_tokens_out(tiny_tokenizer):
    assert encode(tiny_tokenizer, TWO_TURNS, eos="none") == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nSpell green backwards.<|im_end|>\n<|im_start|>assistant\n", False),
            ("neerg", True),
            (
                "<|im_end|>\n<|im_start|>user\nAnd forwards?<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("<think>\n\n</think>\n\ngreen", True),
            ("<|im_end|>\n", False),
        ],
    )


def test_train_on_eos_all_trains_user_end_tokens_too(tiny_tokenizer):
    assert encode(tiny_tokenizer, TWO_TURNS, eos="all") == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nSpell green backwards.", False),
            ("<|im_end|>", True),
            ("\n<|im_start|>assistant\n", False),
            ("neerg<|im_end|>", True),
            ("\n<|im_start|>user\nAnd forwards?", False),
            ("<|im_end|>", True),
            ("\n<|im_start|>assistant\n", False),
            ("<think>\n\n</think>\n\ngreen<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_train_on_eos_last_trains_only_the_final_end_token(tiny_tokenizer):
    assert encode(tiny_tokenizer, TWO_TURNS, eos="last") == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nSpell green backwards.<|im_end|>\n<|im_start|>assistant\n", False),
            ("neerg", True),
            (
                "<|im_end|>\n<|im_start|>user\nAnd forwards?<|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("<think>\n\n</think>\n\ngreen<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_chatml_with_system_and_user_roles_trained(tiny_tokenizer):
    messages = [{"role": "system", "content": "Be brief."}, *TWO_TURNS[:2]]
    got = encode(tiny_tokenizer, messages, template="chatml", roles=("user", "assistant"))
    assert got == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n", False),
            ("Spell green backwards.<|im_end|>", True),
            ("\n<|im_start|>assistant\n", False),
            ("neerg<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_train_on_inputs_trains_every_turn_but_not_the_headers(tiny_tokenizer):
    """As axolotl: every turn's content and end token carry loss; the role headers and
    the newlines between turns do not (they are the template's, not the data's)."""
    assert encode(tiny_tokenizer, TWO_TURNS, inputs=True) == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\n", False),
            ("Spell green backwards.<|im_end|>", True),
            ("\n<|im_start|>assistant\n", False),
            ("neerg<|im_end|>", True),
            ("\n<|im_start|>user\n", False),
            ("And forwards?<|im_end|>", True),
            ("\n<|im_start|>assistant\n", False),
            ("<think>\n\n</think>\n\ngreen<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_roles_map_source_names_and_fields():
    ds = DatasetConfig(
        path="x.jsonl",
        field_messages="conversations",
        message_property_mappings={"role": "from", "content": "value"},
        roles={"user": ["human"], "assistant": ["gpt"]},
    )
    row = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]}
    assert normalize_conversation(row, ds).messages == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Yo"},
    ]


@pytest.mark.parametrize(
    "row, message",
    [
        (
            {"messages": [{"role": "bot", "content": "x"}]},
            "messages[0].role is 'bot'; accepted: system, user, assistant, tool; map other names",
        ),
        ({"messages": []}, "messages is empty; expected a non-empty list of messages"),
        ({"text": "hi"}, "has no 'messages' field (field_messages); its fields are ['text']"),
        ({"messages": [{"role": "user"}]}, "messages[0] has no 'content'"),
        (
            {"messages": [{"role": "user", "content": 3}]},
            "messages[0].content is int; expected text",
        ),
        ({"messages": "hello"}, "messages is text that is not JSON (Expecting value)"),
        ({"messages": "{}"}, "messages is dict; expected a non-empty list of messages"),
    ],
)
def test_bad_rows_name_the_field(row, message):
    with pytest.raises(RowError) as info:
        normalize_conversation(row, DatasetConfig(path="x.jsonl"))
    assert str(info.value).startswith(message)


THINKING = [
    {"role": "user", "content": "What is 2 plus 2?"},
    {"role": "assistant", "content": "4", "reasoning_content": "Two and two."},
    {"role": "user", "content": "And 3 plus 3?"},
    {"role": "assistant", "content": "<think>\nThree and three.\n</think>\n\n6"},
]


def test_qwen3_multi_turn_thinking_masks(tiny_tokenizer):
    """Qwen3 drops the reasoning of turns before the last user query, and renders the last
    reply's reasoning (given inline here) inside its think block: both are trained as
    rendered, and no reasoning leaks into a masked span or out of a trained one."""
    assert encode(tiny_tokenizer, THINKING) == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nWhat is 2 plus 2?<|im_end|>\n<|im_start|>assistant\n", False),
            ("4<|im_end|>", True),
            ("\n<|im_start|>user\nAnd 3 plus 3?<|im_end|>\n<|im_start|>assistant\n", False),
            ("<think>\nThree and three.\n</think>\n\n6<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_enable_thinking_false_puts_the_empty_think_block_in_the_prompt(tiny_tokenizer):
    encoder = ChatEncoder(
        tiny_tokenizer, template_text("qwen3"), ["<|im_end|>"], {"enable_thinking": False}
    )
    got = encoder.encode(TWO_TURNS[:2], TurnRule(frozenset({"assistant"}), "turn", "turn", False))
    assert got[:2] == expected(
        tiny_tokenizer,
        [
            (
                "<|im_start|>user\nSpell green backwards.<|im_end|>\n<|im_start|>assistant\n"
                "<think>\n\n</think>\n\n",
                False,
            ),
            ("neerg<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_split_thinking_moves_the_think_block_into_reasoning_content():
    ds = DatasetConfig(path="x.jsonl", split_thinking=True)
    row = {
        "messages": [
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4"},
        ]
    }
    assert normalize_conversation(row, ds).messages[1] == {
        "role": "assistant",
        "content": "4",
        "reasoning_content": "Two and two.",
    }
    plain = normalize_conversation(row, DatasetConfig(path="x.jsonl")).messages[1]
    assert plain == {"role": "assistant", "content": "<think>\nTwo and two.\n</think>\n\n4"}


@pytest.mark.parametrize("name", ["qwen3", "chatml"])
@pytest.mark.parametrize("kwargs", [{}, {"enable_thinking": False}])
def test_bundled_templates_render_as_transformers_renders_them(tiny_tokenizer, name, kwargs):
    import random

    from toolkit.templates import plain_renderer

    template = template_text(name)
    render = plain_renderer(template)
    rng = random.Random(3)
    for _ in range(40):
        messages = [{"role": "system", "content": "Be brief."}] if rng.random() < 0.4 else []
        for turn in range(rng.randint(1, 4)):
            messages.append({"role": "user", "content": f"question {turn} <b>&</b>"})
            reply = {"role": "assistant", "content": f"answer {turn}"}
            if rng.random() < 0.5:
                reply["reasoning_content"] = f"because {turn}"
            messages.append(reply)
        for prompt in (False, True):
            cut = messages[:-1] if prompt else messages
            want = tiny_tokenizer.apply_chat_template(
                cut, chat_template=template, tokenize=False, add_generation_prompt=prompt, **kwargs
            )
            got = render(
                messages=cut,
                add_generation_prompt=prompt,
                **{**tiny_tokenizer.special_tokens_map, **kwargs},
            )
            assert got == want


def test_templates_from_elsewhere_stay_in_the_sandbox():
    from toolkit.templates import plain_renderer

    assert plain_renderer("{{ messages[0].content }}") is None


def test_alpaca_rows_train_on_the_output_and_eos(tiny_tokenizer):
    from toolkit.trainer.chat import IGNORE_INDEX, encode_alpaca

    ids, labels = encode_alpaca(
        tiny_tokenizer,
        {"instruction": "Add 2 and 3.", "input": "", "output": "5"},
        train_on_inputs=False,
    )
    prompt = tiny_tokenizer(
        "Below is an instruction that describes a task. Write a response "
        "that appropriately completes the request.\n\n### Instruction:\n"
        "Add 2 and 3.\n\n### Response:\n",
        add_special_tokens=False,
    )["input_ids"]
    answer = tiny_tokenizer("5", add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer + [tiny_tokenizer.eos_token_id]
    assert labels == [IGNORE_INDEX] * len(prompt) + answer + [tiny_tokenizer.eos_token_id]
    with pytest.raises(
        RowError, match="output is missing; alpaca rows need instruction and output text"
    ):
        encode_alpaca(tiny_tokenizer, {"instruction": "x"}, False)


TOOLS = [{"type": "function", "function": {"name": "add", "parameters": '{"type": "object"}'}}]
TOOL_ROW = {
    "tools": json.dumps(TOOLS),
    "messages": [
        {"role": "user", "content": "1+2?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": '{"a": 1, "b": 2}'}}
            ],
        },
        {"role": "tool", "content": "3", "tool_call_id": "c0"},
        {"role": "assistant", "content": "3"},
    ],
}


def test_tool_calls_and_tools_reach_the_template_and_train(qwen3_tokenizer):
    """OpenAI's tool-call form (content: null, arguments as JSON text, tools as JSON
    text) renders as Qwen3 defines and trains the call, not the tool's answer."""
    ds = DatasetConfig(path="x.jsonl")
    conversation = normalize_conversation(TOOL_ROW, ds)
    assert conversation.tools == [
        {"type": "function", "function": {"name": "add", "parameters": {"type": "object"}}}
    ]
    encoder = ChatEncoder(qwen3_tokenizer, template_text("qwen3"), ["<|im_end|>"])
    got = encoder.encode(
        conversation, TurnRule.from_config(Config(base_model="m", datasets=[ds]), ds)
    )
    system = (
        "<|im_start|>system\n# Tools\n\nYou may call one or more functions to assist with the "
        "user query.\n\nYou are provided with function signatures within <tools></tools> XML "
        'tags:\n<tools>\n{"type": "function", "function": {"name": "add", "parameters": '
        '{"type": "object"}}}\n</tools>\n\nFor each function call, return a json object with '
        "function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n"
        '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n'
    )
    assert got[:2] == expected(
        qwen3_tokenizer,
        [
            (system + "<|im_start|>user\n1+2?<|im_end|>\n<|im_start|>assistant\n", False),
            (
                '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n'
                "</tool_call><|im_end|>",
                True,
            ),
            (
                "\n<|im_start|>user\n<tool_response>\n3\n</tool_response><|im_end|>\n<|im_start|>assistant\n",
                False,
            ),
            ("<think>\n\n</think>\n\n3<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_empty_turns_train_nothing_and_are_counted(qwen3_tokenizer):
    encoder = ChatEncoder(qwen3_tokenizer, template_text("qwen3"), ["<|im_end|>"])
    messages = [
        {"role": "user", "content": ""},
        {"role": "assistant", "content": ""},
        {"role": "user", "content": "b"},
        {"role": "assistant", "content": "c"},
    ]
    got = encoder.encode(
        messages, TurnRule(frozenset({"user", "assistant"}), "turn", "turn", False)
    )
    assert got.empty_turns == 2
    assert got[:2] == expected(
        qwen3_tokenizer,
        [
            (
                "<|im_start|>user\n<|im_end|>\n<|im_start|>assistant\n<|im_end|>\n<|im_start|>user\n",
                False,
            ),
            ("b<|im_end|>", True),
            ("\n<|im_start|>assistant\n", False),
            ("<think>\n\n</think>\n\nc<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_eos_last_is_the_last_trained_turns_end(qwen3_tokenizer):
    encoder = ChatEncoder(qwen3_tokenizer, template_text("qwen3"), ["<|im_end|>"])
    messages = [*TWO_TURNS[:2], {"role": "user", "content": "Thanks"}]
    got = encoder.encode(messages, TurnRule(frozenset({"assistant"}), "last", "last", False))
    assert got[:2] == expected(
        qwen3_tokenizer,
        [
            ("<|im_start|>user\nSpell green backwards.<|im_end|>\n<|im_start|>assistant\n", False),
            ("neerg<|im_end|>", True),
            ("\n<|im_start|>user\nThanks<|im_end|>\n", False),
        ],
    )


@pytest.mark.parametrize(
    "turn, message",
    [
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"name": "f", "arguments": "{a"}}],
            },
            "messages[0].tool_calls[0].arguments is not JSON",
        ),
        (
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"function": {"arguments": "{}"}}],
            },
            "messages[0].tool_calls[0] has no function name",
        ),
        (
            {"role": "user", "content": [{"type": "image", "image": "x.png"}]},
            "messages[0].content has a 'image' part; only text is trained",
        ),
    ],
)
def test_bad_tool_calls_and_parts_name_the_field(turn, message):
    with pytest.raises(RowError) as info:
        normalize_conversation({"messages": [turn]}, DatasetConfig(path="x.jsonl"))
    assert str(info.value).startswith(message)


def test_system_fields_and_default_system_message():
    ds = DatasetConfig(path="x.jsonl", drop_system_message=True)
    row = {"messages": [{"role": "system", "content": "old"}, {"role": "user", "content": "a"}]}
    assert normalize_conversation(row, ds, "new").messages[0] == {
        "role": "system",
        "content": "new",
    }
    row = {"system": "from the row", "messages": [{"role": "user", "content": "a"}]}
    got = normalize_conversation(row, DatasetConfig(path="x.jsonl"), "default")
    assert got.messages[0] == {"role": "system", "content": "from the row"}


@pytest.mark.parametrize(
    "reply",
    [
        "\ue000toolkit-turn and more",
        "ends like the placeholder toolkit-turn\ue001",
        "\ue000toolkit-turn\ue001",
    ],
)
def test_a_reply_that_looks_like_the_placeholder_is_still_trained_whole(tiny_tokenizer, reply):
    """The turn is found by replacing it with a placeholder; text that begins or ends
    like that placeholder must not shorten what trains."""
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": reply}]
    assert encode(tiny_tokenizer, messages) == expected(
        tiny_tokenizer,
        [
            ("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", False),
            (f"<think>\n\n</think>\n\n{reply}<|im_end|>", True),
            ("\n", False),
        ],
    )


def test_the_differing_span_is_the_one_reversed_texts_give():
    """_diff_span compares in place (a huge text is never reversed or copied whole); its
    answer is the plain one: common prefix, then common suffix not reaching into it."""
    import random

    from toolkit.trainer.chat import _diff_span

    def plain(full: str, dummy: str) -> tuple[int, int]:
        limit = min(len(full), len(dummy))
        start = next((k for k in range(limit) if full[k] != dummy[k]), limit)
        tail = 0
        while tail < limit - start and full[-1 - tail] == dummy[-1 - tail]:
            tail += 1
        return start, len(full) - tail

    rng = random.Random(0)
    for _ in range(3000):
        full = "".join(rng.choice("ab") for _ in range(rng.randint(0, 12)))
        dummy = "".join(rng.choice("ab\ue000") for _ in range(rng.randint(0, 12)))
        if rng.random() < 0.5:  # a shared start and end around a replaced middle
            cut = rng.randint(0, len(full))
            dummy = full[:cut] + dummy + full[cut + rng.randint(0, len(full) - cut) :]
        assert _diff_span(full, dummy) == plain(full, dummy), (full, dummy)
