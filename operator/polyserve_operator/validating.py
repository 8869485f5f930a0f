"""Semantic checks the CRD schema cannot make: they need other objects or the worker's rules.

Used by the validating webhook (to refuse) and by the reconcilers (to report ``InvalidSpec``
in status when a resource got past a cluster without the webhook). Each problem is one
sentence that says what to change. Pure functions.
"""

from __future__ import annotations

from collections.abc import Callable

from polyserve_operator import api
from polyserve_operator.render import modelconfigs
from polyserve_worker import backends as worker_backends
from polyserve_worker import config as worker_config
from polyserve_worker import ensemble as worker_ensemble
from polyserve_worker import errors as worker_errors


def hardware(hw: api.Hardware) -> list[str]:
    """Backend, pool and precision must fit together (the CRD's CEL rules, again)."""
    problems = []
    if hw.backend in api.GPU_BACKENDS and hw.pool != "gpu":
        problems.append(f"backend {hw.backend} needs a GPU: set hardware.pool to gpu")
    if hw.backend in api.CPU_BACKENDS and hw.pool != "xeon":
        problems.append(
            f"backend {hw.backend} runs on the xeon pool; on gpu use tensorrt, "
            "onnxruntime-cuda or pytorch-cuda"
        )
    if hw.gpu is not None and hw.pool != "gpu":
        problems.append("hardware.gpu is only for pool gpu: remove it or set pool to gpu")
    if hw.precision == "bf16" and hw.pool != "xeon":
        problems.append("precision bf16 is for the xeon pool (AMX); use fp16 on GPUs")
    # The worker's registry says what each backend can run where: refuse here what the
    # worker would refuse at load, so the mistake surfaces at admission, not in a pod.
    engine = modelconfigs.BACKENDS[hw.backend][0]
    kind = "KIND_GPU" if hw.pool == "gpu" else "KIND_CPU"
    info = worker_backends.REGISTRY.get(engine)
    if info is not None and kind in info.precisions:
        supported = info.precisions[kind]
        if hw.precision not in supported and engine == "tensorrt":
            problems.append(
                "a TensorRT engine's precision is fixed when it is built (e.g. trtexec "
                "--fp16); leave hardware.precision at fp32 for backend tensorrt"
            )
        elif hw.precision not in supported:
            problems.append(
                f"backend {hw.backend} cannot run precision {hw.precision} on the {hw.pool} "
                f"pool; it runs {', '.join(sorted(supported))} (bf16 on xeon: use openvino)"
            )
    return problems


def model(spec: api.InferenceModelSpec) -> list[str]:
    """Problems of one InferenceModel spec."""
    problems = hardware(spec.hardware)
    if spec.model_format.name == "tensorrt" and spec.hardware.backend != "tensorrt":
        problems.append("a tensorrt engine (model.plan) needs backend tensorrt on pool gpu")
    cfg = spec.config
    if cfg is not None:
        if cfg.platform == "ensemble":
            problems.append("config.platform ensemble belongs in an InferenceEnsemble")
        else:
            config = modelconfigs.for_model(_THIS, spec).to_proto()
            problems += _worker_says(lambda: worker_config.validate(config), f"model '{_THIS}'")
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


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle in a step graph (step -> the steps it reads from), if there is one."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def ensemble(
    ie: api.InferenceEnsembleSpec,
    members: dict[str, api.InferenceModel | None],
) -> list[str]:
    """Problems of an ensemble graph, given each referenced model (None when missing)."""
    problems = hardware(ie.hardware)
    steps = {s.name: s for s in ie.steps}
    if len(steps) != len(ie.steps):
        problems.append("step names must be unique")
    inputs = {t.name: t for t in ie.inputs}
    for step in ie.steps:
        member = members.get(step.model_ref)
        if member is None:
            problems.append(
                f"step {step.name}: InferenceModel {step.model_ref} does not exist in this "
                "namespace; create it first"
            )
        elif member.spec.hardware.backend != ie.hardware.backend:
            problems.append(
                f"step {step.name}: {step.model_ref} uses backend "
                f"{member.spec.hardware.backend}, but the ensemble's worker runs "
                f"{ie.hardware.backend}; members share one worker"
            )
    edges: dict[str, set[str]] = {name: set() for name in steps}
    for step in ie.steps:
        member = members.get(step.model_ref)
        member_inputs = (
            {t.name: t for t in (member.spec.config.input or [])}
            if member and member.spec.config
            else {}
        )
        for model_input, source in step.inputs.items():
            if member_inputs and model_input not in member_inputs:
                problems.append(
                    f"step {step.name}: {step.model_ref} has no input {model_input} "
                    f"(it has {', '.join(sorted(member_inputs))})"
                )
            source_type: str | None = None
            if "." in source:
                producer_name, output = source.split(".", 1)
                producer = steps.get(producer_name)
                if producer is None:
                    problems.append(
                        f"step {step.name}: input {model_input} reads {source}, "
                        f"but there is no step {producer_name}"
                    )
                    continue
                edges[step.name].add(producer_name)
                pmember = members.get(producer.model_ref)
                poutputs = (
                    {t.name: t for t in (pmember.spec.config.output or [])}
                    if pmember and pmember.spec.config
                    else {}
                )
                if poutputs and output not in poutputs:
                    problems.append(
                        f"step {step.name}: {producer.model_ref} (step {producer_name}) has "
                        f"no output {output} (it has {', '.join(sorted(poutputs))})"
                    )
                elif output in poutputs:
                    source_type = poutputs[output].data_type
            elif source in inputs:
                source_type = inputs[source].data_type
            else:
                problems.append(
                    f"step {step.name}: input {model_input} reads {source}, which is neither an "
                    "ensemble input nor STEP.OUTPUT"
                )
            wanted = member_inputs.get(model_input)
            if source_type and wanted is not None and wanted.data_type != source_type:
                problems.append(
                    f"step {step.name}: {source} is {source_type} but {step.model_ref} input "
                    f"{model_input} is {wanted.data_type}"
                )
    loop = _cycle(edges)
    if loop:
        problems.append("the steps form a cycle: " + " -> ".join(loop))
    produced: dict[str, list[str]] = {}
    for step in ie.steps:
        for output, target in (step.outputs or {}).items():
            produced.setdefault(target, []).append(f"{step.name}.{output}")
    for tensor in ie.outputs:
        sources = produced.get(tensor.name, [])
        if not sources:
            problems.append(f"ensemble output {tensor.name} is produced by no step's outputs map")
        elif len(sources) > 1:
            problems.append(
                f"ensemble output {tensor.name} is produced by {', '.join(sources)}: pick one"
            )
    for target in produced:
        if target not in {o.name for o in ie.outputs}:
            problems.append(f"a step maps to {target}, which is not in the ensemble's outputs")
    if not problems:
        problems += _as_the_worker_sees_it(ie, members)
    return problems


def _as_the_worker_sees_it(
    ie: api.InferenceEnsembleSpec, members: dict[str, api.InferenceModel | None]
) -> list[str]:
    """Run the worker's own graph validation on the configs the operator will render.

    This catches what only the worker's rules know, shapes and the batch dimension above all
    (an ensemble with max_batch_size 0 feeding members that batch). Members whose config
    leaves tensors to be read from the model file cannot be checked before the pod runs.
    """
    configs = {}
    for name, member in members.items():
        if member is None or member.spec.config is None:
            return []
        if not member.spec.config.input or not member.spec.config.output:
            return []
        configs[name] = modelconfigs.for_model(name, member.spec).to_proto()
    graph = worker_ensemble.Ensemble(modelconfigs.for_ensemble(_THIS, ie).to_proto())
    return _worker_says(lambda: graph.validate(configs), f"ensemble '{_THIS}'")


def name_clash(kind: str, name: str, other_kind: str) -> str:
    """The problem of two resources whose children would share names."""
    return (
        f"an {other_kind} named {name} already exists in this namespace, and both would own "
        f"the worker objects named {name}: give this {kind} another name"
    )
