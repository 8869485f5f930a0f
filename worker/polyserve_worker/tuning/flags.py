"""The tuner's flags: the one parser of ``polyserve tune``, and ``args``, which renders them.

Kept apart from the search so that the operator, which renders a tuning Job's command line
through ``args``, imports only this: no Optuna, no load generator, in the operator's image.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

#: Protocol names of the command line -> the load generator's modes.
PROTOCOLS = {"grpc": "grpc", "http": "http-binary", "http-json": "http-json"}
#: How a tuning Job hands its result over: its container's termination message.
TERMINATION_LOG = "/dev/termination-log"

#: Budget syntax: 30s, 10m, 1h30m (as the InferenceModel's durations).
DURATION = re.compile(r"^(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
#: Shortest budget worth starting: a worker start, one load and a few windows.
MIN_BUDGET_S = 10.0


def seconds(text: str) -> float:
    """``10m`` -> 600.0; a bare number is seconds."""
    text = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    found = DURATION.match(text)
    if not text or found is None:
        raise argparse.ArgumentTypeError(f"expected a duration such as 30s, 10m or 1h30m: {text!r}")
    hours, minutes, secs = (int(g) if g else 0 for g in found.groups())
    return float(hours * 3600 + minutes * 60 + secs)


def parser(prog: str = "polyserve tune") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog,
        description=(
            "Find the model config with the highest throughput whose p95 latency meets the "
            "SLO on this machine: a real worker, the benchmarks' load generator, an Optuna "
            "search within the budget."
        ),
    )
    p.add_argument("--model-repository", type=Path, required=True, help="Triton-layout folder")
    p.add_argument("--model", required=True, help="the model to tune (a folder of the repository)")
    p.add_argument("--slo-p95-ms", type=float, required=True, help="p95 latency bound (ms)")
    p.add_argument("--budget", type=seconds, default=600.0, help="time for the whole run (10m)")
    p.add_argument("--output", type=Path, required=True, help="folder for the config and report")
    p.add_argument(
        "--protocol",
        choices=sorted(PROTOCOLS),
        default="grpc",
        help="how clients call the model: grpc, http (binary tensors) or http-json",
    )
    p.add_argument(
        "--hardware",
        default="",
        help=(
            "what to hold fixed: pool=xeon|gpu, backend=NAME|auto, precision=fp32|bf16|fp16|auto "
            "(comma-separated; unset: this machine, every backend and precision it runs)"
        ),
    )
    p.add_argument(
        "--config-pbtxt",
        help="the model's config (Triton's text format) instead of the one in its folder",
    )
    p.add_argument(
        "--tolerance",
        type=float,
        default=0.01,
        help="largest output difference from fp32 a lower precision may make, relative to "
        "the largest fp32 output (0.01)",
    )
    p.add_argument("--window", type=float, help="seconds measured per concurrency (by budget)")
    p.add_argument("--max-trials", type=int, help="stop after this many trials")
    p.add_argument(
        "--grid", action="store_true", help="measure every candidate of the space (no sampler)"
    )
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed")
    p.add_argument("--result-file", type=Path, help="also write the summary JSON here")
    return p


def args(
    *,
    model_repository: str,
    model: str,
    slo_p95_ms: float,
    budget: str,
    output: str,
    protocol: str = "grpc",
    hardware_: str = "",
    config_pbtxt: str | None = None,
    result_file: str | None = None,
) -> list[str]:
    """The ``polyserve-worker`` arguments of one tuning run (the operator's Job renders its
    container through this, never as literals)."""
    rendered = [
        "tune",
        f"--model-repository={model_repository}",
        f"--model={model}",
        f"--slo-p95-ms={slo_p95_ms:g}",
        f"--budget={budget}",
        f"--output={output}",
        f"--protocol={protocol}",
    ]
    if hardware_:
        rendered.append(f"--hardware={hardware_}")
    if config_pbtxt is not None:
        rendered.append(f"--config-pbtxt={config_pbtxt}")
    if result_file is not None:
        rendered.append(f"--result-file={result_file}")
    try:
        parser().parse_args(rendered[1:])  # what the tuner would refuse fails here
    except SystemExit as exc:
        raise ValueError(f"the tuner would refuse {rendered[1:]}") from exc
    return rendered
