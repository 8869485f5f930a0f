"""Semantic checks the CRD schema cannot make: they need other objects or the worker's rules.

Used by the validating webhook (to refuse) and by the reconcilers (to report ``InvalidSpec``
in status when a resource got past a cluster without the webhook). Each problem is one
sentence that says what to change. Pure functions.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from polyserve_operator import api, rules
from polyserve_operator.render import engines, modelconfigs
from polyserve_worker import backends as worker_backends
from polyserve_worker import config as worker_config
from polyserve_worker import ensemble as worker_ensemble
from polyserve_worker import errors as worker_errors


def hardware(hw: api.Hardware, model_format: str | None = None) -> list[str]:
    """Backend, pool, precision and (for a model) its format must fit together: the CRD's
    CEL rules (``rules``), and what the worker's backend registry can run."""
    body = hw.model_dump(by_alias=True, exclude_none=True)
    problems = rules.broken(rules.HARDWARE, body)
    if model_format is not None:
        fit = {"modelFormat": {"name": model_format}, "hardware": body}
        problems += rules.broken(rules.MODEL_FORMAT, fit)
    backend = engines.choose(hw.backend, model_format, hw.pool)
    if problems or backend is None:  # auto in an ensemble: each member is checked alone
        return problems
    # The worker's registry says what each backend can run where: refuse here what the
    # worker would refuse at load, so the mistake surfaces at admission, not in a pod.
    info = worker_backends.REGISTRY[backend]
    kind = engines.POOL_KINDS[hw.pool]
    if hw.precision != "fp32" and model_format in info.fixed_precision:
        problems.append(
            f"a {model_format} file's precision was fixed when it was built (e.g. trtexec "
            f"--fp16): leave hardware.precision at fp32, or give the ONNX file and backend "
            f"{backend} builds the engine in {hw.precision}"
        )
    elif hw.precision not in info.precisions.get(kind, frozenset()):
        supported = ", ".join(sorted(info.precisions.get(kind, frozenset())))
        able = [
            name
            for name in worker_backends.candidates(model_format or info.formats[0], kind)
            if hw.precision in worker_backends.REGISTRY[name].precisions[kind]
        ]
        instead = f"; {hw.precision} runs on {', '.join(able)}" if able else ""
        problems.append(
            f"backend {backend} cannot run precision {hw.precision} on the {hw.pool} pool; "
            f"it runs {supported}{instead}"
        )
    return problems


def name(kind: str, resource_name: str) -> list[str]:
    """A name the rendered objects can carry (the API server would refuse them otherwise,
    after a ConfigMap was already applied): the CRD's CEL rules, with a suggestion."""
    problems = rules.broken(rules.RESOURCE, {"metadata": {"name": resource_name}})
    if not re.match(rules.NAME_PATTERN, resource_name):
        suggestion = re.sub(r"[^a-z0-9-]+", "-", resource_name.lower()).strip("-")
        problems = [
            f"{p} (e.g. {suggestion[: rules.NAME_MAX]})" if "lowercase" in p else p
            for p in problems
        ]
    return [f"{kind} {resource_name!r}: {p}" for p in problems]


def rollout(spec: api.Rollout | None) -> list[str]:
    """A rollout that can make progress: the CRD's CEL rules on the rollout, its canary,
    each step and each metric."""
    if spec is None:
        return []
    body = spec.model_dump(by_alias=True, exclude_none=True)
    problems = rules.broken(rules.ROLLOUT, body)
    canary = body.get("canary")
    if canary:
        problems += rules.broken(rules.CANARY, canary)
        for i, step in enumerate(canary.get("steps") or []):
            problems += [f"step {i}: {p}" for p in rules.broken(rules.CANARY_STEP, step)]
        for metric in (canary.get("analysis") or {}).get("metrics") or []:
            problems += [
                f"metric {metric['name']}: {p}" for p in rules.broken(rules.METRIC, metric)
            ]
    return problems


def _tiers_differ(spec: api.InferenceModelSpec) -> list[str]:
    """Two tiers on the same hardware are one tier with more replicas (spec.scaling)."""
    seen: dict[tuple[object, ...], str] = {}
    problems = []
    for tier in spec.tiers or []:
        hw = tier.hardware
        gpu = (hw.gpu.count, hw.gpu.product) if hw.gpu is not None and hw.pool == "gpu" else None
        backend = engines.choose(hw.backend, spec.model_format.name, hw.pool) or hw.backend
        key = (hw.pool, backend, hw.precision, gpu)
        if key in seen:
            problems.append(
                f"tiers {seen[key]} and {tier.name} run on the same hardware ({hw.pool}, "
                f"{backend}, {hw.precision}): a tier is a hardware profile; for more replicas "
                "of one, raise its replicas.max or use spec.scaling"
            )
        seen.setdefault(key, tier.name)
    return problems


def model(im: api.InferenceModel) -> list[str]:
    """Problems of one InferenceModel."""
    spec = im.spec
    problems = name("InferenceModel", im.metadata.name)
    problems += hardware(spec.hardware, spec.model_format.name)
    problems += rollout(spec.rollout)
    for tier in spec.tiers or []:
        problems += [
            f"tier {tier.name}: {p}" for p in hardware(tier.hardware, spec.model_format.name)
        ]
    names = [t.name for t in spec.tiers or []]
    if len(set(names)) != len(names):
        problems.append(f"tier names must be unique ({', '.join(names)})")
    problems += _tiers_differ(spec)
    if spec.tuning is None:
        problems += [
            f"tier {t.name}: give capacity, or spec.tuning to measure it"
            for t in spec.tiers or []
            if t.capacity is None
        ]
    if spec.scaling is not None:
        problems += rules.broken(
            rules.SCALING, spec.scaling.model_dump(by_alias=True, exclude_none=True)
        )
    problems += _tls(spec)
    cfg = spec.config
    if cfg is not None:
        problems += _gpus(cfg, spec.hardware)
        if cfg.platform == "ensemble":
            problems.append("config.platform ensemble belongs in an InferenceEnsemble")
        else:
            config = modelconfigs.for_model(_THIS, spec).to_proto()
            problems += _worker_says(lambda: worker_config.validate(config), f"model '{_THIS}'")
    return problems


def _tls(spec: api.InferenceModelSpec | api.InferenceEnsembleSpec) -> list[str]:
    """What reaches the pods in plain text cannot reach pods that serve TLS (the canary's
    mirror speaks TLS to them; Gateway API routes would need a BackendTLSPolicy)."""
    canary = spec.rollout.canary if spec.rollout is not None else None
    if spec.tls is None or canary is None:
        return []
    problems = []
    routing = canary.traffic_routing
    if routing is not None and routing.gateway_api is not None:
        problems.append(
            "spec.tls: Gateway API routes reach the pods in plain text; drop one, or route "
            "through the Services"
        )
    return problems


def _gpus(cfg: worker_config.ModelConfigSpec, hw: api.Hardware) -> list[str]:
    """Instance groups may name only the GPUs the pod gets (0..gpu.count-1)."""
    count = modelconfigs.gpu_count(hw)
    problems = []
    for group in cfg.instance_group or []:
        outside = [g for g in group.gpus or [] if not 0 <= g < count]
        if outside and count == 0:
            problems.append(
                f"config.instance_group names GPUs {group.gpus}, but pool {hw.pool} has none: "
                "remove gpus or set hardware.pool to gpu"
            )
        elif outside:
            problems.append(
                f"config.instance_group names GPUs {outside}, but each pod gets {count} "
                f"(hardware.gpu.count), seen as 0..{count - 1}: leave gpus out to use them all"
            )
    return problems


#: The name rendered configs get while validating; stripped from the worker's messages.
_THIS = "this"


def _worker_says(check: Callable[[], object], subject: str) -> list[str]:
    """The worker's own verdict on a config it will be given, as a list of problems."""
    try:
        check()
    except worker_errors.ModelLoadError as exc:
        return [str(exc).replace(f"{subject}: ", "").replace(f"{subject} ", "")]
    return []


def ensemble(
    ie: api.InferenceEnsemble,
    members: dict[str, api.InferenceModel | None],
) -> list[str]:
    """Problems of an ensemble, given each referenced model (None when missing).

    What is about this resource (its name, its members in the namespace, its step names and
    outputs map) is checked here; the graph itself (wiring, data types, shapes, the batch
    dimension, cycles) by the worker's own rules (``polyserve_worker.ensemble``), on the
    very config the operator renders, so the two can never disagree.
    """
    spec = ie.spec
    problems = name("InferenceEnsemble", ie.metadata.name) + hardware(spec.hardware)
    problems += rollout(spec.rollout)
    problems += _tls(spec)
    if len({s.name for s in spec.steps}) != len(spec.steps):
        problems.append("step names must be unique")
    for step in spec.steps:
        member = members.get(step.model_ref)
        if member is None:
            problems.append(
                f"step {step.name}: InferenceModel {step.model_ref} does not exist in this "
                "namespace; create it first"
            )
        elif member.spec.hardware.pool != spec.hardware.pool:
            # One worker process runs every backend it is given; what members must share
            # is the pool (the worker's image and nodes), not the backend.
            problems.append(
                f"step {step.name}: {step.model_ref} runs on pool "
                f"{member.spec.hardware.pool}, but the ensemble's worker runs on pool "
                f"{spec.hardware.pool}; members share one worker"
            )
    outputs = {o.name for o in spec.outputs}
    for step in spec.steps:
        for target in (step.outputs or {}).values():
            if target not in outputs:
                problems.append(
                    f"step {step.name} maps a model output to {target}, which is not in the "
                    f"ensemble's outputs ({', '.join(sorted(outputs))})"
                )
    if problems:
        return problems
    return _graph_problems(spec, members)


def _graph_problems(
    spec: api.InferenceEnsembleSpec, members: dict[str, api.InferenceModel | None]
) -> list[str]:
    """The worker's graph rules on the rendered ensemble config, in the resource's terms."""
    configs: dict[str, Any | None] = {}
    for member_name, member in members.items():
        known = member is not None and member.spec.config is not None
        if known and member is not None and member.spec.config is not None:
            known = bool(member.spec.config.input and member.spec.config.output)
        # Tensors left to be read from the model file are unknown until the pod loads it.
        configs[member_name] = (
            modelconfigs.for_model(member_name, member.spec).to_proto()
            if known and member is not None
            else None
        )
    graph = worker_ensemble.Ensemble(modelconfigs.for_ensemble(_THIS, spec).to_proto())
    described = []
    for problem in graph.problems(configs):
        if problem.step is None:
            described.append(f"the ensemble: {problem.text}")
        else:
            step = spec.steps[problem.step]
            described.append(f"step {step.name} ({step.model_ref}): {problem.text}")
    return described


def name_clash(kind: str, name: str, other_kind: str) -> str:
    """The problem of two resources whose children would share names."""
    return (
        f"an {other_kind} named {name} already exists in this namespace, and both would own "
        f"the worker objects named {name}: give this {kind} another name"
    )
