"""Test doubles for the seams toolkit talks to the outside world through: `FakeRuntime`
for the programs toolkit runs (git, pip, nvidia-smi, `docker buildx version`…), and
`FakeDocker`, the engine, with typed state and answers and a log of typed calls."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from toolkit.containers.seam import Docker, Runtime
from toolkit.containers.spec import Engine, ImageInfo, Result, RunSpec
from toolkit.errors import RuntimeFailure, UsageError

# --- what FakeDocker logs: one record a call, in order ---------------------------------


@dataclass(frozen=True)
class Ask:
    """A question with no argument: the engine's version, its info, the images in use."""

    what: Literal["version", "info", "images in use"]


@dataclass(frozen=True)
class Inspect:
    ref: str


@dataclass(frozen=True)
class ListImages:
    labels: dict[str, str | None]


@dataclass(frozen=True)
class Remove:
    ref: str


@dataclass(frozen=True)
class Build:
    context: str
    tag: str
    build_args: dict[str, str]
    env: dict[str, str]
    no_cache: bool


@dataclass(frozen=True)
class Pull:
    ref: str


@dataclass(frozen=True)
class Import:
    tarball: str
    tag: str
    changes: list[str]


@dataclass(frozen=True)
class Push:
    local: str
    remote: str


@dataclass(frozen=True)
class Run:
    spec: RunSpec
    keep_fds: tuple[int, ...] = ()


@dataclass(frozen=True)
class Output:
    spec: RunSpec


@dataclass(frozen=True)
class Save:
    ref: str
    path: str


@dataclass(frozen=True)
class Load:
    path: str


Call = (
    Ask | Inspect | ListImages | Remove | Build | Pull | Import | Push | Run | Output | Save | Load
)
C = TypeVar("C", bound=Call)
A = TypeVar("A")

# An answer to one kind of call: the value, or a function of the call that returns it.
Answer = A | Callable[[C], A]


@dataclass(eq=False)
class FakeDocker(Docker):
    """The engine as typed state: its version (or the RuntimeFailure the real seam raises
    when none answers, `spec.unreachable`), its data root and container runtimes, its
    images (ref, a tag or an ID → ImageInfo) and the IDs of those containers use. Each
    call is logged in `calls`; builds, pulls, imports, runs and pushes answer from their
    `*_answer`. `buildkit_env` is the real one, over the FakeRuntime's programs."""

    version: str | RuntimeFailure = "27.5.1"
    name: str = "docker"  # or "podman"
    rootless: bool = False
    root: str | None = "/var/lib/docker"
    runtimes: tuple[str, ...] = ("runc",)
    images: dict[str, ImageInfo] = field(default_factory=dict)
    in_use: set[str] = field(default_factory=set)
    build_answer: Answer[Result, Build] = Result(0)
    pull_answer: Answer[Result, Pull] = Result(0)
    import_answer: Answer[Result, Import] = Result(0)
    run_answer: Answer[int, Run] = 0
    output_answer: Answer[Result, Output] = Result(0)
    # None: the image `local` names, as the engine knows it after the push.
    push_answer: Answer[ImageInfo | RuntimeFailure | None, Push] = None
    calls: list[Call] = field(default_factory=list)
    runtime: Runtime | None = None  # the FakeRuntime this engine belongs to

    def of(self, kind: type[C]) -> list[C]:
        """The calls of one kind, in order."""
        return [c for c in self.calls if isinstance(c, kind)]

    def tag(self, ref: str, image: ImageInfo) -> None:
        """Give `image` the tag `ref`, as a build or an import does: the image the tag
        named before stays, untagged, under its ID."""
        old = self.images.get(ref)
        if old is not None and old.id != image.id and len(self._refs(old.id)) == 1:
            self.images[old.id] = old
        self.images[ref] = image

    def _logged(self, answer, call):
        """Log `call`; its answer, or what the answer makes of it."""
        self.calls.append(call)
        return answer(call) if callable(answer) else answer

    def _find(self, ref: str) -> ImageInfo | None:
        """The image a tag or an ID names, as the engine finds it."""
        if ref in self.images:
            return self.images[ref]
        return next((i for i in self.images.values() if i.id == ref), None)

    def _refs(self, image_id: str) -> list[str]:
        return [ref for ref, i in self.images.items() if i.id == image_id]

    def engine(self) -> Engine:
        return Engine(self.name, self.require(), self.rootless)

    def require(self) -> str:
        self.calls.append(Ask("version"))
        if isinstance(self.version, RuntimeFailure):
            raise self.version
        return self.version

    def info(self) -> tuple[str | None, tuple[str, ...]]:
        self.calls.append(Ask("info"))
        return self.root, tuple(sorted(self.runtimes))

    def inspect_image(self, ref: str) -> ImageInfo | None:
        self.calls.append(Inspect(ref))
        return self._find(ref)

    def list_images(self, labels: dict[str, str | None]) -> list[ImageInfo]:
        self.calls.append(ListImages(dict(labels)))
        unique = {i.id: i for i in self.images.values()}.values()
        return [
            i
            for i in unique
            if all(k in i.labels and v in (None, i.labels[k]) for k, v in labels.items())
        ]

    def images_in_use(self) -> set[str]:
        self.calls.append(Ask("images in use"))
        return set(self.in_use)

    def remove_image(self, image_id: str) -> bool:
        """As the engine does, never forced: a tag of an image with other tags is only
        untagged; its last tag, or its ID, removes the image unless a container uses it;
        the ID of an image with several tags is refused."""
        self.calls.append(Remove(image_id))
        image = self._find(image_id)
        if image is None:
            return False
        refs = self._refs(image.id)
        tags = [r for r in refs if r != image.id]
        if image_id != image.id and len(tags) > 1:
            del self.images[image_id]
            return True
        if image.id in self.in_use or (image_id == image.id and len(tags) > 1):
            return False
        for ref in refs:
            del self.images[ref]
        return True

    def build(self, context, tag, build_args, env, no_cache=False) -> Result:
        return self._logged(
            self.build_answer, Build(context, tag, dict(build_args), dict(env), no_cache)
        )

    def pull(self, ref: str, timeout: float = 600) -> Result:
        return self._logged(self.pull_answer, Pull(ref))

    def import_rootfs(self, tarball: str, tag: str, changes: list[str]) -> Result:
        return self._logged(self.import_answer, Import(tarball, tag, list(changes)))

    def run(self, spec: RunSpec, keep_fds: tuple[int, ...] = ()) -> int:
        return self._logged(self.run_answer, Run(spec, tuple(keep_fds)))

    def output(self, spec: RunSpec) -> Result:
        return self._logged(self.output_answer, Output(spec))

    def save(self, ref: str, path: str) -> ImageInfo:
        """An archive naming the image's ID and its tags (JSON, for the double's load)."""
        import json
        from pathlib import Path

        self._logged(None, Save(ref, path))
        image = self._find(ref)
        if image is None:
            raise UsageError(f"{ref}: no such image on this engine")
        saved = {"id": image.id, "labels": image.labels, "tags": self._refs(image.id)}
        Path(path).write_text(json.dumps(saved))
        return image

    def load(self, path: str) -> list[ImageInfo]:
        """What `save` wrote, back on this engine under its tags."""
        import json
        from pathlib import Path

        self._logged(None, Load(path))
        saved = json.loads(Path(path).read_text())
        image = ImageInfo(saved["id"], saved["labels"], tags=tuple(saved["tags"]))
        for ref in saved["tags"]:
            self.tag(ref, image)
        return [image]

    def push(self, local: str, remote: str) -> ImageInfo:
        answer = self._logged(self.push_answer, Push(local, remote))
        if isinstance(answer, RuntimeFailure):
            raise answer
        if answer is None:
            answer = self._find(local)
            if answer is None:
                raise RuntimeFailure(f"pushing {remote} failed: no such image: {local}")
            self.tag(remote, answer)
        return answer


@dataclass
class FakeRuntime(Runtime):
    """Records every command; answers from `script`, a list of (argv prefix, Result or
    callable). Its engine is `engine`, a FakeDocker."""

    script: list[tuple[tuple[str, ...], Result | Callable[[list[str]], Result]]] = field(
        default_factory=list
    )
    calls: list[list[str]] = field(default_factory=list)
    envs: list[dict[str, str]] = field(default_factory=list)
    stdouts: list = field(default_factory=list)  # where each call's output was sent, if set
    programs: set[str] = field(default_factory=lambda: {"docker"})
    engine: FakeDocker = field(default_factory=FakeDocker)

    def __post_init__(self) -> None:
        self.engine.runtime = self

    def run(self, argv, *, env=None, capture=True, timeout=None, cwd=None, stdout=None) -> Result:
        self.calls.append(list(argv))
        self.envs.append(dict(env or {}))
        self.stdouts.append(stdout)
        for prefix, answer in self.script:
            if tuple(argv[: len(prefix)]) == prefix:
                return answer(list(argv)) if callable(answer) else answer
        return Result(0)

    def which(self, name: str) -> str | None:
        return f"/usr/bin/{name}" if name in self.programs else None

    def run_child(self, argv: list[str]) -> tuple[int, int | None]:
        return self.run(argv, capture=False).returncode, None

    def docker(self) -> FakeDocker:
        return self.engine
