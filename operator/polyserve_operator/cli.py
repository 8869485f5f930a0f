"""``polyserve``: the user's command line. ``polyserve render -f FILE.yaml`` prints, without a
cluster, the objects the operator would create, for GitOps review and for learning;
``polyserve rollout ...`` follows and steers canary rollouts; ``polyserve sandbox ...`` runs a
local fleet; ``polyserve tune ...`` finds a model's best config on this machine, or prints the
patch the operator's tuning Jobs measured.

An ensemble's members are looked up among the documents of the same files. Settings come
from ``POLYSERVE_OPERATOR_*`` exactly as the operator reads them, so the output matches.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

import pydantic
import yaml

from polyserve_operator import (
    api,
    render,
    rollout_commands,
    settings,
    tuning_commands,
    validating,
)


class RenderError(Exception):
    """A document that cannot be rendered; the message says why and what to change."""


def _documents(paths: list[str], stdin: TextIO) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        text = stdin.read() if path == "-" else Path(path).read_text()
        try:
            loaded = list(yaml.safe_load_all(text))
        except yaml.YAMLError as exc:
            raise RenderError(f"{path}: not valid YAML: {exc}") from exc
        docs += [d for d in loaded if isinstance(d, dict)]
    return docs


def render_documents(docs: list[dict[str, Any]], cfg: settings.Settings) -> list[dict[str, Any]]:
    """Every object the operator would create for the InferenceModels and
    InferenceEnsembles among ``docs``; other kinds are ignored."""
    parsed: list[api.Resource] = []
    for doc in docs:
        if doc.get("apiVersion") != api.API_VERSION:
            continue
        if doc.get("kind") not in ("InferenceModel", "InferenceEnsemble"):
            continue
        name = doc.get("metadata", {}).get("name", "?")
        try:
            parsed.append(api.parse(doc))
        except pydantic.ValidationError as exc:
            raise RenderError(f"{doc['kind']} {name}: {exc}") from exc
    models = {
        (r.metadata.namespace, r.metadata.name): r
        for r in parsed
        if isinstance(r, api.InferenceModel)
    }
    out: list[dict[str, Any]] = []
    for resource in parsed:
        where = f"{resource.kind} {resource.metadata.namespace}/{resource.metadata.name}"
        if isinstance(resource, api.InferenceModel):
            problems = validating.model(resource)
            workload = None if problems else render.model_workload(resource)
        else:
            ns = resource.metadata.namespace
            members: dict[str, api.InferenceModel | None] = {
                s.model_ref: models.get((ns, s.model_ref)) for s in resource.spec.steps
            }
            problems = validating.ensemble(resource, members)
            present = {k: v for k, v in members.items() if v is not None}
            workload = None if problems else render.ensemble_workload(resource, present)
        if problems:
            raise RenderError(f"{where}: " + "; ".join(problems))
        assert workload is not None
        out += render.objects(workload, cfg)
    return out


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (config.pbtxt) as literal blocks, readable in review."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(objects: list[dict[str, Any]]) -> str:
    """YAML documents, as ``kubectl apply -f -`` takes them."""
    return yaml.dump_all(objects, Dumper=_Dumper, sort_keys=False)


def _sandbox() -> Any:
    """The local fleet's commands, when the sandbox extra is installed (imported only by
    this command line: the operator itself never imports the sandbox)."""
    try:
        from polyserve_sandbox import cli as sandbox_cli
    except ImportError:
        return None
    return sandbox_cli


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="polyserve", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    render_cmd = commands.add_parser(
        "render", help="print the Kubernetes objects the operator would create"
    )
    render_cmd.add_argument(
        "-f", "--filename", action="append", required=True, help="YAML file, or - for stdin"
    )
    rollout_commands.add_commands(commands)
    tuning_commands.add_commands(commands)
    sandbox = _sandbox()
    if sandbox is not None:
        sandbox.add_commands(commands)
    given = sys.argv[1:] if argv is None else argv
    if given[:1] == ["tune"]:  # the tuner's own parser takes the rest
        return tuning_commands.run(given[1:])
    args = parser.parse_args(given)
    if args.command == "sandbox" and sandbox is not None:
        code: int = sandbox.run(args)
        return code
    if args.command == "rollout":
        return rollout_commands.run(args)
    cfg = settings.Settings()
    try:
        objects = render_documents(_documents(args.filename, sys.stdin), cfg)
    except (RenderError, OSError) as exc:
        print(f"polyserve render: {exc}", file=sys.stderr)
        return 1
    if not objects:
        print("polyserve render: no InferenceModel or InferenceEnsemble found", file=sys.stderr)
        return 1
    sys.stdout.write(dump(objects))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
