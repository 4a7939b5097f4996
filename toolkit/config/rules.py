"""Rules that span fields, and the files a config points at. Each returns every problem
it finds; none changes a value."""

from __future__ import annotations

import math
import os
import stat
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from toolkit.config.axolotl import OFF_VALUES
from toolkit.config.problems import show
from toolkit.config.schema import (
    DATA_SUFFIXES,
    DATASET_TYPES,
    DEEPSPEED_BUNDLED,
    KTO_TYPES,
    PAIR_TYPES,
    PRM_TYPES,
    RM_TYPES,
    SFT_TYPES,
    Config,
    is_local_ref,
    recipe_of,
)
from toolkit.errors import UsageError
from toolkit.safe_io import NotRegular, kind_of, open_file, read_json

ACCEPTED_TYPES = {"sft": SFT_TYPES, "reward": RM_TYPES, "prm": PRM_TYPES}


def cross_field_problems(raw: dict) -> list[str]:
    """Rules that span fields, one small function per family. They read the raw values
    and only judge well-typed ones."""
    return [
        p
        for rules in (
            _recipe_rules,
            _kernel_rules,
            _adapter_rules,
            _batch_rules,
            _exclusive_rules,
            _template_rules,
            _turn_rules,
            _plugin_rules,
        )
        for p in rules(raw)
    ]


def _recipe_rules(raw: dict) -> list[str]:
    """What is trained (SFT, preference, reward, PRM) against the data and keys it needs."""
    out: list[str] = []
    modes = [k for k in ("rl", "reward_model", "process_reward_model") if raw.get(k)]
    if len(modes) > 1:
        out.append(f"{' and '.join(modes)} are all set; a run trains one thing: keep one")
    recipe = recipe_of(raw)
    accepted: tuple[str, ...]
    if recipe == "preference":
        accepted = KTO_TYPES if raw.get("rl") == "kto" else PAIR_TYPES
    else:
        accepted = ACCEPTED_TYPES[recipe]
    datasets = raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        kind = ds.get("type", "chat_template") if isinstance(ds, dict) else None
        if kind in DATASET_TYPES and kind not in accepted:
            what = (
                f"rl: {raw['rl']}"
                if raw.get("rl")
                else recipe.upper()
                if recipe != "sft"
                else "SFT (no rl, reward_model or process_reward_model)"
            )
            out.append(
                f"datasets[{i}].type: {kind!r} cannot feed {what}; accepted: {', '.join(accepted)}"
            )
    if raw.get("rl") and raw.get("sample_packing"):
        out.append(
            f"sample_packing with rl: {raw['rl']}: packing would mix the chosen and "
            "rejected sequences; remove sample_packing"
        )
    if raw.get("sample_packing") is True and recipe in ("reward", "prm"):
        out.append(
            f"sample_packing with {recipe} training: its heads score whole sequences; "
            "remove sample_packing"
        )
    if raw.get("early_stopping_patience") and not raw.get("val_set_size"):
        out.append("early_stopping_patience needs held-out rows to watch; set val_set_size")
    if raw.get("dpo_loss_type") and raw.get("rl") not in ("dpo", "ipo"):
        out.append(f"dpo_loss_type is set but rl is {show(raw.get('rl'))}; it needs rl: dpo")
    if raw.get("reward_model") and raw.get("num_labels") not in (None, 1):
        out.append(
            f"num_labels: {raw['num_labels']} with reward_model: a reward model has "
            "one output; remove num_labels"
        )
    return out


def _kernel_rules(raw: dict) -> list[str]:
    """Loss replacements and fused LoRA kernels."""
    out: list[str] = []
    losses = [
        k
        for k in ("cut_cross_entropy", "liger_fused_linear_cross_entropy", "liger_cross_entropy")
        if raw.get(k) is True
    ]
    if len(losses) > 1:
        out.append(
            f"{' and '.join(losses)} are all set; each replaces the cross-entropy loss, so keep one"
        )
    kernels = [
        k for k in ("lora_mlp_kernel", "lora_qkv_kernel", "lora_o_kernel") if raw.get(k) is True
    ]
    if kernels and raw.get("adapter") not in ("lora", "qlora"):
        out.append(
            f"{', '.join(kernels)} need adapter: lora or qlora (got adapter: "
            f"{show(raw.get('adapter'))}); set them false for a full fine-tune"
        )
    elif kernels and raw.get("lora_dropout") not in (None, 0, 0.0):
        out.append(
            f"{', '.join(kernels)} need lora_dropout: 0 (got "
            f"{show(raw.get('lora_dropout'))}); the fused path has no dropout"
        )
    return out


def _adapter_rules(raw: dict) -> list[str]:
    """Adapters and quantized bases."""
    out: list[str] = []
    adapter = raw.get("adapter")
    if adapter == "qlora" and raw.get("load_in_4bit") is not True:
        out.append(
            "adapter: 'qlora' needs load_in_4bit: true; add `load_in_4bit: true` "
            "or use adapter: lora"
        )
    if raw.get("load_in_4bit") is True and adapter != "qlora":
        out.append(
            f"load_in_4bit: true needs adapter: qlora (got adapter: {show(adapter)}); "
            "a 4-bit base can only be trained through an adapter"
        )
    if raw.get("load_in_4bit") is True and raw.get("load_in_8bit") is True:
        out.append("load_in_4bit and load_in_8bit are both true; keep one")
    lora = adapter in ("lora", "qlora")
    if raw.get("unfrozen_parameters") and lora:
        out.append(
            "unfrozen_parameters chooses what a full fine-tune trains; with adapter: "
            f"{adapter} use lora_modules_to_save for whole modules, or set adapter: none"
        )
    for key in ("loraplus_lr_ratio", "loraplus_lr_embedding", "peft_use_dora", "peft_use_rslora"):
        if raw.get(key) not in OFF_VALUES and not lora:
            out.append(f"{key} is a LoRA setting but adapter is {show(adapter)}; set adapter: lora")
    if raw.get("loraplus_lr_embedding") is not None and raw.get("loraplus_lr_ratio") is None:
        out.append("loraplus_lr_embedding needs loraplus_lr_ratio (LoRA+'s ratio); add it")
    quantized = [k for k in ("load_in_4bit", "load_in_8bit") if raw.get(k) is True]
    if raw.get("qat") not in OFF_VALUES and quantized:
        out.append(
            f"qat fakes the quantization of full-precision layers, but {quantized[0]}: true "
            "loads them already quantized; drop one of the two"
        )
    return out


def _batch_rules(raw: dict) -> list[str]:
    """micro_batch_size, gradient_accumulation_steps and batch_size: two of three."""
    out: list[str] = []
    given = [
        k for k in ("micro_batch_size", "gradient_accumulation_steps", "batch_size") if k in raw
    ]
    if len(given) == 3:
        out.append(
            "micro_batch_size, gradient_accumulation_steps and batch_size are all set; "
            "give two of them (batch_size = micro_batch_size × "
            "gradient_accumulation_steps)"
        )
    elif (
        "batch_size" in raw
        and isinstance(raw["batch_size"], int)
        and isinstance(raw.get("micro_batch_size", 1), int)
        and raw.get("micro_batch_size", 1) > 0
        and raw["batch_size"] % raw.get("micro_batch_size", 1)
    ):
        out.append(
            f"batch_size {raw['batch_size']} is not a multiple of micro_batch_size "
            f"{raw.get('micro_batch_size', 1)}; change one of them"
        )
    micro = raw.get("micro_batch_size", 1)
    if raw.get("rl") == "kto" and isinstance(micro, int) and micro == 1:
        # TRL's KTO estimates its KL term from the other completions of a batch.
        out.append(
            "micro_batch_size: 1 with rl: kto; KTO estimates its KL term from the other "
            "rows of each batch, so it needs at least 2 rows per device: set "
            "micro_batch_size: 2 or more (gradient_accumulation_steps keeps the batch size)"
        )
    return out


def _exclusive_rules(raw: dict) -> list[str]:
    """Keys that exclude each other."""
    out: list[str] = []
    if raw.get("deepspeed") not in OFF_VALUES and any(
        raw.get(k) not in OFF_VALUES for k in ("fsdp_config", "fsdp_version")
    ):
        out.append("deepspeed and fsdp are both set; they exclude each other: keep one")
    if raw.get("warmup_steps") is not None and raw.get("warmup_ratio") is not None:
        out.append(
            f"warmup_steps ({show(raw['warmup_steps'])}) and warmup_ratio "
            f"({show(raw['warmup_ratio'])}) are both set; keep one"
        )
    for key in ("cosine_min_lr_ratio", "cosine_constant_lr_ratio"):
        if raw.get(key) is not None and raw.get("lr_scheduler", "cosine") not in (
            "cosine",
            "cosine_with_min_lr",
        ):
            out.append(
                f"{key} shapes the cosine schedule but lr_scheduler is "
                f"{show(raw.get('lr_scheduler'))}; set lr_scheduler: cosine"
            )
    if raw.get("load_best_model_at_end") is True and not raw.get("val_set_size"):
        out.append("load_best_model_at_end needs held-out rows to compare; set val_set_size")
    if raw.get("save_strategy") == "best" and not raw.get("val_set_size"):
        out.append("save_strategy: best saves on evaluation; set val_set_size")
    if raw.get("eval_steps") is not None and raw.get("evals_per_epoch") is not None:
        out.append("eval_steps and evals_per_epoch are both set; keep one")
    if raw.get("save_steps") is not None and raw.get("saves_per_epoch") is not None:
        out.append("save_steps and saves_per_epoch are both set; keep one")
    if raw.get("bf16") is True and raw.get("fp16") is True:
        out.append("bf16 and fp16 are both true; keep one (bf16: auto picks for you)")
    return out


def _template_rules(raw: dict) -> list[str]:
    """The chat template, and the held-out size."""
    out: list[str] = []
    template = raw.get("chat_template", "tokenizer_default")
    if template == "jinja" and not raw.get("chat_template_jinja"):
        out.append(
            "chat_template: 'jinja' needs chat_template_jinja (the template text); "
            "add it or pick qwen3 / chatml / tokenizer_default"
        )
    if raw.get("chat_template_jinja") and template != "jinja":
        out.append(
            f"chat_template_jinja is set but chat_template is {show(template)}; "
            "set chat_template: jinja to use it"
        )
    val = raw.get("val_set_size")
    if isinstance(val, (int, float)) and math.isfinite(val) and val >= 1 and float(val) != int(val):
        out.append(f"val_set_size: got {val}; use a fraction below 1 or a whole number of rows")
    return out


ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {"human": "user", "gpt": "assistant"}


def _turn_rules(raw: dict) -> list[str]:
    """Each dataset's roles_to_train names a role (or a source name its `roles` maps),
    and its own chat_template is complete."""
    out: list[str] = []
    datasets = raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        if not isinstance(ds, dict):
            continue
        roles = ds.get("roles")
        aliases = (
            {a: r for r, names in roles.items() if isinstance(names, list) for a in names}
            if isinstance(roles, dict)
            else SHAREGPT_ROLES
        )
        wanted = ds.get("roles_to_train")
        for role in wanted if isinstance(wanted, list) else []:
            if isinstance(role, str) and role not in ROLES and role not in aliases:
                out.append(
                    f"datasets[{i}].roles_to_train: {role!r} is not a role; accepted: "
                    f"{', '.join(ROLES)}, or a source name mapped by the dataset's roles "
                    f"(now: {', '.join(aliases) or 'none'})"
                )
        if ds.get("chat_template") == "jinja" and not ds.get("chat_template_jinja"):
            out.append(
                f"datasets[{i}].chat_template: 'jinja' needs the dataset's "
                "chat_template_jinja (the template text or file); add it"
            )
    return out


def _plugin_rules(raw: dict) -> list[str]:
    """`plugins:` lists axolotl's plugin classes (whose keys toolkit reads itself)."""
    from toolkit.config.inventory import inventory, is_plugin

    plugins = raw.get("plugins")
    return [
        f"plugins[{i}]: got {show(name)}; not one of axolotl's plugins "
        f"({', '.join(p.rsplit('.', 1)[-1] for p in inventory()['plugin_classes'])}); "
        "fix the class path or remove it"
        for i, name in enumerate(plugins if isinstance(plugins, list) else [])
        if isinstance(name, str) and not is_plugin(name)
    ]


PATH_KEYS = ("base_model", "tokenizer_config", "output_dir", "dataset_prepared_path", "deepspeed")
MUST_NAME_A_PATH = ("base_model", "output_dir", "path")


def _spelling_problems(raw: dict) -> list[str]:
    """Path values no file can answer to: a NUL byte, an empty path, a data_files
    pattern reaching out of its folder."""
    out = []
    datasets = raw.get("datasets")
    entries = [(i, d) for i, d in enumerate(datasets if isinstance(datasets, list) else [])]
    for key, ref in [(k, raw.get(k)) for k in PATH_KEYS] + [
        (f"datasets[{i}].path", d.get("path")) for i, d in entries if isinstance(d, dict)
    ]:
        if isinstance(ref, str) and "\x00" in ref:
            out.append(f"{key}: {ref!r} contains a NUL byte, which no path can hold; remove it")
        elif (
            isinstance(ref, str)
            and not ref.strip()
            and (ref or key.rsplit(".", 1)[-1] in MUST_NAME_A_PATH)
        ):
            # Path("") is the current folder: an empty value would read or write there.
            # Elsewhere "" is axolotl's "not set", as toolkit reads it.
            out.append(f"{key}: {ref!r} is empty; give a path, or remove the key")
    for i, ds in entries:
        if isinstance(ds, dict):
            out += data_files_problems(f"datasets[{i}].data_files", ds.get("data_files"))
    return out


def path_problems(raw: dict) -> list[str]:
    """Files the config points at. Reads raw values so it runs even when other keys are wrong."""
    out = _spelling_problems(raw) or _special_input_problems(raw)
    if out:
        return out
    for key in ("base_model", "tokenizer_config"):
        ref = raw.get(key)
        if isinstance(ref, str) and is_local_ref(ref) and not Path(ref).expanduser().exists():
            hint = (
                f"; for the bundled demo run `toolkit tiny-model {ref}` (or `make train`)"
                if "tiny" in ref
                else "; give an existing model folder or a hub id like Qwen/Qwen3-8B"
            )
            out.append(
                f"{key}: {ref!r} does not exist (looked in "
                f"{Path(ref).expanduser().resolve()}){hint}"
            )
        elif isinstance(ref, str) and is_local_ref(ref):
            out += _model_folder_problems(key, ref, raw)
    datasets = raw.get("datasets")
    for i, ds in enumerate(datasets if isinstance(datasets, list) else []):
        ref = ds.get("path") if isinstance(ds, dict) else None
        if not isinstance(ref, str) or not is_local_ref(ref):
            continue
        where = Path(ref).expanduser()
        if not where.exists():
            out.append(
                f"datasets[{i}].path: {ref!r} does not exist (looked in "
                f"{where.resolve()}); fix the path (relative paths start at the "
                "directory you run toolkit from)"
            )
        elif where.is_file() and ds.get("ds_type") is None and where.suffix not in DATA_SUFFIXES:
            out.append(
                f"datasets[{i}].path: cannot tell the format of {ref!r}; "
                f"set ds_type to one of {sorted(set(DATA_SUFFIXES.values()))}"
            )
        elif where.is_file():
            out += _data_file_problems(f"datasets[{i}].path", ref, where)
    ds_file = raw.get("deepspeed")
    if (
        isinstance(ds_file, str)
        and ds_file not in DEEPSPEED_BUNDLED
        and not Path(ds_file).expanduser().is_file()
    ):
        out.append(
            f"deepspeed: {ds_file!r} is not a file; give a DeepSpeed JSON config or "
            f"one of toolkit's: {', '.join(DEEPSPEED_BUNDLED)}"
        )
    written = [
        f"{key}: {ref!r} is {kind}; choose a directory path"
        for key in ("output_dir", "dataset_prepared_path")
        if isinstance(ref := raw.get(key), str) and ref
        for kind in [_file_kind(Path(ref).expanduser())]
        if kind
    ]
    if written:
        out += written
    else:
        from toolkit.outputs import output_problems

        out += output_problems(raw, local_inputs(raw))
    return out


def local_inputs(raw: dict) -> list[tuple[str, Path]]:
    """(key, absolute path) of every local file or folder a config reads."""
    refs = [(k, raw.get(k)) for k in ("base_model", "tokenizer_config")]
    datasets = raw.get("datasets")
    refs += [
        (f"datasets[{i}].path", d.get("path"))
        for i, d in enumerate(datasets if isinstance(datasets, list) else [])
        if isinstance(d, dict)
    ]
    if raw.get("deepspeed") not in DEEPSPEED_BUNDLED:
        refs.append(("deepspeed", raw.get("deepspeed")))
    return [
        (key, Path(os.path.abspath(Path(ref).expanduser())))
        for key, ref in refs
        if isinstance(ref, str) and ref and is_local_ref(ref)
    ]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
NO_TOKENIZER = "no tokenizer (no tokenizer.json or tokenizer_config.json)"


def _model_folder_problems(key: str, ref: str, raw: dict) -> list[str]:
    """A local model folder must hold a model: config.json, safetensors weights, and a
    tokenizer unless tokenizer_config names another folder (an adapter folder is not one).
    Found here, not as a traceback from transformers once the container has started."""
    where = Path(ref).expanduser()
    if not where.is_dir():
        return [
            f"{key}: {ref!r} is a file; give the folder that holds the model "
            "(config.json, the weights, the tokenizer)"
        ]
    adapter = where / "adapter_config.json"
    if adapter.is_file() and not (where / "config.json").is_file():
        try:
            found = read_json(adapter, 1 << 20, follow=True)
            base = found.get("base_model_name_or_path") if isinstance(found, dict) else None
        except (OSError, ValueError):
            base = None
        return [
            f"{key}: {ref!r} is a LoRA adapter, not a model; set {key} to the model it "
            f"was trained on ({base!r} says its adapter_config.json) and merge the "
            "adapter first (`toolkit merge-lora`) if you want to train on top of it"
        ]
    if key == "base_model" and not (where / "config.json").is_file():
        return [
            f"{key}: {ref!r} holds no model (no config.json); give the folder a model was "
            "saved to (save_pretrained) or a hub id like Qwen/Qwen3-8B"
        ]
    has_tokenizer = any((where / n).is_file() for n in TOKENIZER_FILES)
    if key == "tokenizer_config":
        if has_tokenizer:
            return []
        return [f"{key}: {ref!r} holds {NO_TOKENIZER}; give the folder a tokenizer was saved to"]
    missing = []
    if not _has_weights(where):
        missing.append("no weights (no *.safetensors or model.safetensors.index.json)")
    if not has_tokenizer and not raw.get("tokenizer_config"):
        missing.append(NO_TOKENIZER + " and tokenizer_config is not set")
    if not missing:
        return []
    demo = (
        f"for the bundled demo remove it and run `toolkit tiny-model {ref}`; otherwise "
        if "tiny" in ref
        else ""
    )
    return [
        f"{key}: {ref!r} has config.json but {' and '.join(missing)}; {demo}point {key} "
        "at a folder holding config.json, the *.safetensors weights and the tokenizer "
        "(as save_pretrained writes it), or at a hub id like Qwen/Qwen3-8B"
    ]


def _has_weights(folder: Path) -> bool:
    """Whether a model folder holds safetensors weights (toolkit loads no other format)."""
    if (folder / "model.safetensors.index.json").is_file():
        return True
    try:
        with os.scandir(folder) as entries:
            return any(e.name.endswith(".safetensors") and e.is_file() for e in entries)
    except OSError:
        return False


def _data_file_problems(key: str, ref: str, where: Path) -> list[str]:
    """A data file that cannot be what its name says: empty, or compressed."""
    try:
        with where.open("rb") as f:
            head = f.read(4)
    except OSError as exc:
        return [f"{key}: {ref!r} cannot be read ({exc.strerror}); check its permissions"]
    if not head:
        return [f"{key}: {ref!r} is empty (0 bytes); point it at the file with your rows"]
    compressed = {
        b"\x1f\x8b": ("gzip", "gunzip -c"),
        b"PK\x03\x04": ("zip", "unzip -p"),
        b"\x28\xb5\x2f\xfd": ("zstd", "zstd -dc"),
        b"BZh": ("bzip2", "bunzip2 -c"),
    }
    for magic, (kind, tool) in compressed.items():
        if head.startswith(magic) and where.suffix != ".parquet":
            return [
                f"{key}: {ref!r} is {kind}-compressed but named {where.suffix}; "
                f"decompress it first (`{tool} {where.name} > rows{where.suffix}`) and "
                "point the path at that file"
            ]
    return []


# ---------------------------------------------------------------------------
# Only regular files (and folders of them) are read: a named pipe blocks its reader
# until a writer comes, a device (/dev/zero, /dev/stdin, a terminal) may never end.


def _special(mode: int) -> str | None:
    """What a file of this st_mode is, in words (safe_io.kind_of), when it is neither a
    regular file nor a folder; None when it is one of those."""
    return None if stat.S_ISREG(mode) or stat.S_ISDIR(mode) else kind_of(mode)


def special_kind(path: str | os.PathLike) -> str | None:
    """What the file at `path` is (links followed) when it is neither a regular file nor
    a folder; None when it is one of those, or does not exist. stat never opens the
    file, so never blocks on it."""
    try:
        return _special(os.stat(path).st_mode)
    except (OSError, ValueError):
        return None


def not_regular(key: str, path: str | os.PathLike, kind: str) -> str:
    """The one message for a non-regular file where a file is read."""
    return (
        f"{key}: {str(path)!r} is {kind}, not a regular file; toolkit reads only regular "
        "files (or folders of them), as a pipe or device can block or never end: save "
        f"what it should hold in a regular file and point {key} at it"
    )


def open_regular(
    path: str | os.PathLike, key: str, error: type[UsageError] = UsageError
) -> BinaryIO:
    """An input at `path` opened for reading, links followed (a Hugging Face snapshot
    links each file to its blob), or `error` when it is not a regular file: never
    opened when it is seen to be a device, never blocked on when it is a pipe
    (safe_io.open_file)."""
    try:
        return os.fdopen(open_file(path, follow=True), "rb")
    except NotRegular as exc:
        raise error(not_regular(key, path, exc.kind)) from None


def _file_kind(path: Path) -> str | None:
    """ "a file", or what else `path` is, when it exists and is not a folder."""
    kind = special_kind(path)
    return kind or ("a file" if path.is_file() else None)


def special_files(folder: Path, depth: int) -> list[tuple[Path, str]]:
    """(path, kind) of every non-regular file in `folder`, down `depth` levels (a bound
    that also ends any loop of linked folders)."""
    out: list[tuple[Path, str]] = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return out
    for entry in entries:
        try:
            mode = entry.stat().st_mode
        except OSError:  # a dangling link: nothing to read
            continue
        kind = _special(mode)
        if kind is not None:
            out.append((Path(entry.path), kind))
        elif stat.S_ISDIR(mode) and depth > 1:
            out += special_files(Path(entry.path), depth - 1)
    return out


def data_files_problems(key: str, value) -> list[str]:
    """data_files are patterns inside the dataset's folder: never empty, absolute,
    from the home folder, or climbing out with `..`."""
    out = []
    for i, pattern in enumerate(value if isinstance(value, list) else [value]):
        where = f"{key}[{i}]" if isinstance(value, list) else key
        if not isinstance(pattern, str):
            continue  # the schema names the type
        fix = (
            "data_files are patterns inside the dataset's folder (path); set path to the "
            "folder that holds the files and data_files to a pattern relative to it, "
            "e.g. '*.jsonl' or 'train/*.parquet'"
        )
        if not pattern.strip():
            out.append(f"{where}: {pattern!r} is empty; {fix}")
        elif "\x00" in pattern:
            out.append(f"{where}: {pattern!r} contains a NUL byte; {fix}")
        elif pattern.startswith(("/", "~")):
            out.append(f"{where}: {pattern!r} is an absolute pattern; {fix}")
        elif ".." in PurePosixPath(pattern).parts:
            out.append(f"{where}: {pattern!r} climbs out of the folder with '..'; {fix}")
    return out


def glob_inside(folder: Path, patterns: list[str]) -> list[Path]:
    """Everything `patterns` (checked by data_files_problems) match in `folder`, sorted;
    a match outside the folder is dropped whatever the pattern."""
    found: set[Path] = set()
    root = os.path.normpath(folder)
    for pattern in patterns:
        # pathlib's glob fails on spellings such as "." or "./" (IndexError,
        # AttributeError): glob the pattern's parts, "." and empty ones dropped.
        parts = PurePosixPath(pattern).parts
        if not parts or parts[0] == "/":
            continue
        try:
            matches = list(folder.glob("/".join(parts)))
        except (ValueError, NotImplementedError):  # pathlib's own refusals
            continue
        found.update(
            m for m in matches if os.path.normpath(m).startswith(root + os.sep) or m == folder
        )
    return sorted(found)


# How deep toolkit looks for pipes and devices in a saved dataset (splits in folders)
# and a model folder (files at its top).
SAVED_DATASET_DEPTH = 3
MODEL_FOLDER_DEPTH = 1


def _special_input_problems(raw: dict) -> list[str]:
    """Inputs that are, or hold where toolkit reads, a pipe, device or socket."""
    refs: list[tuple[str, object, dict | None]] = [
        (k, raw.get(k), None) for k in ("base_model", "tokenizer_config", "deepspeed")
    ]
    datasets = raw.get("datasets")
    refs += [
        (f"datasets[{i}].path", d.get("path"), d)
        for i, d in enumerate(datasets if isinstance(datasets, list) else [])
        if isinstance(d, dict)
    ]
    out = []
    for key, ref, ds in refs:
        if not isinstance(ref, str) or not ref or not is_local_ref(ref):
            continue
        path = Path(ref).expanduser()
        kind = special_kind(path)
        if kind is not None:
            out.append(not_regular(key, ref, kind))
        elif path.is_dir():
            out += [not_regular(key, f, k) for f, k in _specials_inside(path, ds)[:3]]
    return out


def _specials_inside(path: Path, ds: dict | None) -> list[tuple[Path, str]]:
    """The pipes and devices toolkit would read in a model or dataset folder."""
    if ds is None:
        return special_files(path, MODEL_FOLDER_DEPTH)
    saved = ("dataset_info.json", "dataset_dict.json")
    if path.parent.name == "snapshots" or any((path / n).exists() for n in saved):
        return special_files(path, SAVED_DATASET_DEPTH)
    matches = glob_inside(path, data_patterns(ds.get("data_files")))
    return [(m, k) for m in matches if (k := special_kind(m)) is not None]


def data_patterns(data_files) -> list[str]:
    """The glob patterns of a dataset folder's data_files (default: every file)."""
    if isinstance(data_files, list):
        return [p for p in data_files if isinstance(p, str)]
    return [data_files] if isinstance(data_files, str) else ["*"]


def context_warnings(config: Config) -> list[str]:
    """sequence_len past the positions the model was trained on, with no rope_scaling
    to stretch them. The model's config.json is read from a local base_model, or from
    the Hugging Face cache when the model was fetched already: never from the network."""
    if config.rope_scaling:
        return []
    model = _model_config(config.base_model, config.revision_of_model)
    trained = model.get("max_position_embeddings")
    if model.get("rope_scaling") or not isinstance(trained, int) or isinstance(trained, bool):
        return []
    if config.sequence_len <= trained:
        return []
    factor = math.ceil(config.sequence_len / trained)
    return [
        f"sequence_len: {config.sequence_len} is beyond {config.base_model}'s "
        f"max_position_embeddings {trained} and rope_scaling is not set: positions past "
        f"{trained} are untrained; lower sequence_len or set rope_scaling (yarn), e.g. "
        f"{{rope_type: yarn, factor: {factor}, original_max_position_embeddings: {trained}}}"
    ]


def _model_config(ref: str, revision: str | None) -> dict:
    """The model's config.json, if it is here to read (a local folder, or the Hub cache);
    {} otherwise."""
    if is_local_ref(ref):
        where: str | Path | None = Path(ref).expanduser() / "config.json"
    else:
        where = _cached_config(ref, revision)
    if not isinstance(where, str | Path):  # not cached, or cached as missing
        return {}
    try:
        found = read_json(where, 1 << 20, follow=True)
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _cached_config(repo: str, revision: str | None) -> str | Path | None:
    """A Hub model's config.json in the Hugging Face cache: at the revision asked for
    when the cache knows it, else the newest snapshot there (toolkit fetches by commit,
    which records no branch); None when the model was never fetched."""
    from huggingface_hub import try_to_load_from_cache

    from toolkit.pins import hub_cache, repo_folder

    try:
        found = try_to_load_from_cache(repo, "config.json", hub_cache(), revision)
    except (OSError, ValueError):  # a revision no cache folder can hold
        return None
    if isinstance(found, str):
        return found
    try:
        configs = list((repo_folder("model", repo) / "snapshots").glob("*/config.json"))
        return max(configs, key=lambda p: p.lstat().st_mtime, default=None)
    except OSError:
        return None
