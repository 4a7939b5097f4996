"""Launch files for cloud VMs: a SkyPilot task, or cloud-init user-data for a plain VM.

Both run the image a `toolkit images push` recorded, by digest, and the config as
toolkit validated it, rewritten to the VM's paths:

    /toolkit/config.yaml   the config          /toolkit/model     a local base model
    /toolkit/data/N/...    dataset N           /toolkit/outputs   output_dir

Secrets travel by name only, and only those the run needs (its trackers' credentials,
vm_secrets; HF_TOKEN for the Hub fetch alone): the SkyPilot task lists them
under `secrets:` with no value (`sky launch --secret HF_TOKEN` fills them from your
environment); the cloud-init script reads them on the VM from
/etc/toolkit/secrets.env, which you provision (e.g. from your cloud's secret manager),
and hands each container its own on its stdin, never as its environment (which
`docker inspect` shows). Neither file ever holds a value.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import yaml

from toolkit.config import Config, LoadedConfig, is_local_ref, trackers
from toolkit.containers.spec import Mount, RunSpec, run_argv
from toolkit.errors import UsageError
from toolkit.host.launchfiles import check_text
from toolkit.host.place import device_flags
from toolkit.host.remote import is_remote

VM = Path("/toolkit")


def vm_secrets(cfg: Config) -> tuple[str, ...]:
    """The credentials a training on a VM may need, by name, for the launch files. This
    machine's environment does not decide them: an unset W&B mode is online there when the
    VM's secrets hold WANDB_API_KEY (names it lacks are dropped on the VM)."""
    return trackers.credentials(cfg, {name: "on the VM" for name in trackers.WANDB_CREDENTIALS})


@dataclass(frozen=True)
class VMInput:
    """What a VM must be given of the config's inputs: the config key naming it, where
    it is (a local path, resolved, or a URL) and where the container sees it."""

    key: str
    source: str
    target: str
    dataset: int | None = None  # its index in `datasets`


def vm_inputs(cfg: Config) -> list[VMInput]:
    """The config's local and object-store inputs and their VM paths (a Hub model or
    dataset is fetched on the VM instead)."""
    found: list[VMInput] = []
    for key, ref, target in (
        ("base_model", cfg.base_model, VM / "model"),
        ("tokenizer_config", cfg.tokenizer_config, VM / "tokenizer"),
    ):
        if ref and is_local_ref(ref):
            found.append(VMInput(key, str(Path(ref).expanduser().resolve()), str(target)))
    for i, ds in enumerate(cfg.datasets):
        local = is_local_ref(ds.path)
        if not local and not is_remote(ds.path):
            continue  # a hub dataset: read over the network in the container
        source = str(Path(ds.path).expanduser().resolve()) if local else ds.path
        name = Path(ds.path.rstrip("/")).name
        target = VM / "data" / str(i) / name
        found.append(VMInput(f"datasets[{i}].path", source, str(target), dataset=i))
    return found


def vm_config(loaded: LoadedConfig) -> tuple[dict, dict[str, str]]:
    """The validated config with the VM's paths, and {VM path: source} for what must be
    copied in (a local path on this machine, or a URL)."""
    cfg = loaded.config
    data = cfg.model_dump(mode="json", exclude_none=True)
    copies: dict[str, str] = {}
    for found in vm_inputs(cfg):
        copies[found.target] = found.source
        if found.dataset is not None:
            data["datasets"][found.dataset]["path"] = found.target
        else:
            data[found.key] = found.target
    data["output_dir"] = str(VM / "outputs")
    if cfg.dataset_prepared_path:
        data["dataset_prepared_path"] = str(VM / "prepared")
    return data, copies


def check_launch_values(loaded: LoadedConfig, outputs: str) -> None:
    """Every path a launch file carries free of control characters (launchfiles), named
    by its config key; and the outputs' place."""
    check_text(str(loaded.path), "the config file")
    for found in vm_inputs(loaded.config):
        check_text(found.source, found.key)
    check_text(outputs, "--outputs")


def needs_network(loaded: LoadedConfig) -> bool:
    """Whether the training container must reach the network: Hub inputs are fetched
    before it starts (`toolkit fetch`, at the commits pinned at launch); an online
    tracker still needs it."""
    from toolkit.config import trackers

    return trackers.needs_network(loaded.config)


# On the VM: the Hugging Face cache `toolkit fetch` fills and training reads, offline.
VM_HF = VM / "hf"


def hub_steps(pins: list) -> tuple[dict[str, str], dict[str, str]]:
    """For launch files: the fetch step's environment (where, and which commits) and the
    training step's (the same, offline, and no token)."""
    from toolkit.host.hub import PINS_ENV
    from toolkit.pins import OFFLINE_ENV, pins_json

    if not pins:
        return {}, {}
    fetch_env = {"HF_HUB_CACHE": str(VM_HF), PINS_ENV: pins_json(pins)}
    return fetch_env, {**fetch_env, **OFFLINE_ENV}


def skypilot_task(
    loaded: LoadedConfig,
    image: str,
    config_file: Path,
    accelerators: str | None,
    nodes: int,
    outputs: str,
    pins: list | None = None,
    infra: str | None = None,
) -> dict:
    """A SkyPilot task: the image by digest, file mounts in, outputs to a bucket, the
    doctor and the Hub fetch (at the commits pinned at launch, with HF_TOKEN) as setup,
    torchrun over SkyPilot's nodes as run, offline for the Hub and without the token.
    `infra`: where SkyPilot runs it (a cloud, `k8s[/CONTEXT]`, `slurm[/CLUSTER]`); the
    task is the same everywhere."""
    check_launch_values(loaded, outputs)
    _data, copies = vm_config(loaded)
    mounts: dict = {str(VM / "config.yaml"): str(config_file.resolve()), **copies}
    mounts[str(VM / "outputs")] = {"source": outputs, "mode": "MOUNT"}
    resources: dict = {"image_id": f"docker:{image}"}
    if accelerators:
        resources["accelerators"] = accelerators
    if infra:
        resources["infra"] = infra
    launch = (
        "toolkit train /toolkit/config.yaml --runtime local "
        '--nproc-per-node "${SKYPILOT_NUM_GPUS_PER_NODE:-1}" '
        '--nnodes "$SKYPILOT_NUM_NODES" --node-rank "$SKYPILOT_NODE_RANK" '
        '--master-addr "$(echo "$SKYPILOT_NODE_IPS" | head -n1)" --master-port 29500'
    )
    fetch_env, train_env = hub_steps(pins or [])
    setup = "toolkit doctor\n"
    secrets: dict[str, None] = {name: None for name in vm_secrets(loaded.config)}
    if fetch_env:
        assigned = " ".join(f"{k}={shlex.quote(v)}" for k, v in fetch_env.items())
        setup += f"{assigned} toolkit fetch /toolkit/config.yaml\n"
        launch = (
            "env -u HF_TOKEN -u HUGGING_FACE_HUB_TOKEN "
            + " ".join(f"{k}={shlex.quote(v)}" for k, v in train_env.items())
            + " "
            + launch
        )
        secrets["HF_TOKEN"] = None  # for the fetch in setup only
    return {
        "name": f"toolkit-{Path(loaded.path).stem}",
        "resources": resources,
        "num_nodes": nodes,
        **({"secrets": secrets} if secrets else {}),
        "file_mounts": mounts,
        "setup": setup,
        "run": f"set -euo pipefail\n{launch}\n",
    }


def cloud_init(
    loaded: LoadedConfig, image: str, accelerator: str, outputs: str, pins: list | None = None
) -> str:
    """#cloud-config user-data for one plain Debian/Ubuntu VM: install the engine (and
    the NVIDIA Container Toolkit), pull by digest, preflight, fetch the Hub inputs at
    the commits pinned at launch (the image's huggingface_hub, with HF_TOKEN, into a
    cache on the VM's disk), train offline from it, copy outputs out."""
    check_launch_values(loaded, outputs)
    data, copies = vm_config(loaded)
    local = {target: src for target, src in copies.items() if not is_remote(src)}
    if local:
        names = ", ".join(sorted(local.values()))
        raise UsageError(
            f"a VM cannot read this machine's files ({names}); upload them to "
            "object storage and point the config at s3://, gs:// or az:// URLs "
            "(or use `toolkit launch skypilot`, which copies local files)"
        )
    host = Path("/opt/toolkit")
    fetch_env, train_env = hub_steps(pins or [])
    mounts = [
        Mount(str(host / "config.yaml"), str(VM / "config.yaml"), read_only=True),
        Mount(str(host / "data"), str(VM / "data"), read_only=True),
        Mount(str(host / "outputs"), str(VM / "outputs"), read_only=False),
    ]
    hf = Mount(str(host / "hf"), str(VM_HF), read_only=True)
    spec = RunSpec(
        image=image,
        command=["toolkit", "train", str(VM / "config.yaml"), "--runtime", "local"],
        mounts=[*mounts, hf] if train_env else mounts,
        user="0:0",
        workdir="/",
        env=train_env,
        network=None if needs_network(loaded) else "none",
        devices=device_flags(accelerator, None, ("video", "render")),
        secrets=vm_secrets(loaded.config),
    )
    fetch = RunSpec(
        image=image,
        command=["toolkit", "fetch", str(VM / "config.yaml")],
        mounts=[mounts[0], Mount(hf.host, hf.container, read_only=False)],
        user="0:0",
        workdir="/",
        env=fetch_env,
        network=None,
        devices=device_flags("cpu"),
        secrets=("HF_TOKEN",),
    )
    doctor = RunSpec(
        image=image,
        command=["toolkit", "doctor"],
        mounts=[],
        user="0:0",
        workdir="/",
        env={},
        network="none",
        devices=device_flags(accelerator, None, ("video", "render")),
    )
    fetches = []
    for target, src in copies.items():
        dest = host / Path(target).relative_to(VM)
        fetches += [
            f"mkdir -p {shlex.quote(str(dest.parent))}",
            f"fs_copy get {shlex.quote(src)} {shlex.quote(str(dest))}",
        ]
    script = "\n".join(
        [
            "#!/bin/bash",
            "# Written by `toolkit launch cloud-init`; runs once, as root, on first boot.",
            "set -euo pipefail",
            "exec > >(tee -a /var/log/toolkit.log) 2>&1",
            "export DEBIAN_FRONTEND=noninteractive",
            "apt-get update -q",
            "apt-get install -y -q docker.io python3-venv curl gnupg",
            *(_nvidia_toolkit() if accelerator == "cuda" else []),
            "systemctl enable --now docker",
            "# Object-store copies in and out with fsspec, in a venv of its own.",
            "python3 -m venv /opt/toolkit/fsspec",
            "/opt/toolkit/fsspec/bin/pip install -q fsspec s3fs gcsfs adlfs",
            "fs_copy() {",
            "  /opt/toolkit/fsspec/bin/python -c 'import fsspec, sys; op, a, b = sys.argv[1:]; "
            'fs, _ = fsspec.core.url_to_fs(a if op == "get" else b); '
            'getattr(fs, op)(a, b, recursive=True)\' "$@"',
            "}",
            "# Secrets by name: provision them in this file; it is never part of the user-data.",
            "if [ -f /etc/toolkit/secrets.env ]; then "
            "set -a; . /etc/toolkit/secrets.env; set +a; fi",
            "# A container gets the secrets it needs on its stdin, as one JSON line that "
            "toolkit.containers.engine's receiver reads, so `docker inspect` never shows them.",
            "secrets_json() {",
            "  /opt/toolkit/fsspec/bin/python -c 'import json, os, sys; print(json.dumps("
            '{n: os.environ[n] for n in sys.argv[1:] if n in os.environ}))\' "$@"',
            "}",
            f"docker pull {shlex.quote(image)}",
            "# Preflight: the image must see its GPUs before anything heavy runs.",
            _docker_run(doctor),
            "mkdir -p /opt/toolkit/data /opt/toolkit/outputs /opt/toolkit/hf",
            *fetches,
            *(
                [
                    "# Hub inputs at the commits pinned at launch; training then runs offline.",
                    _docker_run(fetch),
                ]
                if fetch_env
                else []
            ),
            "status=0",
            _docker_run(spec) + " || status=$?",
            f"fs_copy put /opt/toolkit/outputs {shlex.quote(outputs)}",
            "exit $status",
            "",
        ]
    )
    document = {
        "package_update": True,
        "write_files": [
            {
                "path": "/opt/toolkit/config.yaml",
                "permissions": "0644",
                "content": yaml.safe_dump(data, sort_keys=False),
            },
            {"path": "/opt/toolkit/run.sh", "permissions": "0755", "content": script},
        ],
        "runcmd": [["/opt/toolkit/run.sh"]],
    }
    return "#cloud-config\n" + yaml.safe_dump(document, sort_keys=False, width=1000)


def _docker_run(spec: RunSpec) -> str:
    """The script's line for a container: its secrets' values (read on the VM) piped to
    its stdin, their names alone in the script."""
    argv = shlex.join(run_argv(spec))
    return f"secrets_json {shlex.join(spec.secrets)} | {argv}" if spec.secrets else argv


def _nvidia_toolkit() -> list[str]:
    """The NVIDIA Container Toolkit from NVIDIA's apt repository, wired into Docker."""
    key = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg"
    repo = "https://nvidia.github.io/libnvidia-container"
    return [
        f"curl -fsSL {repo}/gpgkey | gpg --dearmor -o {key}",
        f"curl -fsSL {repo}/stable/deb/nvidia-container-toolkit.list | sed 's#deb https://#deb "
        f"[signed-by={key}] https://#g' > /etc/apt/sources.list.d/nvidia-container-toolkit.list",
        "apt-get update -q",
        "apt-get install -y -q nvidia-container-toolkit",
        "nvidia-ctk runtime configure --runtime=docker",
        "systemctl restart docker",
    ]
