"""The model repository: Triton's layout on disk, versions, and the load/unload lifecycle.

``<root>/<model>/config.pbtxt|config.yaml`` and ``<root>/<model>/<version>/<model file>``.
Each loaded version gets its backend instances (per ``instance_group``) behind its own
batcher. Loads and reloads build the new versions before the old ones are drained, so a
reload never drops a request; a failed load leaves the model UNAVAILABLE with its reason
and never disturbs other models.

A model name from a request is a plain directory name (``check_name``) before it meets the
filesystem, so no request can probe paths outside the repository; files a load request
uploads, and a config's ``default_model_filename``, stay inside the model's directory. A
model may load at most ``max_instances`` backend instances.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import functools
import logging
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from polyserve_worker import backends, batching, errors, gpus, stats
from polyserve_worker import clock as clocks
from polyserve_worker import config as model_config
from polyserve_worker import ensemble as ensembles
from polyserve_worker.backends import base

logger = logging.getLogger(__name__)

#: The longest file name Linux allows (NAME_MAX), in bytes.
NAME_MAX = 255

READY = "READY"
LOADING = "LOADING"
UNLOADING = "UNLOADING"
UNAVAILABLE = "UNAVAILABLE"


@dataclass
class ServedVersion:
    name: str
    version: str
    config: Any
    batcher: batching.Batcher | None  # None for an ensemble, which runs its members'
    stats: stats.ModelStats
    ensemble: ensembles.Ensemble | None = None

    @property
    def in_flight(self) -> int:
        return self.batcher.in_flight if self.batcher else self.stats.pending


@dataclass
class ModelEntry:
    name: str
    state: str = UNAVAILABLE
    reason: str = ""
    config: Any = None
    versions: dict[int, ServedVersion] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    #: Where files uploaded through the load API live (None: the repository directory).
    upload_dir: Path | None = None


class Repository:
    def __init__(
        self,
        root: Path,
        clock: clocks.Clock | None = None,
        extra_backends: Mapping[str, base.Backend] | None = None,
        max_instances: int = 64,
    ) -> None:
        self.root = root
        self.max_instances = max_instances
        self._clock = clock or clocks.MonotonicClock()
        self._extra_backends = dict(extra_backends or {})
        self._loading: set[str] = set()  # ensembles being loaded, to refuse cycles
        self._models: dict[str, ModelEntry] = {}

    # -- discovery -----------------------------------------------------------------------

    def scan(self) -> list[str]:
        """Model directories present on disk, sorted."""
        if not self.root.is_dir():
            raise errors.NotFound(f"model repository {self.root} does not exist")
        return sorted(
            p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")
        )

    def fingerprint(self, name: str) -> tuple[Any, ...]:
        """What must change on disk for poll mode to reload a model."""
        model_dir = self.root / name
        parts: list[Any] = []
        try:
            for path in sorted(model_dir.rglob("*")):
                if path.is_file():
                    stat = path.stat()
                    parts.append((str(path.relative_to(model_dir)), stat.st_mtime_ns, stat.st_size))
        except OSError:
            return ()
        return tuple(parts)

    # -- lifecycle -----------------------------------------------------------------------

    async def load(
        self, name: str, override: Any | None = None, files: Mapping[str, bytes] | None = None
    ) -> None:
        """Load (or reload) a model; raises ModelLoadError and records the reason.

        ``files`` (``{"1/model.onnx": b"..."}``) are the model's files sent with the request,
        Triton's ``file:`` parameters; they need ``override``, the config that goes with them.
        """
        check_name(name)
        upload_dir = None
        if files:
            if override is None:
                raise errors.InvalidArgument(
                    f"model '{name}': files sent with a load need a 'config' parameter too"
                )
            upload_dir = await asyncio.to_thread(_write_upload, name, files)
            model_dir = upload_dir / name
        else:
            model_dir = self.root / name
            if not model_dir.is_dir():
                raise errors.NotFound(f"no model '{name}' in repository {self.root}")
        entry = self._models.setdefault(name, ModelEntry(name))
        async with entry.lock:
            previous = dict(entry.versions)
            previous_upload = entry.upload_dir
            # A reload keeps serving the old versions until the new ones are ready.
            if not previous:
                entry.state = LOADING
            entry.reason = ""
            try:
                config, built = await self._build(name, override, model_dir)
            except BaseException as exc:
                entry.state = READY if previous else UNAVAILABLE
                if upload_dir is not None:
                    shutil.rmtree(upload_dir, ignore_errors=True)
                if not previous and not (self.root / name).is_dir():
                    # Only uploaded files named it: forget it, or failed uploads under ever
                    # new names would pile up here.
                    self._models.pop(name, None)
                if isinstance(exc, errors.PolyserveError):
                    entry.reason = str(exc)
                    logger.error("failed to load model '%s': %s", name, exc)
                    raise
                if not isinstance(exc, Exception):
                    raise
                entry.reason = f"unexpected error: {exc}"
                logger.exception("failed to load model '%s'", name)
                raise errors.ModelLoadError(f"failed to load model '{name}': {exc}") from exc
            entry.config = config
            entry.versions = built
            entry.upload_dir = upload_dir
            entry.state = READY
            logger.info("model '%s' ready, versions %s", name, sorted(built))
        await self._retire(previous.values())
        if previous_upload is not None and previous_upload != upload_dir:
            shutil.rmtree(previous_upload, ignore_errors=True)

    async def unload(self, name: str, drain_timeout: float = 30.0) -> None:
        check_name(name)
        entry = self._models.get(name)
        if entry is None or (entry.state == UNAVAILABLE and not entry.versions):
            if not (self.root / name).is_dir():
                raise errors.NotFound(f"no model '{name}' in repository {self.root}")
            return
        async with entry.lock:
            entry.state = UNLOADING
            previous = list(entry.versions.values())
            entry.versions = {}
            await self._retire(previous, drain_timeout)
            if entry.upload_dir is not None:
                shutil.rmtree(entry.upload_dir, ignore_errors=True)
                entry.upload_dir = None
            entry.state = UNAVAILABLE
            entry.reason = "unloaded"
            logger.info("model '%s' unloaded", name)

    async def close(self, drain_timeout: float = 30.0) -> None:
        """Unload every model, all within ``drain_timeout`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + drain_timeout
        for name, entry in list(self._models.items()):
            if entry.versions:
                await self.unload(name, max(0.0, deadline - loop.time()))

    def abort(self, reason: str) -> None:
        """Fail every request queued or running in any model now (Unavailable)."""
        for served in self.loaded():
            if served.batcher is not None:
                served.batcher.abort(reason)

    async def _retire(self, versions: Any, drain_timeout: float = 30.0) -> None:
        for served in versions:
            if served.batcher is not None:
                await served.batcher.stop(drain_timeout)
        # Sessions are freed by reference counting as the batchers close their instances (no
        # gc.collect(): with torch or TensorFlow imported one costs ~0.5 s per unload). glibc
        # keeps freed blocks in per-thread arenas, so hand them back to the OS explicitly:
        # without this, RSS crept up by ~1 MB per load/unload cycle of a 4 MB model.
        _return_freed_memory()

    async def _build(
        self, name: str, override: Any | None, model_dir: Path
    ) -> tuple[Any, dict[int, ServedVersion]]:
        # load() has checked that model_dir exists.
        config = override if override is not None else model_config.read(model_dir)
        if not config.name:
            config.name = name
        if config.name != name:
            raise errors.ModelLoadError(
                f"model directory '{name}' holds a config named '{config.name}'; they must match"
            )
        if ensembles.is_ensemble(config):
            return config, await self._build_ensemble(name, config, model_dir)
        available = _versions(model_dir)
        chosen = _select(config, available)
        if not chosen:
            raise errors.ModelLoadError(
                f"model '{name}': no version directory matches its version_policy "
                f"(found {sorted(available) or 'none'}; versions are numbered directories "
                f"such as {model_dir}/1/)"
            )
        latest_dir = model_dir / str(max(chosen))
        backend_name = backends.resolve_name(config, latest_dir, self._extra_backends)
        backend = backends.get(backend_name, self._extra_backends)
        filename = config.default_model_filename or backends.model_filename(
            backend_name, latest_dir, backend.default_filename
        )
        _check_filename(name, filename)
        self._check_instances(config, len(chosen))
        for version in chosen:
            path = model_dir / str(version) / filename
            if not path.exists():
                raise errors.ModelLoadError(f"model '{name}' version {version}: {path} is missing")
        await asyncio.to_thread(backend.complete_config, config, latest_dir / filename)
        if not config.backend:
            config.backend = backend_name
        if not config.instance_group:
            config.instance_group.add(
                count=1, kind=model_config.model_config_pb2.ModelInstanceGroup.KIND_CPU
            )
        model_config.validate(config)
        if "precision" in config.parameters:
            kinds = [_kind(g.kind) for g in config.instance_group]
            backends.check_precision(
                backend_name, config.parameters["precision"].string_value, kinds, name, filename
            )
        backends.check_parameters(backend_name, config)
        policy = batching.Policy.from_config(config)
        built: dict[int, ServedVersion] = {}
        try:
            for version in chosen:
                path = model_dir / str(version) / filename
                instances = await self._instances(backend, config, path)
                model_stats = stats.ModelStats(name, str(version))
                batcher = batching.Batcher(name, policy, instances, model_stats, self._clock)
                batcher.start()
                built[version] = ServedVersion(name, str(version), config, batcher, model_stats)
        except BaseException:
            await self._retire(built.values())
            raise
        return config, built

    async def _build_ensemble(
        self, name: str, config: Any, model_dir: Path
    ) -> dict[int, ServedVersion]:
        """Validate the graph against its members, loading members that are not loaded."""
        if name in self._loading:
            raise errors.ModelLoadError(f"ensemble '{name}' contains itself (a cycle)")
        config.platform = "ensemble"
        graph = ensembles.Ensemble(config)
        self._loading.add(name)
        try:
            for member in graph.members:
                if member == name:
                    raise errors.ModelLoadError(f"ensemble '{name}' lists itself as a step")
                if not self.is_ready(member):
                    try:
                        await self.load(member)
                    except errors.NotFound:
                        raise errors.ModelLoadError(
                            f"ensemble '{name}': member model '{member}' is not in the repository"
                        ) from None
                    except errors.PolyserveError as exc:
                        raise errors.ModelLoadError(
                            f"ensemble '{name}': member model '{member}' failed to load: {exc}"
                        ) from exc
        finally:
            self._loading.discard(name)
        graph.validate({m: self._models[m].config for m in graph.members})
        versions = _versions(model_dir) or {1}  # Triton wants an empty 1/; be lenient
        version = max(versions)
        served = ServedVersion(
            name, str(version), config, None, stats.ModelStats(name, str(version)), graph
        )
        return {version: served}

    def _check_instances(self, config: Any, versions: int) -> None:
        """Refuse, before building any, more instances than ``max_instances``."""
        total = 0
        for group in config.instance_group:
            total += max(1, group.count) * len(_devices(group))
        total *= versions
        if total > self.max_instances:
            raise errors.ModelLoadError(
                f"model '{config.name}': its instance_group asks for {total} instances over "
                f"{versions} version(s), more than this worker loads for one model "
                f"({self.max_instances}, --max-model-instances)"
            )

    async def _instances(
        self, backend: base.Backend, config: Any, path: Path
    ) -> list[base.ModelInstance]:
        instances: list[base.ModelInstance] = []
        try:
            for g_index, group in enumerate(config.instance_group):
                kind = _kind(group.kind)
                for device in _devices(group):
                    for i in range(max(1, group.count)):
                        spec = base.InstanceSpec(
                            name=f"{group.name or config.name + '_' + str(g_index)}_{device}_{i}",
                            kind=kind,
                            device_id=device,
                        )
                        instances.append(await backend.load(config, path, spec))
        except BaseException:
            for instance in instances:
                await instance.close()
            raise
        return instances

    # -- queries -------------------------------------------------------------------------

    def entry(self, name: str) -> ModelEntry:
        entry = self._models.get(name)
        if entry is not None:  # only load() adds names, and it has checked them
            return entry
        check_name(name)
        if (self.root / name).is_dir():
            raise errors.Unavailable(f"model '{name}' is not loaded")
        raise errors.NotFound(f"unknown model '{name}'")

    def resolve(self, name: str, version: str = "") -> ServedVersion:
        """The ready version a request should go to."""
        entry = self.entry(name)
        if entry.state != READY or not entry.versions:
            reason = f": {entry.reason}" if entry.reason else ""
            raise errors.Unavailable(f"model '{name}' is not ready ({entry.state}{reason})")
        member = self.unready_member(name)
        if member is not None:
            raise errors.Unavailable(f"ensemble '{name}' is not ready: member {member}")
        if not version:
            return entry.versions[max(entry.versions)]
        try:
            number = int(version)
        except ValueError:
            raise errors.InvalidArgument(
                f"model '{name}': version must be an integer, got {version!r}"
            ) from None
        try:
            return entry.versions[number]
        except KeyError:
            raise errors.NotFound(
                f"model '{name}' has no version {number} loaded (loaded: "
                f"{', '.join(str(v) for v in sorted(entry.versions))})"
            ) from None

    def is_ready(self, name: str) -> bool:
        entry = self._models.get(name)
        if entry is None or entry.state != READY or not entry.versions:
            return False
        return self.unready_member(name) is None

    def unready_member(self, name: str, seen: frozenset[str] = frozenset()) -> str | None:
        """For an ensemble, the first member (at any depth) that is not ready."""
        entry = self._models.get(name)
        if entry is None or not entry.versions:
            return None
        graph = next(iter(entry.versions.values())).ensemble
        if graph is None or name in seen:
            return None
        for member in graph.members:
            member_entry = self._models.get(member)
            if member_entry is None or member_entry.state != READY or not member_entry.versions:
                state = member_entry.state if member_entry else UNAVAILABLE
                reason = f": {member_entry.reason}" if member_entry and member_entry.reason else ""
                return f"'{member}' is {state}{reason}"
            deeper = self.unready_member(member, seen | {name})
            if deeper is not None:
                return deeper
        return None

    def loaded(self) -> list[ServedVersion]:
        return [v for e in self._models.values() for v in e.versions.values()]

    def entries(self) -> dict[str, ModelEntry]:
        return dict(self._models)

    def index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """The repository extension's index: every model on disk, loaded or not."""
        names = set(self.scan()) | set(self._models)
        rows: list[dict[str, str]] = []
        for name in sorted(names):
            entry = self._models.get(name)
            if entry is None:
                if not ready_only:
                    rows.append({"name": name})
                continue
            if entry.versions:
                for version in sorted(entry.versions):
                    rows.append(
                        {
                            "name": name,
                            "version": str(version),
                            "state": entry.state,
                            "reason": entry.reason,
                        }
                    )
            elif not ready_only:
                rows.append({"name": name, "state": entry.state, "reason": entry.reason})
        if ready_only:
            rows = [r for r in rows if r.get("state") == READY]
        return rows


@functools.cache
def _malloc_trim() -> Any:
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):
        return None  # not glibc (musl, macOS): nothing to trim


def _return_freed_memory() -> None:
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _devices(group: Any) -> list[int]:
    """The devices an instance group puts ``count`` instances on, each: the GPUs it names,
    else (as Triton) every GPU this process sees; a CPU group, or a GPU group with no GPU
    in sight, one (device 0: the backend then says what is missing)."""
    if _kind(group.kind) != "KIND_GPU":
        return [0]
    if group.gpus:
        return list(group.gpus)
    return gpus.visible() or [0]


def _kind(value: int) -> str:
    kind = str(model_config.model_config_pb2.ModelInstanceGroup.Kind.Name(value))
    # GPU placement is explicit: say KIND_GPU to get one.
    return "KIND_CPU" if kind == "KIND_AUTO" else kind


def check_name(name: str) -> None:
    """A model name a request gives must be a plain name of a directory in the repository:
    no slash, no NUL or control characters, not hidden, at most NAME_MAX bytes. Anything
    else is refused before it meets the filesystem."""
    try:
        size = len(name.encode())
    except UnicodeEncodeError:
        size = -1
    if (
        not 0 < size <= NAME_MAX
        or name.startswith(".")
        or "/" in name
        or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    ):
        shown = name if len(name) <= 60 else name[:57] + "..."
        raise errors.InvalidArgument(
            f"{shown!r} is not a model name: a model is named by its directory in the "
            f"repository (no '/', no control characters, not starting with '.', at most "
            f"{NAME_MAX} bytes)"
        )


def _relative_parts(path: str) -> tuple[str, ...] | None:
    """The parts of a relative path that stays inside where it is put: no '..', not
    absolute, no NUL, each part at most NAME_MAX bytes. None for any other path."""
    parts = Path(path).parts
    if (
        not parts
        or Path(path).is_absolute()
        or ".." in parts
        or "\0" in path
        or any(len(part.encode(errors="surrogatepass")) > NAME_MAX for part in parts)
    ):
        return None
    return parts


def _check_filename(name: str, filename: str) -> None:
    if _relative_parts(filename) is None:
        raise errors.ModelLoadError(
            f"model '{name}': default_model_filename {filename[:80]!r} must be a relative "
            f"path inside the version directory (no '..', no NUL, parts of at most "
            f"{NAME_MAX} bytes)"
        )


def _write_upload(name: str, files: Mapping[str, bytes]) -> Path:
    """Write a load request's files to a private directory laid out as a repository."""
    paths: dict[str, tuple[str, ...]] = {}
    for relative in files:
        parts = _relative_parts(relative)
        if parts is None or not parts[0].isdigit() or len(parts) < 2:
            raise errors.InvalidArgument(
                f"file '{relative[:80]}': name it <version>/<path>, e.g. 1/model.onnx, a "
                f"relative path inside the model's directory (no '..', no NUL, parts of at "
                f"most {NAME_MAX} bytes)"
            )
        paths[relative] = parts
    directories = {parts[:i] for parts in paths.values() for i in range(1, len(parts))}
    for relative, parts in paths.items():
        if parts in directories:
            raise errors.InvalidArgument(
                f"file '{relative}' is also the directory of another file in the same load"
            )
    root = Path(tempfile.mkdtemp(prefix=f"polyserve-upload-{name}-"))
    try:
        for relative, content in files.items():
            target = root / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(content)
    except OSError as exc:
        shutil.rmtree(root, ignore_errors=True)
        raise errors.InvalidArgument(f"model '{name}': cannot store its files: {exc}") from exc
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    return root


def _versions(model_dir: Path) -> set[int]:
    return {int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit()}


def _select(config: Any, available: set[int]) -> list[int]:
    policy = config.version_policy
    which = policy.WhichOneof("policy_choice")
    if which == "all":
        return sorted(available)
    if which == "specific":
        return sorted(v for v in policy.specific.versions if v in available)
    count = policy.latest.num_versions if which == "latest" else 1
    return sorted(available)[-max(1, count) :]
