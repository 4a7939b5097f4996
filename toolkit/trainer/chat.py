"""Chat rows → token ids and labels, with loss only where the config says.

A conversation is rendered once with the chat template. Each trained turn is
then located in the rendered text as a character span:

- an assistant turn starts where the template's generation prompt ends (render
  the turns before it with `add_generation_prompt=True`; that text must be a
  prefix of the whole rendering), so whatever the template puts at the start of
  the reply, such as Qwen3's `<think>` block, is trained as the model will have
  to produce it;
- a turn ends at its end-of-turn token (`<|im_end|>` for Qwen3 and ChatML).

Templates that rewrite earlier turns (Qwen3 drops old reasoning) can break the
prefix rule; then the turn's own text is searched for instead. Tokens are
labelled by their character offsets, so the labels follow the real
tokenization, merges included.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from toolkit.config import Config, DatasetConfig
from toolkit.errors import DataError
from toolkit.templates import plain_renderer, template_text

IGNORE_INDEX = -100


class RowError(ValueError):
    """A row that cannot be used; the message names the field."""


def resolve_template(cfg: Config, tokenizer) -> str:
    """The Jinja chat template the config asks for."""
    if cfg.chat_template in ("qwen3", "chatml"):
        return template_text(cfg.chat_template)
    if cfg.chat_template == "jinja":
        text = cfg.chat_template_jinja or ""
        path = Path(text)
        return path.read_text() if "\n" not in text and path.is_file() else text
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"chat_template: 'tokenizer_default' but the tokenizer of "
            f"{cfg.tokenizer_config or cfg.base_model} has no chat template; set "
            "chat_template: qwen3 (or chatml, or jinja with chat_template_jinja)"
        )
    return tokenizer.chat_template


def resolve_eot_tokens(cfg: Config, tokenizer) -> list[str]:
    """End-of-turn markers: the config's, else `<|im_end|>` when the vocabulary has it, else EOS."""
    if cfg.eot_tokens:
        return list(cfg.eot_tokens)
    if "<|im_end|>" in tokenizer.get_vocab():
        return ["<|im_end|>"]
    return [tokenizer.eos_token]


@dataclass(frozen=True)
class TurnRule:
    roles_to_train: frozenset[str]
    train_on_eos: str
    train_on_inputs: bool

    @classmethod
    def from_config(cls, cfg: Config, ds: DatasetConfig) -> TurnRule:
        return cls(frozenset(ds.roles_to_train), ds.train_on_eos, cfg.train_on_inputs)


# ShareGPT's role names, read as axolotl reads them when a dataset sets no `roles:`.
DEFAULT_ROLE_ALIASES = {"human": "user", "gpt": "assistant"}


def normalize_messages(row: dict, ds: DatasetConfig) -> list[dict]:
    """Map a dataset row to [{'role', 'content', ...}] with canonical roles, or raise RowError."""
    field = ds.field_messages
    if field not in row:
        raise RowError(f"has no {field!r} field (field_messages); its fields are {sorted(row)[:8]}")
    return normalize_turns(row[field], ds, field)


def normalize_turns(turns, ds: DatasetConfig, field: str) -> list[dict]:
    """A list of messages, mapped through message_property_mappings and roles."""
    if not isinstance(turns, list) or not turns:
        raise RowError(
            f"{field} is {'empty' if turns == [] else type(turns).__name__}; "
            "expected a non-empty list of messages"
        )
    role_key = ds.message_property_mappings.role
    content_key = ds.message_property_mappings.content
    aliases = (
        {alias: role for role, names in ds.roles.items() for alias in names}
        if ds.roles is not None
        else DEFAULT_ROLE_ALIASES
    )
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise RowError(f"{field}[{i}] is {type(turn).__name__}; expected a mapping")
        if role_key not in turn or content_key not in turn:
            missing = role_key if role_key not in turn else content_key
            raise RowError(
                f"{field}[{i}] has no {missing!r} (message_property_mappings); "
                f"it has {sorted(turn)}"
            )
        role = turn[role_key]
        role = aliases.get(role, role) if isinstance(role, str) else role
        if role not in ("system", "user", "assistant", "tool"):
            raise RowError(
                f"{field}[{i}].{role_key} is {turn[role_key]!r}; accepted: system, "
                "user, assistant, tool; map other names with the dataset's `roles:` "
                "(e.g. roles: {assistant: [gpt]})"
            )
        content = turn[content_key]
        if not isinstance(content, str):
            raise RowError(f"{field}[{i}].{content_key} is {type(content).__name__}; expected text")
        message = {"role": role, "content": content}
        if isinstance(turn.get("reasoning_content"), str):
            message["reasoning_content"] = turn["reasoning_content"]
        elif ds.split_thinking and role == "assistant" and "</think>" in content:
            thought, _, answer = content.partition("</think>")
            message = {
                "role": role,
                "content": answer.lstrip("\n"),
                "reasoning_content": thought.replace("<think>", "", 1).strip("\n"),
            }
        out.append(message)
    return out


class ChatEncoder:
    """Renders conversations with one template and labels the trained spans."""

    def __init__(
        self, tokenizer, template: str, eot_tokens: list[str], template_kwargs: dict | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.template = template
        self.eot_tokens = eot_tokens
        # e.g. {enable_thinking: false}: Qwen3 then puts an empty think block in the
        # generation prompt, so it is part of the prompt, not of the trained reply.
        self.template_kwargs = template_kwargs or {}
        self._plain = plain_renderer(template)
        self._variables = {**tokenizer.special_tokens_map, **self.template_kwargs}

    def render(self, messages: list[dict], add_generation_prompt: bool = False) -> str:
        if self._plain is not None:
            return self._plain(
                messages=messages, add_generation_prompt=add_generation_prompt, **self._variables
            )
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
        )

    def encode(self, messages: list[dict], rule: TurnRule) -> tuple[list[int], list[int]]:
        """Token ids and labels (IGNORE_INDEX where no loss) for one conversation."""
        [(ids, labels)] = self.encode_many([messages], rule)
        return ids, labels

    def encode_many(
        self, conversations: list[list[dict]], rule: TurnRule
    ) -> list[tuple[list[int], list[int]]]:
        """`encode` for many conversations: their texts are tokenized in one batch."""
        texts = [self.render(messages) for messages in conversations]
        out = []
        for messages, text, (ids, first_at) in zip(
            conversations, texts, self._tokenize(texts), strict=True
        ):
            if rule.train_on_inputs:
                out.append((ids, list(ids)))
                continue
            labels = [IGNORE_INDEX] * len(ids)
            # A span trains the tokens that start inside it: one slice of the ids.
            for a, b in self._trained_spans(messages, text, rule):
                lo, hi = first_at(a), first_at(b)
                labels[lo:hi] = ids[lo:hi]
            out.append((ids, labels))
        return out

    def _tokenize(self, texts: list[str]) -> list[tuple[list[int], Callable[[int], int]]]:
        """Each text's ids and a function giving the index of its first token that starts
        at or after a character position. A fast tokenizer answers from its Rust
        encoding (one batch call, no per-token offsets in Python); a slow one from its
        offsets."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            out: list[tuple[list[int], Callable[[int], int]]] = []
            for text in texts:
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                starts = [a for a, _ in enc["offset_mapping"]]
                out.append((list(enc["input_ids"]), partial(bisect.bisect_left, starts)))
            return out
        return [
            (enc.ids, partial(_first_token_at, enc, len(text)))
            for enc, text in zip(
                backend.encode_batch(texts, add_special_tokens=False), texts, strict=True
            )
        ]

    def _trained_spans(
        self, messages: list[dict], text: str, rule: TurnRule
    ) -> list[tuple[int, int]]:
        spans: list[tuple[int, int]] = []
        eot_spans: list[tuple[int, int, bool]] = []  # (start, end, belongs to a trained turn)
        cursor = 0
        for i, msg in enumerate(messages):
            trained = msg["role"] in rule.roles_to_train
            start = self._turn_start(messages, i, text, cursor)
            body = _visible_content(msg)
            found = text.find(body, start) if body else start
            if found < 0:
                raise RowError(
                    f"messages[{i}]: the chat template does not render this turn's "
                    "text verbatim, so its tokens cannot be found; use chat_template: "
                    "chatml or qwen3, or a template that keeps message text"
                )
            eot_at, eot = self._next_eot(text, found + len(body))
            end = eot_at if eot_at >= 0 else len(text)
            if trained:
                spans.append((start, end))
            if eot_at >= 0:
                eot_spans.append((eot_at, eot_at + len(eot), trained))
                cursor = eot_at + len(eot)
            else:
                cursor = end
        spans += self._eot_choice(eot_spans, rule.train_on_eos)
        return spans

    def _turn_start(self, messages: list[dict], i: int, text: str, cursor: int) -> int:
        """Where turn i's trainable text starts: after the generation prompt for assistants."""
        if messages[i]["role"] != "assistant" or i == 0:
            body = _visible_content(messages[i])
            found = text.find(body, cursor) if body else -1
            return found if found >= 0 else cursor
        prompt = self.render(messages[:i], add_generation_prompt=True)
        if text.startswith(prompt) and len(prompt) >= cursor:
            return len(prompt)
        body = _visible_content(messages[i])
        found = text.find(body, cursor) if body else -1
        return found if found >= 0 else cursor

    def _next_eot(self, text: str, pos: int) -> tuple[int, str]:
        hits = [(text.find(tok, pos), tok) for tok in self.eot_tokens]
        hits = [(at, tok) for at, tok in hits if at >= 0]
        return min(hits) if hits else (-1, "")

    @staticmethod
    def _eot_choice(eots: list[tuple[int, int, bool]], mode: str) -> list[tuple[int, int]]:
        if mode == "all":
            return [(a, b) for a, b, _ in eots]
        if mode == "turn":
            return [(a, b) for a, b, trained in eots if trained]
        if mode == "last":
            return [(a, b) for a, b, _ in eots[-1:]]
        return []


# The Alpaca prompt, as axolotl's `type: alpaca` writes it.
ALPACA_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that "
    "provides further context. Write a response that appropriately completes "
    "the request.\n\n### Instruction:\n{instruction}\n\n### Input:\n{input}"
    "\n\n### Response:\n"
)
ALPACA = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
)


def encode_alpaca(tokenizer, row: dict, train_on_inputs: bool) -> tuple[list[int], list[int]]:
    """Ids and labels of an Alpaca row: the prompt, then the output and EOS (trained)."""
    for key in ("instruction", "output"):
        if not isinstance(row.get(key), str):
            raise RowError(
                f"{key} is {'missing' if key not in row else type(row[key]).__name__}"
                "; alpaca rows need instruction and output text (input optional)"
            )
    extra = row.get("input") or ""
    if not isinstance(extra, str):
        raise RowError(f"input is {type(extra).__name__}; expected text")
    prompt = (ALPACA_WITH_INPUT if extra else ALPACA).format(
        instruction=row["instruction"], input=extra
    )
    head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    tail = tokenizer(row["output"], add_special_tokens=False)["input_ids"] + [
        tokenizer.eos_token_id
    ]
    labels = (list(head) if train_on_inputs else [IGNORE_INDEX] * len(head)) + tail
    return head + tail, labels


def _first_token_at(enc, length: int, pos: int) -> int:
    """The index of the first token of a tokenizers Encoding that starts at or after
    character `pos` (token starts never decrease)."""
    if pos >= length:
        return len(enc.ids)
    token = enc.char_to_token(pos)
    if token is None:  # a character no token covers (a normalizer dropped it): search
        return bisect.bisect_left([a for a, _ in enc.offsets], pos)
    return token if enc.token_to_chars(token)[0] >= pos else token + 1


def _visible_content(msg: dict) -> str:
    """The part of a message a template renders verbatim (Qwen3 moves `<think>` text)."""
    content = msg["content"]
    if msg["role"] == "assistant" and "</think>" in content:
        content = content.split("</think>")[-1].lstrip("\n")
    return content


def build_encoder(cfg: Config) -> tuple[Any, ChatEncoder]:
    """The tokenizer (with the config's chat template set on it) and its ChatEncoder."""
    from toolkit.trainer.model import load_tokenizer

    tokenizer = load_tokenizer(cfg)
    template = resolve_template(cfg, tokenizer)
    tokenizer.chat_template = template
    encoder = ChatEncoder(
        tokenizer, template, resolve_eot_tokens(cfg, tokenizer), cfg.chat_template_kwargs
    )
    return tokenizer, encoder
