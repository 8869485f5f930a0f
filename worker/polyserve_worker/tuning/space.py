"""The search space of one model's configuration: which knobs a tuner may turn, and to what.

Read from the model's own config, the hardware the tuner measures on, and the worker's
backend registry (``backends.REGISTRY``: the backends that load the model's format on the
device, the precisions each runs there, the parameters each reads), so that the space holds
only configs the worker serves:

- batching knobs only when the model batches (``max_batch_size`` > 0): the dynamic batcher
  on or off, ``max_batch_size`` (the config's, a quarter and a sixteenth of it: lowering it
  refuses client batches above the new value, which the report says), a preferred batch size
  (none, or a full batch), and ``max_queue_delay_microseconds`` (at most a quarter of the
  SLO: a longer wait cannot meet it);
- the instance count, and on CPUs each backend's intra-op thread parameter (the first
  integer parameter of its registry entry that names threads); a candidate with more
  threads in all than the CPUs it may use is refused before it is measured;
- the backend, among those that load the format on the device, unless the hardware fixes
  one (the operator's tiers do); the precision, among those the backend runs on the device,
  lower precisions only where the hardware runs them natively (bf16 with AMX or AVX512_BF16
  on a CPU; fp16 and bf16 on a GPU), and never int8 (that needs a quantized model); GPU-only
  engines (TensorRT, ONNX Runtime's CUDA provider) only on a GPU;
- each backend's choice parameters (OpenVINO's ``PERFORMANCE_HINT``).

An ensemble's own config has nothing to tune (its members do the work): ``of`` refuses it
and names the members. Pure: no I/O, no framework, no Optuna (``suggest`` takes anything
with Optuna's ``suggest_categorical``).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from polyserve_worker import backends
from polyserve_worker import config as model_config
from polyserve_worker.backends import configs

#: Queue delays offered (microseconds), before the SLO bound.
QUEUE_DELAYS_US = (0, 250, 1000, 4000)
#: Most instances offered per device: past a few, instances only fight over the same cores.
MAX_CPU_INSTANCES = 4
MAX_GPU_INSTANCES = 4


class NotTunable(Exception):
    """The config has nothing a tuner can turn; the message says what to tune instead."""


class Suggester(Protocol):
    """What ``suggest`` needs of an Optuna trial."""

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any: ...


@dataclass(frozen=True)
class Hardware:
    """The device the tuner measures on, and what the caller fixed of the profile."""

    kind: str = "KIND_CPU"
    """KIND_CPU or KIND_GPU: the instance kind every candidate uses."""
    cpus: int = 1
    """CPUs the worker may use (its container's limit)."""
    bf16: bool = False
    """The CPU runs bf16 natively (AMX or AVX512_BF16)."""
    gpu: str = "nvidia"
    """Whose GPUs (the registry's ``gpu``) for KIND_GPU."""
    backend: str | None = None
    """A fixed backend (a tier's profile); None: searched."""
    precision: str | None = None
    """A fixed precision; None: searched."""


@dataclass(frozen=True)
class Candidate:
    """One point of the space: everything ``apply`` writes into a config."""

    backend: str
    precision: str = "fp32"
    batching: bool = False
    max_batch_size: int = 0
    preferred_batch_size: int = 0  # 0: none
    max_queue_delay_us: int = 0
    instances: int = 1
    threads: int | None = None  # None: the backend reads no thread parameter here
    choices: tuple[tuple[str, str], ...] = ()  # backend choice parameters, sorted

    def describe(self) -> str:
        """One line for people: ``onnxruntime fp32, batch<=64 pref 64 delay 250us, 2x1t``."""
        if self.batching:
            batch = f"batch<={self.max_batch_size}"
            if self.preferred_batch_size:
                batch += f" pref {self.preferred_batch_size}"
            batch += f" delay {self.max_queue_delay_us}us"
        else:
            batch = "no batcher"
        threads = f"x{self.threads}t" if self.threads is not None else ""
        extra = "".join(f", {v.lower()}" for _, v in self.choices)
        return f"{self.backend} {self.precision}, {batch}, {self.instances}{threads}{extra}"


@dataclass(frozen=True)
class Space:
    """The knobs of one model on one device (see the module docstring)."""

    base: Any  # the model's ModelConfig, as given
    model_format: str
    hardware: Hardware
    base_backend: str
    backends: tuple[str, ...]
    precisions: dict[str, tuple[str, ...]]
    batch_sizes: tuple[int, ...]  # empty: the model does not batch
    queue_delays_us: tuple[int, ...]
    instances: tuple[int, ...]
    threads: dict[str, tuple[int, ...]]  # backend -> thread counts (absent: no such knob)
    choice_parameters: dict[str, dict[str, tuple[str, ...]]] = field(default_factory=dict)

    @property
    def batches(self) -> bool:
        return bool(self.batch_sizes)

    def knobs(self) -> dict[str, tuple[Any, ...]]:
        """Every Optuna parameter and its choices (the report lists them)."""
        found: dict[str, tuple[Any, ...]] = {}
        if len(self.backends) > 1:
            found["backend"] = self.backends
        for backend in self.backends:
            if len(self.precisions[backend]) > 1:
                found[f"precision:{backend}"] = self.precisions[backend]
            if backend in self.threads:
                found[f"threads:{backend}"] = self.threads[backend]
            for key, values in self.choice_parameters.get(backend, {}).items():
                found[f"{backend}:{key}"] = values
        if self.batches:
            found["dynamic_batching"] = (True, False)
            found["max_batch_size"] = self.batch_sizes
            found["preferred_batch_size"] = (0, -1)
            found["max_queue_delay_us"] = self.queue_delays_us
        if len(self.instances) > 1:
            found["instances"] = self.instances
        return found

    def suggest(self, trial: Suggester) -> Candidate:
        """The candidate a trial asks for (conditional knobs are asked only when they apply)."""

        def pick(name: str, choices: tuple[Any, ...]) -> Any:
            return choices[0] if len(choices) == 1 else trial.suggest_categorical(name, choices)

        backend = pick("backend", self.backends)
        candidate = Candidate(
            backend=backend,
            precision=pick(f"precision:{backend}", self.precisions[backend]),
            instances=pick("instances", self.instances),
            threads=pick(f"threads:{backend}", self.threads[backend])
            if backend in self.threads
            else None,
            choices=tuple(
                sorted(
                    (key, pick(f"{backend}:{key}", values))
                    for key, values in self.choice_parameters.get(backend, {}).items()
                )
            ),
        )
        if not self.batches:
            return candidate
        if not pick("dynamic_batching", (True, False)):
            # max_batch_size then only bounds client batches: the config's stays.
            return replace(candidate, max_batch_size=self.batch_sizes[-1])
        size = int(pick("max_batch_size", self.batch_sizes))
        preferred = int(pick("preferred_batch_size", (0, -1)))
        return replace(
            candidate,
            batching=True,
            max_batch_size=size,
            preferred_batch_size=size if preferred == -1 else 0,
            max_queue_delay_us=int(pick("max_queue_delay_us", self.queue_delays_us)),
        )

    def params(self, candidate: Candidate) -> dict[str, Any]:
        """The Optuna parameters that make ``candidate`` (to enqueue it as a trial)."""
        wanted: dict[str, Any] = {
            "backend": candidate.backend,
            f"precision:{candidate.backend}": candidate.precision,
            f"threads:{candidate.backend}": candidate.threads,
            "instances": candidate.instances,
        }
        wanted.update({f"{candidate.backend}:{k}": v for k, v in candidate.choices})
        if self.batches:
            wanted["dynamic_batching"] = candidate.batching
            if candidate.batching:
                wanted["max_batch_size"] = candidate.max_batch_size
                wanted["preferred_batch_size"] = -1 if candidate.preferred_batch_size else 0
                wanted["max_queue_delay_us"] = candidate.max_queue_delay_us
        knobs = self.knobs()
        return {k: v for k, v in wanted.items() if k in knobs}

    def grid(self) -> list[Candidate]:
        """Every candidate of the space that ``problem`` lets through (the exhaustive search
        the benchmark compares against)."""
        found: dict[Candidate, None] = {}
        for backend in self.backends:
            threads: tuple[int | None, ...] = self.threads.get(backend) or (None,)
            choice_sets = self.choice_parameters.get(backend, {})
            keys = sorted(choice_sets)
            for precision, instances, count, values in itertools.product(
                self.precisions[backend],
                self.instances,
                threads,
                itertools.product(*(choice_sets[k] for k in keys)),
            ):
                one = Candidate(
                    backend=backend,
                    precision=precision,
                    instances=instances,
                    threads=count,
                    choices=tuple(zip(keys, values, strict=True)),
                )
                for batched in self._batching_variants(one):
                    if self.problem(batched) is None:
                        found[batched] = None
        return list(found)

    def _batching_variants(self, candidate: Candidate) -> list[Candidate]:
        if not self.batches:
            return [candidate]
        # The batcher off: max_batch_size only bounds client batches; keep the config's.
        variants = [replace(candidate, max_batch_size=self.batch_sizes[-1])]
        for size, prefer, delay in itertools.product(
            self.batch_sizes, (False, True), self.queue_delays_us
        ):
            variants.append(
                replace(
                    candidate,
                    batching=True,
                    max_batch_size=size,
                    preferred_batch_size=size if prefer else 0,
                    max_queue_delay_us=delay,
                )
            )
        return variants

    def problem(self, candidate: Candidate) -> str | None:
        """Why a candidate is not worth measuring, or None."""
        if (
            self.hardware.kind == "KIND_CPU"
            and candidate.threads is not None
            and candidate.instances * candidate.threads > self.hardware.cpus
        ):
            return (
                f"oversubscribed: {candidate.instances} instances x {candidate.threads} "
                f"threads on {self.hardware.cpus} CPUs"
            )
        return None

    def baseline(self) -> Candidate:
        """The model's own config as a candidate, held to the space (a backend or precision
        the hardware fixes otherwise is replaced by the fixed one)."""
        base = self.base
        params = configs.parameters(base)
        backend = self.base_backend if self.base_backend in self.backends else self.backends[0]
        precision = params.get("precision", "fp32").lower()
        if precision not in self.precisions[backend]:
            precision = self.precisions[backend][0]
        instances = sum(max(1, g.count) for g in base.instance_group) or 1
        instances = min(self.instances, key=lambda n: abs(n - instances))
        threads = None
        if backend in self.threads:
            key = thread_parameter(backend)
            given = params.get(key or "")
            wanted = int(given) if given and given.isdigit() and int(given) > 0 else 0
            wanted = wanted or max(1, self.hardware.cpus // instances)
            threads = min(self.threads[backend], key=lambda n: abs(n - wanted))
        choices = tuple(
            sorted(
                (key, _closest_choice(params.get(key), values))
                for key, values in self.choice_parameters.get(backend, {}).items()
            )
        )
        candidate = Candidate(
            backend=backend,
            precision=precision,
            instances=instances,
            threads=threads,
            choices=choices,
        )
        if not self.batches:
            return candidate
        size = base.max_batch_size
        if not base.HasField("dynamic_batching"):
            return replace(candidate, max_batch_size=size)
        batching = base.dynamic_batching
        preferred = max(batching.preferred_batch_size, default=0)
        delay = batching.max_queue_delay_microseconds
        return replace(
            candidate,
            batching=True,
            max_batch_size=size,
            preferred_batch_size=size if preferred else 0,
            max_queue_delay_us=min(self.queue_delays_us, key=lambda d: abs(d - delay)),
        )

    def starts(self) -> list[Candidate]:
        """A few informed first candidates, tried right after the model's own config: the
        two corners of the space where throughput tends to be (on CPUs in bench/tuning.py's
        grids, the best configs of both bundled models sat near one of them). Both keep the
        baseline's backend, precision and choices and turn on the batcher with the middle
        queue delay offered:

        - one instance with every thread, full batches preferred (the config's largest): big
          batches amortize the per-batch cost (an MLP's matrix products);
        - one instance per CPU (GPU: two) with one thread each, a quarter of the largest
          batch, no preferred size: parallel small batches (a CNN whose single request
          already fills a core).

        Those the space refuses, or equal to the baseline, are left out. TPE's own startup
        trials follow, so these are a head start, not a restriction."""
        base = self.baseline()
        if self.hardware.kind == "KIND_CPU":
            wide = max(self.instances, key=lambda n: (n <= self.hardware.cpus, n))
        else:
            wide = min(2, self.instances[-1])
        threads = self.threads.get(base.backend)
        shapes = [
            replace(base, instances=1, threads=threads[-1] if threads else None),
            replace(base, instances=wide, threads=threads[0] if threads else None),
        ]
        if self.batches:
            largest = self.batch_sizes[-1]
            quarter = self.batch_sizes[-2] if len(self.batch_sizes) > 1 else largest
            delay = self.queue_delays_us[len(self.queue_delays_us) // 2]
            batching = replace(base, batching=True, max_queue_delay_us=delay)
            shapes = [
                replace(
                    batching,
                    instances=shapes[0].instances,
                    threads=shapes[0].threads,
                    max_batch_size=largest,
                    preferred_batch_size=largest,
                ),
                replace(
                    batching,
                    instances=shapes[1].instances,
                    threads=shapes[1].threads,
                    max_batch_size=quarter,
                    preferred_batch_size=0,
                ),
            ]
        found: list[Candidate] = []
        for candidate in shapes:
            if candidate != base and candidate not in found and self.problem(candidate) is None:
                found.append(candidate)
        return found

    def apply(self, candidate: Candidate) -> Any:
        """The model's config with ``candidate`` written into it (a new ModelConfig)."""
        config = model_config.ModelConfig()
        config.CopyFrom(self.base)
        if candidate.backend != self.base_backend or not config.backend:
            config.backend = candidate.backend
            config.platform = ""
        if self.batches:
            config.max_batch_size = candidate.max_batch_size
            if candidate.batching:
                config.dynamic_batching.SetInParent()
                batching = config.dynamic_batching
                del batching.preferred_batch_size[:]
                if candidate.preferred_batch_size:
                    batching.preferred_batch_size.append(candidate.preferred_batch_size)
                batching.max_queue_delay_microseconds = candidate.max_queue_delay_us
            else:
                config.ClearField("dynamic_batching")
        gpus = [g for group in self.base.instance_group for g in group.gpus]
        del config.instance_group[:]
        group = config.instance_group.add()
        group.kind = model_config.model_config_pb2.ModelInstanceGroup.Kind.Value(self.hardware.kind)
        group.count = candidate.instances
        if self.hardware.kind == "KIND_GPU" and gpus:
            group.gpus.extend(sorted(set(gpus)))
        params = config.parameters
        if candidate.backend != self.base_backend:
            info = backends.REGISTRY.get(self.base_backend)
            for key in (*info.int_parameters, *info.choice_parameters) if info else ():
                if key in params:
                    del params[key]
        info = backends.REGISTRY[candidate.backend]
        threads_key = thread_parameter(candidate.backend)
        if candidate.threads is not None and threads_key is not None:
            # One spelling only (PyTorch reads INTRA_OP_THREAD_COUNT and the lower case).
            for key in info.int_parameters:
                if key.lower() == threads_key.lower() and key in params:
                    del params[key]
            params[threads_key].string_value = str(candidate.threads)
        if candidate.precision == "fp32":
            if "precision" in params:
                del params["precision"]
        else:
            params["precision"].string_value = candidate.precision
        for key, value in candidate.choices:
            params[key].string_value = value
        return config


def thread_parameter(backend: str) -> str | None:
    """The parameter a backend reads its intra-op threads from: the first integer parameter
    of its registry entry that names threads (intra_op_thread_count, INFERENCE_NUM_THREADS)."""
    info = backends.REGISTRY.get(backend)
    for key in info.int_parameters if info else ():
        if "thread" in key.lower():
            return key
    return None


def _closest_choice(given: str | None, values: tuple[str, ...]) -> str:
    folded = {v.upper(): v for v in values}
    return folded.get((given or "").upper(), values[0])


def model_format(filenames: Sequence[str]) -> str | None:
    """The model format of a version directory's files, by their suffixes (``model.onnx``,
    ``resnet.onnx`` -> onnx)."""
    for name in filenames:
        found = backends.format_of(name)
        if found is not None:
            return found
    return None


def _batch_sizes(largest: int) -> tuple[int, ...]:
    """The config's max_batch_size, a quarter and a sixteenth of it (at least 1)."""
    return tuple(sorted({max(1, largest // 16), max(1, largest // 4), largest}))


def of(config: Any, model_format_: str, hardware: Hardware, slo_ms: float) -> Space:
    """The space of ``config`` (a ModelConfig) for a model of ``model_format_`` on
    ``hardware``, for a p95 SLO of ``slo_ms``; raises NotTunable when there is nothing to
    turn (an ensemble, no backend for the format on the device)."""
    name = config.name or "the model"
    if config.platform == "ensemble" or config.HasField("ensemble_scheduling"):
        members = sorted({s.model_name for s in config.ensemble_scheduling.step})
        raise NotTunable(
            f"'{name}' is an ensemble: its own config has nothing to tune, its members do the "
            f"work; tune each of them ({', '.join(members) or 'its steps'}) with --model"
        )
    base_backend = str(
        config.backend or backends.PLATFORMS.get(config.platform, config.platform) or ""
    )
    strings = any(
        t.data_type == model_config.model_config_pb2.TYPE_STRING
        for t in (*config.input, *config.output)
    )
    if hardware.backend is not None:
        found = [hardware.backend]
    else:
        found = backends.candidates(model_format_, hardware.kind, hardware.gpu, strings)
    usable = [
        b
        for b in found
        if b in backends.REGISTRY
        and backends.loads(b, model_format_)
        and backends.runs_on(b, hardware.kind, hardware.gpu)
    ]
    if not usable:
        raise NotTunable(
            f"no backend of this worker loads {model_format_} on {hardware.kind}"
            + (f" as {hardware.backend}" if hardware.backend else "")
        )
    precisions = {b: _precisions(b, model_format_, hardware) for b in usable}
    usable = [b for b in usable if precisions[b]]
    if not usable:
        raise NotTunable(f"precision {hardware.precision} runs on none of the backends")
    threads: dict[str, tuple[int, ...]] = {}
    if hardware.kind == "KIND_CPU":
        for b in usable:
            if thread_parameter(b) is not None:
                threads[b] = tuple(range(1, max(1, hardware.cpus) + 1))
    cap = MAX_GPU_INSTANCES if hardware.kind == "KIND_GPU" else MAX_CPU_INSTANCES
    if hardware.kind == "KIND_CPU":
        cap = min(cap, max(1, hardware.cpus))
    bound_us = int(slo_ms * 1000 / 4)
    delays = {d for d in QUEUE_DELAYS_US if d <= bound_us}
    return Space(
        base=config,
        model_format=model_format_,
        hardware=hardware,
        base_backend=base_backend,
        backends=tuple(usable),
        precisions=precisions,
        batch_sizes=_batch_sizes(config.max_batch_size) if config.max_batch_size > 0 else (),
        queue_delays_us=tuple(sorted(delays)),
        instances=tuple(range(1, cap + 1)),
        threads=threads,
        choice_parameters={
            b: dict(backends.REGISTRY[b].choice_parameters)
            for b in usable
            if backends.REGISTRY[b].choice_parameters
        },
    )


def _precisions(backend: str, model_format_: str, hardware: Hardware) -> tuple[str, ...]:
    """What the backend runs on the device that the device runs natively: fp32 always; bf16
    on CPUs with AMX/AVX512_BF16; fp16 and bf16 on GPUs; never int8 (a quantized model's own
    precision); only fp32 ("as built") for a file whose precision was fixed when it was
    built (a TensorRT engine). A fixed precision is the only one when the backend runs it."""
    info = backends.REGISTRY[backend]
    runs = info.precisions.get(hardware.kind, frozenset())
    if model_format_ in info.fixed_precision:
        runs = runs & {"fp32"}
    if hardware.precision is not None:
        return (hardware.precision,) if hardware.precision in runs else ()
    native = {"fp32"}
    if hardware.kind == "KIND_GPU":
        native |= {"fp16", "bf16"}
    elif hardware.bf16:
        native.add("bf16")
    return tuple(p for p in backends.PRECISIONS if p in runs and p in native)
