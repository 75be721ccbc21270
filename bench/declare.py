"""Declare benchmark: how long `POST /v1/incidents` takes as the network grows.

    .venv/bin/python -m bench.declare                       # 10, 10,000 and 100,000 members
    .venv/bin/python -m bench.declare --sizes 10 1000 --samples 50

The service runs as in bench/fanout.py (`rrmm api` on the embedded default, or on
`--database-url`/`--broker-url`), without a worker: each declaration writes its first chunk
of members (RRMM_TARGETING_CHUNK_MEMBERS) in the request and leaves the rest to a worker
that is not there, so the samples measure the request alone. Members are imported through
the API (`/v1/members/import`) up to each size in turn, all in one network that every
declaration targets; then `--samples` declarations are timed one after the other over HTTP.
Reports, per size: latency p50/p95/p99/max and the API process's CPU per declaration; then
the figures as one JSON document.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import httpx

from bench.fanout import (
    Backend,
    BenchError,
    Children,
    add_service_arguments,
    check_service_arguments,
    cpu_seconds,
    declare_body,
    import_members,
    log,
    machine_cpu,
    process_tree,
    run_bench,
    start_service,
)


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(share * (len(ordered) - 1))))
    return ordered[index]


def run(
    args: argparse.Namespace, tmp: Path, children: Children, backend_box: list[Backend]
) -> dict[str, Any]:
    with httpx.Client(timeout=60) as http:
        service = start_service(args, tmp, children, backend_box, http, with_worker=False)
        api_pid = service.api_child.process.pid
        imported = 0
        sizes: list[dict[str, Any]] = []
        for size in args.sizes:
            log(f"importing up to {size} members")
            imported += import_members(
                service.api,
                size - imported,
                f"http://127.0.0.1:{service.sinks.webhook_port}",
                first=imported,
            )
            latencies: list[float] = []
            targeted: set[int] = set()
            machine_before = machine_cpu()
            api_before = cpu_seconds(process_tree(api_pid))
            for _ in range(args.samples):
                started = time.perf_counter()
                response = service.api.post("/v1/incidents", json=declare_body())
                latencies.append(time.perf_counter() - started)
                if response.status_code != 202:
                    raise BenchError(f"declare failed: {response.status_code} {response.text}")
                targeted.add(response.json()["targeted"])
            api_cpu = cpu_seconds(process_tree(api_pid)) - api_before
            busy, total = (a - b for a, b in zip(machine_cpu(), machine_before, strict=True))
            if targeted != {size}:
                raise BenchError(f"declarations targeted {targeted}, not {size}")
            row = {
                "members": size,
                "samples": len(latencies),
                "latency_ms": {
                    "p50": round(statistics.median(latencies) * 1000, 1),
                    "p95": round(_percentile(latencies, 0.95) * 1000, 1),
                    "p99": round(_percentile(latencies, 0.99) * 1000, 1),
                    "max": round(max(latencies) * 1000, 1),
                },
                "api_cpu_ms_per_declare": round(api_cpu / len(latencies) * 1000, 1),
                "machine_busy_share": round(busy / total, 3) if total else None,
            }
            log(json.dumps(row))
            sizes.append(row)
    return {"benchmark": "declare", "backend": backend_box[0].name, "sizes": sizes}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.declare", description=__doc__.split("\n\n")[0] if __doc__ else None
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 10_000, 100_000])
    parser.add_argument("--samples", type=int, default=30, help="declarations per size")
    add_service_arguments(parser)
    args = parser.parse_args(argv)
    check_service_arguments(parser, args)
    if args.sizes != sorted(args.sizes) or args.sizes[0] < 1:
        parser.error("--sizes must be positive and increasing")
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_bench(parse_args(argv), run)


if __name__ == "__main__":
    raise SystemExit(main())
