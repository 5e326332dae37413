"""Guarded model service benchmark: predict throughput and latency, and extraction with and without guards.

Usage::

    .venv/bin/python bench/serve.py [--requests 2000] [--concurrency 8] [--json FILE]
        [--part throughput|extraction|all]

- ``throughput``: the shipped LeNet-5 served twice, each in its own
  process on a free 127.0.0.1 port with one torch thread. One server is
  ``mlwarden serve`` with every guard but the detector, and an API key whose
  limits are too high to throttle the load. The other is a bare FastAPI
  endpoint, written here, that parses the same JSON and runs the same model
  with no guard. Each gets the same bounded load: ``--requests``
  single-image requests over 200 distinct test images, ``--concurrency``
  in flight, at most 120 s. The table gives accepted requests per second,
  the median and 99th-percentile latency, the server's CPU time per
  request, and the guarded/bare ratios.
- ``extraction``: Jacobian-based augmentation and Knockoff Nets (public
  transfer set) through the API of a service with only authentication
  (unguarded) and of the default guarded service (monitor blocking, full
  scores), with the copy's agreement with the victim on 1,000 test images
  at each query checkpoint.

The load generator runs in this process, so its own CPU use competes with
the server on a 2-core machine; both servers pay that cost alike.
"""

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_healthy(url: str, process: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"server at {url} did not become healthy in {timeout:g} s")


def bare_server(port: int) -> None:
    """Serve the shipped LeNet-5 behind a bare FastAPI endpoint: JSON in, probabilities out, no guard."""
    import numpy as np
    import torch
    import uvicorn
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import JSONResponse

    from mlwarden.models import load_pretrained

    torch.set_num_threads(1)
    model, _ = load_pretrained("lenet5")
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/predict")
    async def predict(request: Request) -> JSONResponse:
        body = await request.body()

        def run() -> list[dict[str, Any]]:
            inputs = torch.from_numpy(np.asarray(json.loads(body)["inputs"], dtype=np.float32))
            with torch.no_grad():
                probabilities = torch.softmax(model(inputs), dim=1)
            return [{"label": int(row.argmax()), "probabilities": row.tolist()} for row in probabilities]

        return JSONResponse({"predictions": await run_in_threadpool(run)})

    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _bodies(count: int = 200) -> list[bytes]:
    from mlwarden.data import load_dataset

    images = load_dataset("fashion-mnist", "test").images[5000 : 5000 + count]
    return [json.dumps({"inputs": image[None].tolist()}).encode() for image in images]


def _cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU time of a process, from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(
    url: str, token: str | None, bodies: list[bytes], requests: int, concurrency: int, pid: int
) -> dict[str, Any]:
    from mlwarden.attacks.api import send_load

    send_load(url, bodies[:20], token=token, requests=50, concurrency=concurrency, max_seconds=30)  # warm-up
    before = _cpu_seconds(pid)
    result = send_load(url, bodies, token=token, requests=requests, concurrency=concurrency, max_seconds=120).to_dict()
    # Server CPU time per request does not depend on how busy the rest of the machine is, unlike latency.
    result["server_cpu_ms_per_request"] = round(1000 * (_cpu_seconds(pid) - before) / max(result["requests"], 1), 3)
    return result


def throughput(requests: int, concurrency: int) -> dict[str, Any]:
    from mlwarden.serve import ServiceDatabase
    from mlwarden.serve.keys import KeyStore

    bodies = _bodies()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as folder:
        database = Path(folder) / "bench.db"
        with ServiceDatabase(database) as opened:
            _, token = KeyStore(opened).create("bench", ["predict"], rate=1e6, burst=1_000_000, daily_quota=10**9)
        servers = {
            "guarded": [
                sys.executable, "-m", "mlwarden.cli.main", "serve", "--db", str(database),
                "--guards", "auth,rate-limit,payload,monitor,hardening", "--log-format", "text",
            ],
            "bare": [sys.executable, str(Path(__file__).resolve()), "--bare-server"],
        }
        for name, command in servers.items():
            port = _free_port()
            log = open(Path(folder) / f"{name}.log", "wb")
            process = subprocess.Popen([*command, "--port", str(port)], stdout=log, stderr=log, cwd=ROOT)
            url = f"http://127.0.0.1:{port}"
            try:
                _wait_healthy(url, process)
                results[name] = _load(url, token if name == "guarded" else None, bodies, requests, concurrency, process.pid)
            finally:
                process.terminate()
                process.wait(60)
                log.close()
    guarded, bare = results["guarded"], results["bare"]
    results["ratio"] = {
        "throughput": round(guarded["accepted_per_second"] / bare["accepted_per_second"], 3),
        "p50": round(guarded["p50_ms"] / bare["p50_ms"], 3),
        "p99": round(guarded["p99_ms"] / bare["p99_ms"], 3),
        "server_cpu": round(guarded["server_cpu_ms_per_request"] / bare["server_cpu_ms_per_request"], 3),
    }
    results["settings"] = {"requests": requests, "concurrency": concurrency, "images_per_request": 1}
    return results


def extraction() -> dict[str, Any]:
    import torch

    from mlwarden.attacks.extraction import ExtractionEvaluation, JacobianAugmentation, KnockoffNets
    from mlwarden.data import load_dataset
    from mlwarden.serve import (
        OutputPolicy,
        ServiceClient,
        ServiceConfig,
        ServiceQueryModel,
        ServiceThread,
        build_service,
        load_served_model,
    )

    torch.set_num_threads(1)
    model = load_served_model("lenet5")
    test = load_dataset("fashion-mnist", "test")
    evaluation = ExtractionEvaluation(model.module, test.images[:1000], test.labels[:1000])
    pool = test.images[2000:]
    attacks = {
        "jacobian": JacobianAugmentation(seed_size=50, rounds=7, epochs=10),
        "knockoff": KnockoffNets(epochs=10, checkpoints=[100, 200, 400, 800, 1600, 3200]),
    }
    configurations = {
        "unguarded": ServiceConfig().with_guards({"auth"}),
        "guarded": ServiceConfig(),
        "guarded, label-only": ServiceConfig(output=OutputPolicy(mode="label")),
    }
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for attack_name, attack in attacks.items():
            for label, config in configurations.items():
                service = build_service(model, Path(folder) / f"{attack_name}-{label}.db", config)
                _, token = service.keys.create("attacker", ["predict"], rate=1000, burst=1000)
                started = time.perf_counter()
                with ServiceThread(service) as thread, ServiceClient(thread.url, token) as client:
                    result = attack.extract(ServiceQueryModel(client), pool, budget=3200, evaluation=evaluation)
                    alerts = service.alerts()
                rows.append(
                    {
                        "attack": attack_name,
                        "service": label,
                        "queries": result.queries,
                        "stopped": result.stopped,
                        "first_alert_queries": alerts[-1]["queries"] if alerts else None,
                        "checkpoints": [checkpoint.to_dict() for checkpoint in result.checkpoints],
                        "seconds": round(time.perf_counter() - started, 1),
                    }
                )
                print(f"{attack_name} {label}: {result.queries} queries, agreement {result.agreement:.4f}", flush=True)
    return {"rows": rows}


def _markdown(document: dict[str, Any]) -> str:
    lines = []
    if "throughput" in document:
        t = document["throughput"]
        lines += ["| server | requests/s | p50 latency (ms) | p99 latency (ms) | server CPU ms per request |"]
        lines += ["|---|---|---|---|---|"]
        for label, name in (("bare FastAPI endpoint", "bare"), ("mlwarden serve (guarded)", "guarded")):
            row = t[name]
            lines.append(
                f"| {label} | {row['accepted_per_second']} | {row['p50_ms']} | {row['p99_ms']} | "
                f"{row['server_cpu_ms_per_request']} |"
            )
        ratio = t["ratio"]
        lines += [f"| guarded / bare | {ratio['throughput']} | {ratio['p50']} | {ratio['p99']} | {ratio['server_cpu']} |", ""]
    if "extraction" in document:
        rows = document["extraction"]["rows"]
        services = list(dict.fromkeys(row["service"] for row in rows))
        lines += ["| attack | queries | " + " | ".join(f"agreement, {name}" for name in services) + " |"]
        lines += ["|---|---|" + "---|" * len(services)]
        for attack in dict.fromkeys(row["attack"] for row in rows):
            runs = {row["service"]: row for row in rows if row["attack"] == attack}
            curves = {name: {c["queries"]: c["agreement"] for c in run["checkpoints"]} for name, run in runs.items()}
            for queries in sorted({q for curve in curves.values() for q in curve}):
                cells = []
                for name in services:
                    value = curves[name].get(queries)
                    if value is not None:
                        cells.append(f"{100 * value:.1f}%")
                    elif runs[name]["stopped"] and queries > runs[name]["queries"]:
                        cells.append("blocked")
                    else:
                        cells.append("")
                lines.append(f"| {attack} | {queries} | " + " | ".join(cells) + " |")
            for name in services:
                run = runs[name]
                flagged = run["first_alert_queries"]
                note = f"flagged after {flagged} queries, copy kept {run['queries']} answers" if flagged else "not flagged"
                lines.append(f"| {attack} ({name}) | | {note} |" + " |" * (len(services) - 1))
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--part", choices=("throughput", "extraction", "all"), default="all")
    parser.add_argument("--json", type=Path, help="write the results to this file")
    parser.add_argument("--bare-server", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_server:
        bare_server(args.port)
        return 0
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    document: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}}
    if args.part in ("throughput", "all"):
        document["throughput"] = throughput(args.requests, args.concurrency)
    if args.part in ("extraction", "all"):
        document["extraction"] = extraction()
    if args.json:
        args.json.write_text(json.dumps(document, indent=2) + "\n")
    print(_markdown(document))
    return 0


if __name__ == "__main__":
    sys.exit(main())
