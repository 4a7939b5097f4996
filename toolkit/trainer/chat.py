"""Chat rows → token ids and labels, with loss only where the config says.

A conversation (its messages and the row's tool schemas) is rendered once with
the chat template. Each turn that trains is then located in the rendered text
as a character span, the way axolotl does: render the conversation again with
that turn's content replaced by a placeholder, and what differs is the turn
(its reasoning, text and tool calls). Two placeholders with different first and
last characters are used, so a turn that starts or ends like one of them is
still found whole. Then:

- an assistant turn's span starts where the template's generation prompt ends
  (when the conversation before it, rendered with `add_generation_prompt=True`,
  is a prefix of the whole rendering), so what the template puts at the start of
  the reply — Qwen3's `<think>` block, empty for a reply without reasoning — is
  trained as the model has to produce it at inference;
- a turn's end token (`<|im_end|>` for Qwen3 and ChatML) is the first end token
  after its span, if it comes before the next turn; tool results that Qwen3
  renders together in one user block share the last one's end token;
- a turn with nothing rendered (empty content, no tool call, no reasoning) trains
  nothing, its end token included, and is counted in the data report.

Tokens are labelled by their character offsets, so the labels follow the real
tokenization, merges included.
"""

from __future__ import annotations

import bisect
import itertools
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from toolkit.config import Config, DatasetConfig
from toolkit.errors import DataError
from toolkit.templates import BUNDLED, plain_renderer, template_text

IGNORE_INDEX = -100
# Bumped whenever the labelling rules change, so prepared data is tokenized again.
LABEL_RULES = 2
ROLES = ("system", "user", "assistant", "tool")
# ShareGPT's role names, read as axolotl reads them when a dataset sets no `roles:`.
DEFAULT_ROLE_ALIASES = {"human": "user", "gpt": "assistant"}
# Message properties a template may read besides role and content (OpenAI's tool-call
# form and Qwen3's reasoning); they are kept as the row gives them.
KEPT_PROPERTIES = ("tool_calls", "name", "tool_call_id")
FALLBACK = "tokenizer_default_fallback_"


class RowError(ValueError):
    """A row that cannot be used; the message names the field."""


def template_choice(cfg: Config, ds: DatasetConfig | None = None) -> tuple[str, str | None]:
    """The template name and jinja text a dataset uses: its own, else the config's."""
    if ds is not None and ds.chat_template:
        return ds.chat_template, ds.chat_template_jinja
    return cfg.chat_template or "tokenizer_default", cfg.chat_template_jinja


def resolve_template(cfg: Config, tokenizer, ds: DatasetConfig | None = None) -> str:
    """The Jinja chat template a dataset (or, without one, the config) asks for."""
    name, jinja = template_choice(cfg, ds)
    if name in BUNDLED:
        return template_text(name)
    if name == "jinja":
        text = jinja or ""
        path = Path(text)
        return path.read_text() if "\n" not in text and path.is_file() else text
    own = getattr(tokenizer, "chat_template", None)
    if own:
        return own
    if name.startswith(FALLBACK):
        return template_text(name.removeprefix(FALLBACK))
    raise DataError(
        f"chat_template: 'tokenizer_default' but the tokenizer of "
        f"{cfg.tokenizer_config or cfg.base_model} has no chat template; set "
        "chat_template: qwen3 (or qwen_25, qwen3_5, chatml, jinja with chat_template_jinja, "
        "or tokenizer_default_fallback_qwen3)"
    )


def resolve_eot_tokens(cfg: Config, tokenizer) -> list[str]:
    """End-of-turn markers: the config's, else `<|im_end|>` when the vocabulary has it, else EOS."""
    if cfg.eot_tokens:
        return list(cfg.eot_tokens)
    if "<|im_end|>" in tokenizer.get_vocab():
        return ["<|im_end|>"]
    return [tokenizer.eos_token]


def role_aliases(ds: DatasetConfig) -> dict[str, str]:
    if ds.roles is None:
        return dict(DEFAULT_ROLE_ALIASES)
    return {alias: role for role, names in ds.roles.items() for alias in names}


@dataclass(frozen=True)
class TurnRule:
    roles_to_train: frozenset[str]
    train_on_eos: str
    train_on_eot: str
    train_on_inputs: bool

    @classmethod
    def from_config(cls, cfg: Config, ds: DatasetConfig) -> TurnRule:
        aliases = role_aliases(ds)
        roles = frozenset(aliases.get(r, r) for r in ds.roles_to_train)
        eot = ds.train_on_eot or ds.train_on_eos
        return cls(roles, ds.train_on_eos, eot, cfg.train_on_inputs)

    def trains(self, role: str, override: bool | None) -> bool:
        """Whether a turn carries loss: the row's own flag (message_field_training), else
        train_on_inputs (every turn) or its role."""
        if override is not None:
            return override
        return self.train_on_inputs or role in self.roles_to_train

    @property
    def every_end(self) -> bool:
        return "all" in (self.train_on_eos, self.train_on_eot)


@dataclass(frozen=True)
class Conversation:
    """One row to train on: its messages, the tool schemas the template is given, and
    each message's own training flag (None: decided by role)."""

    messages: list[dict]
    tools: list[dict] | None = None
    training: tuple[bool | None, ...] = field(default=())

    def trains(self, i: int, rule: TurnRule) -> bool:
        override = self.training[i] if self.training else None
        return rule.trains(self.messages[i]["role"], override)


class Encoded(NamedTuple):
    ids: list[int]
    labels: list[int]
    # Turns that should have trained but render nothing (empty content, no tool call).
    empty_turns: int = 0


class TooLong(NamedTuple):
    """A conversation whose text certainly has more tokens than asked for: not tokenized
    (a row of megabytes would take gigabytes as tokens), only its empty turns counted."""

    empty_turns: int = 0


def normalize_conversation(
    row: dict, ds: DatasetConfig, default_system: str | None = None
) -> Conversation:
    """A dataset row as a Conversation, or RowError naming the field."""
    name = ds.field_messages
    if name not in row:
        raise RowError(f"has no {name!r} field (field_messages); its fields are {sorted(row)[:8]}")
    turns = _json_field(row[name], name)
    messages, training = _turns(turns, ds, name)
    system = row.get(ds.field_system)
    if messages[0]["role"] != "system" and isinstance(system, str):
        messages.insert(0, {"role": "system", "content": system})
        training.insert(0, None)
    if ds.drop_system_message and messages[0]["role"] == "system":
        del messages[0], training[0]
    if default_system is not None and (not messages or messages[0]["role"] != "system"):
        messages.insert(0, {"role": "system", "content": default_system})
        training.insert(0, None)
    if not messages:
        raise RowError(f"{name} holds only a system message, and drop_system_message is set")
    tools = _tools(row.get(ds.field_tools), ds.field_tools)
    flags = tuple(training) if any(t is not None for t in training) else ()
    return Conversation(messages, tools, flags)


def normalize_turns(turns, ds: DatasetConfig, field: str) -> list[dict]:
    """A list of messages, mapped through message_property_mappings and roles."""
    return _turns(turns, ds, field)[0]


def _turns(turns, ds: DatasetConfig, field: str) -> tuple[list[dict], list[bool | None]]:
    if not isinstance(turns, list) or not turns:
        raise RowError(
            f"{field} is {'empty' if turns == [] else type(turns).__name__}; "
            "expected a non-empty list of messages"
        )
    aliases = role_aliases(ds)
    messages, training = [], []
    for i, turn in enumerate(turns):
        where = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise RowError(f"{where} is {type(turn).__name__}; expected a mapping")
        messages.append(_message(turn, ds, aliases, where))
        flag = turn.get(ds.message_field_training) if ds.message_field_training else None
        if flag is not None and not isinstance(flag, bool):
            raise RowError(
                f"{where}.{ds.message_field_training} is {flag!r}; expected true or false "
                "(message_field_training)"
            )
        training.append(flag)
    return messages, training


def _message(turn: dict, ds: DatasetConfig, aliases: dict[str, str], where: str) -> dict:
    mapping = ds.message_property_mappings
    role_key, content_key = mapping.role, mapping.content
    if role_key not in turn:
        raise RowError(
            f"{where} has no {role_key!r} (message_property_mappings); it has {sorted(turn)}"
        )
    role = turn[role_key]
    role = aliases.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise RowError(
            f"{where}.{role_key} is {turn[role_key]!r}; accepted: system, "
            "user, assistant, tool; map other names with the dataset's `roles:` "
            "(e.g. roles: {assistant: [gpt]})"
        )
    if content_key not in turn and not turn.get("tool_calls"):
        raise RowError(
            f"{where} has no {content_key!r} (message_property_mappings); it has {sorted(turn)}"
        )
    message: dict[str, Any] = {
        "role": role,
        "content": _text(turn.get(content_key), f"{where}.{content_key}"),
    }
    for key in KEPT_PROPERTIES:
        if turn.get(key) is not None:
            message[key] = turn[key]
    if "tool_calls" in message:
        message["tool_calls"] = _tool_calls(message["tool_calls"], f"{where}.tool_calls")
    for prop, source in {
        "reasoning_content": ds.field_thinking,
        **mapping.extras(),
    }.items():
        if turn.get(source) is not None:
            message[prop] = _text(turn[source], f"{where}.{source}")
    if ds.split_thinking and role == "assistant" and "reasoning_content" not in message:
        content = message["content"]
        if "<think>" in content and "</think>" in content:
            thought, _, answer = content.partition("</think>")
            message["reasoning_content"] = thought.split("<think>", 1)[1].strip()
            message["content"] = answer.lstrip()
    return message


def _text(value, where: str) -> str:
    """Message text: a string, null (no text: a tool-call turn), or a list of text parts."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(p, dict | str) for p in value):
        parts = []
        for part in value:
            if isinstance(part, str):
                parts.append(part)
                continue
            if part.get("train") is not None or part.get("weight") is not None:
                raise RowError(
                    f"{where}: per-part training flags are not supported; mark whole "
                    "turns with message_field_training instead"
                )
            if part.get("type") not in (None, "text"):
                raise RowError(
                    f"{where} has a {part.get('type')!r} part; only text is trained "
                    "(Qwen3 and Qwen3-MoE are text models)"
                )
            parts.append(part.get("text") or part.get("content") or part.get("value") or "")
        return "".join(parts)
    raise RowError(f"{where} is {type(value).__name__}; expected text")


def _json_field(value, where: str) -> Any:
    """A field that may hold JSON text (datasets often store lists as strings)."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise RowError(
                f"{where} is text that is not JSON ({exc.msg}); give the list (or its JSON)"
            ) from None
    return value


def _tool_calls(calls, where: str) -> list[dict]:
    """OpenAI's tool calls, each {function: {name, arguments}} or {name, arguments};
    arguments given as JSON text are parsed, as axolotl does, so the template writes
    them as JSON."""
    calls = _json_field(calls, where)
    if not isinstance(calls, list):
        raise RowError(f"{where} is {type(calls).__name__}; expected a list of tool calls")
    out = []
    for j, call in enumerate(calls):
        if not isinstance(call, dict):
            raise RowError(f"{where}[{j}] is {type(call).__name__}; expected a mapping")
        call = dict(call)
        inner = dict(call["function"]) if isinstance(call.get("function"), dict) else call
        if not isinstance(inner.get("name"), str):
            raise RowError(
                f"{where}[{j}] has no function name; expected {{function: {{name, arguments}}}}"
            )
        arguments = inner.get("arguments")
        if isinstance(arguments, str):
            try:
                inner["arguments"] = json.loads(arguments)
            except json.JSONDecodeError as exc:
                raise RowError(
                    f"{where}[{j}].arguments is not JSON ({exc.msg}): {arguments[:40]!r}"
                ) from None
        if inner is not call:
            call["function"] = inner
        out.append(call)
    return out


def _tools(value, where: str) -> list[dict] | None:
    """The row's tool schemas (field_tools): a list, or JSON text of one."""
    if value is None:
        return None
    tools = _json_field(value, where)
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise RowError(f"{where} is {type(tools).__name__}; expected a list of tool schemas")
    out = []
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("parameters"), str):
            function = {**function, "parameters": _json_field(function["parameters"], where)}
            tool = {**tool, "function": function}
        out.append(tool)
    return out or None


# The placeholder a turn's content is replaced by, of private-use characters no text
# holds: what differs from the real rendering is the turn.
SENTINEL = "\ue000toolkit-turn\ue001"
# An end token belongs to a turn when it follows the turn within this many tokens.
END_TOKEN_REACH = 3


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
        # toolkit's own templates end every prompt with the same generation prompt: a
        # reply whose rendering follows it directly starts where the difference does.
        self._generation_prompt = self._constant_generation_prompt()
        # End tokens are matched by id: those of eot_tokens that are one token each.
        single = [tokenizer.encode(t, add_special_tokens=False) for t in eot_tokens]
        self._eot_ids = {ids[0] for ids in single if len(ids) == 1}
        self._eos_id = tokenizer.eos_token_id
        self._reach = token_reach(tokenizer)

    def render(
        self,
        messages: list[dict],
        add_generation_prompt: bool = False,
        tools: list[dict] | None = None,
    ) -> str:
        extra = {"tools": tools} if tools else {}
        if self._plain is not None:
            return self._plain(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                **self._variables,
                **extra,
            )
        return self.tokenizer.apply_chat_template(
            messages,
            chat_template=self.template,
            tokenize=False,
            add_generation_prompt=add_generation_prompt,
            **self.template_kwargs,
            **extra,
        )

    def encode(
        self, conversation: Conversation | list[dict], rule: TurnRule, longest: int | None = None
    ) -> Encoded | TooLong:
        """Token ids and labels (IGNORE_INDEX where no loss) for one conversation; TooLong
        when its text certainly has more than `longest` tokens."""
        [encoded] = self.encode_many([conversation], rule, longest)
        return encoded

    def encode_many(
        self,
        conversations: Sequence[Conversation | list[dict]],
        rule: TurnRule,
        longest: int | None = None,
    ) -> list[Encoded | TooLong]:
        """`encode` for many conversations: their texts are tokenized in one batch."""
        convs = [c if isinstance(c, Conversation) else Conversation(c) for c in conversations]
        texts = [self.render(c.messages, tools=c.tools) for c in convs]
        # No token stands for more than `reach` characters: a longer text has more tokens.
        limit = None if longest is None or self._reach is None else longest * self._reach
        short = [t for t in texts if limit is None or len(t) <= limit]
        tokenized = iter(self._tokenize(short))
        out: list[Encoded | TooLong] = []
        for conv, text in zip(convs, texts, strict=True):
            if limit is not None and len(text) > limit:
                out.append(TooLong(self._empty_turns(conv, text, rule)))
            else:
                ids, locate = next(tokenized)
                out.append(self._label(conv, text, ids, locate, rule))
        return out

    def _empty_turns(self, conv: Conversation, text: str, rule: TurnRule) -> int:
        """The turns that train but render nothing, as _label counts them."""
        return sum(
            conv.trains(i, rule) and self._turn_span(conv, i, text) is None
            for i in range(len(conv.messages))
        )

    def _label(
        self, conv: Conversation, text: str, ids: list[int], locate, rule: TurnRule
    ) -> Encoded:
        labels = [IGNORE_INDEX] * len(ids)
        empty = 0
        last_end = -1
        for i, message in enumerate(conv.messages):
            trains = conv.trains(i, rule)
            if not trains and not rule.every_end:
                continue
            span = self._turn_span(conv, i, text)
            if span is None:
                empty += trains
                continue
            start, end = span
            if trains and message["role"] == "assistant":
                start = self._reply_start(conv, i, text, start)
            lo, hi = locate(start, end)
            if trains:
                labels[lo:hi] = ids[lo:hi]
            at = self._end_token(ids, hi)
            if at < 0:
                continue
            last_end = at
            if self._trains_end(ids[at], trains, rule):
                labels[at] = ids[at]
        if last_end >= 0 and self._trains_end(ids[last_end], True, rule, last=True):
            labels[last_end] = ids[last_end]
        return Encoded(ids, labels, empty)

    def _turn_span(self, conv: Conversation, i: int, text: str) -> tuple[int, int] | None:
        """Turn i's characters in the rendering: what changes when its content is
        replaced by a placeholder (None when nothing of it is rendered). Should the
        turn's text begin or end like the placeholder, the common prefix or suffix
        swallows those characters: where the placeholder sits in its rendering says
        how many (axolotl renders a second placeholder instead)."""
        dummy = {"role": conv.messages[i]["role"], "content": SENTINEL}
        other = self.render([*conv.messages[:i], dummy, *conv.messages[i + 1 :]], tools=conv.tools)
        if other == text:  # the turn's text is the placeholder itself
            at = text.find(SENTINEL)
            return (at, at + len(SENTINEL)) if at >= 0 else None
        start, end = _diff_span(text, other)
        at = other.find(SENTINEL, max(0, start - len(SENTINEL) + 1))
        if 0 <= at <= start:
            start = at
        other_end = len(other) - (len(text) - end)  # where the difference ends in `other`
        if at >= 0 and at + len(SENTINEL) > other_end >= at:
            end = len(text) - (len(other) - at - len(SENTINEL))
        return (start, end) if end > start else None

    def _constant_generation_prompt(self) -> str | None:
        """What add_generation_prompt appends, for toolkit's own templates (whose
        generation prompt depends on no message); None for any other template."""
        if self._plain is None:
            return None
        turn = [{"role": "user", "content": "x"}]
        with_prompt = self.render(turn, add_generation_prompt=True)
        without = self.render(turn)
        return with_prompt[len(without) :] if with_prompt.startswith(without) else None

    def _reply_start(self, conv: Conversation, i: int, text: str, start: int) -> int:
        """Where an assistant reply starts: where the generation prompt for it ends, when
        the conversation before it, so prompted, is a prefix of the rendering. (With
        toolkit's own templates, a reply right after the generation prompt starts where
        its difference does, without rendering that prompt.)"""
        if i == 0:
            return start
        prompt_end = self._generation_prompt
        if prompt_end and text.endswith(prompt_end, 0, start):
            return start
        prompt = self.render(conv.messages[:i], add_generation_prompt=True, tools=conv.tools)
        if text.startswith(prompt) and len(prompt) <= start:
            return len(prompt)
        return start

    def _end_token(self, ids: list[int], after: int) -> int:
        """The index of the end token that closes a turn ending at token `after`, or -1."""
        for at in range(after, min(len(ids), after + END_TOKEN_REACH + 1)):
            if ids[at] in self._eot_ids or ids[at] == self._eos_id:
                return at
        return -1

    def _trains_end(self, token: int, trains: bool, rule: TurnRule, last: bool = False) -> bool:
        """Whether an end token carries loss: train_on_eot governs eot_tokens and
        train_on_eos the EOS token (for Qwen3 both are <|im_end|>: either suffices)."""
        modes = []
        if token in self._eot_ids:
            modes.append(rule.train_on_eot)
        if token == self._eos_id:
            modes.append(rule.train_on_eos)
        if last:
            return "last" in modes
        return "all" in modes or (trains and "turn" in modes)

    def _tokenize(
        self, texts: list[str]
    ) -> list[tuple[list[int], Callable[[int, int], tuple[int, int]]]]:
        """Each text's ids and a function giving the tokens of a character span: from
        the token that holds its first character to the first token starting at or
        after its end (axolotl's rule). A fast tokenizer answers from its Rust encoding
        (one batch call, no per-token offsets in Python); a slow one from its offsets."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is None:
            out = []
            for text in texts:
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                starts = [a for a, _ in enc["offset_mapping"]]
                ends = [b for _, b in enc["offset_mapping"]]
                out.append((list(enc["input_ids"]), _offsets_locator(starts, ends)))
            return out
        return [
            (enc.ids, _encoding_locator(enc, len(text)))
            for enc, text in zip(
                backend.encode_batch(texts, add_special_tokens=False), texts, strict=True
            )
        ]


# Normalizers that never shrink a text to less than a quarter of its characters: Unicode
# composition joins at most four characters (a canonical decomposition's longest) into one.
BOUNDED_NORMALIZERS = {"NFC": 4, "NFD": 1, "NFKC": 4, "NFKD": 1}


def token_reach(tokenizer) -> int | None:
    """The most characters of a text that one token can stand for, when that can be
    known: a fast byte-level BPE tokenizer (Qwen's, GPT-2's) whose pre-tokenizer drops
    no character and whose normalizer shrinks text by a bounded factor. Each of its
    tokens covers at most as many bytes (so characters) of the normalized text as its
    vocabulary entry has characters, or an added token's text; times the factor. None
    for any other tokenizer: every text is then tokenized."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or type(backend.model).__name__ != "BPE":
        return None
    normalizer = backend.normalizer
    shrink = 1 if normalizer is None else BOUNDED_NORMALIZERS.get(type(normalizer).__name__)
    pre = json.loads(backend.pre_tokenizer.__getstate__()) if backend.pre_tokenizer else None
    steps = (pre or {}).get("pretokenizers", [pre])
    keeps_all = all(
        step
        and (step["type"] == "ByteLevel" or step["type"] == "Split")
        and step.get("behavior", "Isolated") != "Removed"
        and not step.get("invert")
        for step in steps
    )
    if shrink is None or not keeps_all or steps[-1]["type"] != "ByteLevel":
        return None
    added = [t.content for t in tokenizer.added_tokens_decoder.values()]
    longest = max(map(len, itertools.chain(backend.get_vocab(), added)))
    return shrink * longest


def _offsets_locator(starts: list[int], ends: list[int]) -> Callable[[int, int], tuple[int, int]]:
    def locate(a: int, b: int) -> tuple[int, int]:
        return bisect.bisect_right(ends, a), bisect.bisect_left(starts, b)

    return locate


def _encoding_locator(enc, length: int) -> Callable[[int, int], tuple[int, int]]:
    def first_at(pos: int) -> int:
        """The first token that starts at or after character `pos`."""
        if pos >= length:
            return len(enc.ids)
        token = enc.char_to_token(pos)
        if token is None:  # a character no token covers (a normalizer dropped it)
            return bisect.bisect_left([a for a, _ in enc.offsets], pos)
        return token if enc.token_to_chars(token)[0] >= pos else token + 1

    def locate(a: int, b: int) -> tuple[int, int]:
        token = enc.char_to_token(a) if a < length else None
        lo = token if token is not None else first_at(a)
        return lo, first_at(b)

    return locate


def _diff_span(full: str, dummy: str) -> tuple[int, int]:
    """The span of `full` that differs from `dummy`: common prefix and suffix removed,
    the suffix never reaching into the prefix."""
    limit = min(len(full), len(dummy))
    start = _common_prefix(full, dummy, limit)
    tail = _common_suffix(full, dummy, limit - start)
    return start, len(full) - tail


def _common_prefix(a: str, b: str, limit: int) -> int:
    """Length of the common prefix of a and b, at most limit."""
    return _longest(limit, lambda n: a.startswith(b[:n]))


def _common_suffix(a: str, b: str, limit: int) -> int:
    """Length of the common suffix of a and b, at most limit (neither text is reversed,
    which would copy a huge one whole)."""
    return _longest(limit, lambda n: a.endswith(b[len(b) - n :]))


def _longest(limit: int, holds: Callable[[int], bool]) -> int:
    """The largest n <= limit for which `holds` (true up to some n, false after): a binary
    search, each test one comparison in C of at most n characters."""
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if holds(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


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


def build_encoder(
    cfg: Config, ds: DatasetConfig | None = None, tokenizer=None
) -> tuple[Any, ChatEncoder]:
    """The tokenizer (with the chat template set on it) and the ChatEncoder for one
    dataset (its own chat_template, else the config's)."""
    if tokenizer is None:
        from toolkit.trainer.model import load_tokenizer

        tokenizer = load_tokenizer(cfg)
    template = resolve_template(cfg, tokenizer, ds)
    tokenizer.chat_template = resolve_template(cfg, tokenizer)
    encoder = ChatEncoder(
        tokenizer, template, resolve_eot_tokens(cfg, tokenizer), cfg.chat_template_kwargs
    )
    return tokenizer, encoder
