"""The benchmarks' load generator, as a script: ``polyserve_worker.tuning.loadgen``.

The generator moved into the worker package so that ``polyserve tune`` (which runs inside a
worker image, as a Kubernetes Job) measures with exactly what the benchmarks measure with;
this file keeps the path the benchmarks and their notes use, and its names for
``import loadgen``.

    python bench/loadgen.py --url 127.0.0.1:8001 --mode grpc --model mlp --concurrency 32
"""

from __future__ import annotations

import sys

from polyserve_worker.tuning.loadgen import (
    MODES,
    LoadResult,
    LoadSpec,
    Tensor,
    cpu_seconds,
    main,
    run_load,
    summarize,
)

__all__ = [
    "MODES",
    "LoadResult",
    "LoadSpec",
    "Tensor",
    "cpu_seconds",
    "main",
    "run_load",
    "summarize",
]

if __name__ == "__main__":
    sys.exit(main())
