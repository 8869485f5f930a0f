"""What request mirroring costs the stable worker: throughput with mirroring off and at 100%.

    .venv/bin/python bench/mirroring.py [--duration 8] [--concurrency 8] [--out bench/RESULTS.md]

Two workers serve the bundled ``mlp``: "stable", started with ``--mirror-config`` pointing at
a file that does not exist yet, and an idle "canary". ``bench/loadgen.py`` drives stable
over gRPC and binary HTTP, first with no file (mirroring off), then with a file that copies
100% of mlp's requests to the canary. Same process, same warm caches: only the mirror
differs. Reported per point: infer/s and latency as clients see them, stable's CPU per
inference (the cost of mirroring itself, which barely moves when others share the cores),
the canary's CPU share, and the copies by result (agree, dropped, ...).

On a small machine the canary runs on the same cores and does the same inference work as
stable for every copy, so infer/s falls for that reason too: read stable's us/inf for
what mirroring costs the stable pod, infer/s for what it costs a box that holds both.
It knows nothing about the worker's internals: flags, the file format and /metrics only.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

import loadgen  # noqa: E402
from run import write_section  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Worker:
    def __init__(self, repo: Path, *flags: str) -> None:
        self.http, self.grpc, self.metrics = free_port(), free_port(), free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "polyserve_worker.main",
                f"--model-repository={repo}",
                "--host=127.0.0.1",
                f"--http-port={self.http}",
                f"--grpc-port={self.grpc}",
                f"--metrics-port={self.metrics}",
                *flags,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: _status(f"http://127.0.0.1:{self.http}/v2/health/ready") == 200)

    def samples(self, name: str) -> dict[str, float]:
        """result label -> value of one mirror counter (summed over its other labels)."""
        url = f"http://127.0.0.1:{self.metrics}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        out: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name:
                    key = s.labels.get("result", "")
                    out[key] = out.get(key, 0.0) + s.value
        return out

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return int(response.status)
    except OSError:
        return 0


def wait_for(condition: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError("timed out")
        time.sleep(0.1)


def point(stable: Worker, canary: Worker, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = loadgen.LoadSpec(
        url=f"127.0.0.1:{stable.grpc if mode == 'grpc' else stable.http}",
        mode=mode,
        model="mlp",
        input_name="INPUT0",
        output_name="OUTPUT0",
        shape=(1, 256),
        concurrency=args.concurrency,
        warmup_s=2.0,
        duration_s=args.duration,
        watch_pid=stable.proc.pid,
    )
    before = stable.samples("polyserve_mirror_requests_total")
    canary_cpu = loadgen.cpu_seconds(canary.proc.pid)
    started = time.monotonic()
    result = loadgen.run_load(spec)
    canary_share = (loadgen.cpu_seconds(canary.proc.pid) - canary_cpu) / (
        time.monotonic() - started
    )
    after = stable.samples("polyserve_mirror_requests_total")
    copies = {k: int(after[k] - before.get(k, 0)) for k in after}
    return {"result": result, "canary_cpu": canary_share, "copies": copies}


def _us_per_infer(result: loadgen.LoadResult) -> float:
    return 1e6 * result.server_cpu / result.infer_per_s if result.infer_per_s else float("nan")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds measured")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, help="write a section into this results file")
    args = parser.parse_args(argv)
    scratch = Path(tempfile.mkdtemp(prefix="polyserve-mirror-bench-"))
    try:
        subprocess.run(
            [sys.executable, str(ROOT / "examples" / "build_models.py"), str(scratch / "base")],
            check=True,
            capture_output=True,
        )
        repo = scratch / "repo"
        shutil.copytree(scratch / "base" / "mlp", repo / "mlp")
        mirror = scratch / "mirror.yaml"
        canary = Worker(repo)
        stable = Worker(repo, f"--mirror-config={mirror}")
        rows = []
        try:
            for state in ("off", "100%"):
                if state != "off":
                    mirror.write_text(
                        f"models:\n  mlp: {{target: '127.0.0.1:{canary.grpc}', revision: bench}}\n"
                    )
                    wait_for(lambda: "agree" in stable.samples("polyserve_mirror_requests_total"))
                for mode in ("grpc", "http-binary"):
                    rows.append((state, mode, point(stable, canary, mode, args)))
        finally:
            stable.stop()
            canary.stop()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    lines = [
        f"### Request mirroring: mlp, c={args.concurrency}, {args.duration:g} s per point",
        "",
        f"`bench/mirroring.py`; 1-min load average at the end: {load} (the canary, the "
        "stable worker and the load generator share the machine's cores).",
        "",
        "| mirror | protocol | infer/s | p50 ms | p95 ms | stable CPU | stable us/inf | "
        "canary CPU | copies (warm-up too) |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for state, mode, data in rows:
        r = data["result"]
        per_inf = _us_per_infer(r)
        copies = ", ".join(f"{k} {v}" for k, v in sorted(data["copies"].items()) if v) or "-"
        lines.append(
            f"| {state} | {mode} | {r.infer_per_s:.0f} | {r.p50_ms:.2f} | {r.p95_ms:.2f} | "
            f"{100 * r.server_cpu:.0f}% | {per_inf:.0f} | {100 * data['canary_cpu']:.0f}% | "
            f"{copies} |"
        )
    cost = {(state, mode): _us_per_infer(data["result"]) for state, mode, data in rows}
    deltas = ", ".join(
        f"{mode} {cost[('100%', mode)] - cost[('off', mode)]:+.0f} us"
        for mode in ("grpc", "http-binary")
    )
    lines += [
        "",
        f"What a copy costs stable (CPU per inference, 100% minus off): {deltas}; a `percent` "
        "or `rate` sample costs that share of it. The rest of the drop in infer/s is the "
        "canary's own inference of every copy on the same cores.",
    ]
    print("\n".join(lines))
    if args.out:
        write_section(args.out, "mirroring", lines)
    print(json.dumps([{"mirror": s, "mode": m, **d["copies"]} for s, m, d in rows]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
