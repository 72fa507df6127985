"""Load test of ``ragkit serve``: N streamed chat completions at a bounded concurrency, on loopback.

    python benchmarks/load_test.py [--requests 200] [--concurrency 8] [--server-concurrency N] [--pipeline FILE]

What it measures:

* It starts ``ragkit serve PIPELINE --host 127.0.0.1 --port <free> --max-queue <2 x concurrency>``
  as a subprocess (the real CLI, uvicorn, the bundled models) and waits for ``/health``; start-up
  and warm-up are not counted.
* ``--concurrency`` client workers send ``--requests`` streamed ``POST /v1/chat/completions``
  requests in total, each asking one of the fixture questions (``fixtures/text/questions.jsonl``,
  in turn), and read the event stream to ``data: [DONE]``.
* Latency is from sending a request to the end of its stream; TTFT is to the first content chunk.
  Throughput is completed requests divided by the wall time from the first request to the last
  answer. An error is any non-200 status, an ``error`` event, a stream without ``[DONE]``, or a
  client exception (per-request time-out ``--timeout``).
* The server runs ``--server-concurrency`` pipeline runs at once (default: the server's own, 4 for
  a pipeline whose components are all thread-safe, as the shipped ones are; the local model decodes
  concurrent runs' answers in batches); waiting requests queue in the server: the queue depth is
  sampled from ``/metrics`` every 0.5 s.

Only loopback traffic; the run is bounded in requests and in time (``--deadline``), and the server
is always stopped. Writes ``benchmarks/results/load_test.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PIPELINE = ROOT / "benchmarks" / "pipelines" / "text_rag_small.yaml"
QUESTIONS = ROOT / "fixtures" / "text" / "questions.jsonl"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pct(values: list[float], q: float) -> float | None:
    """The q-th percentile (nearest rank), or None without values."""
    if not values:
        return None
    s = sorted(values)
    k = max(0, min(len(s) - 1, int(round(q / 100 * len(s) + 0.5)) - 1))
    return s[k]


async def _one(client: Any, url: str, model: str, question: str, timeout: float) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "stream": True}
    start = time.perf_counter()
    first: float | None = None
    pieces: list[str] = []
    try:
        async with client.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=timeout) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode(errors="replace")
                return {"ok": False, "status": resp.status_code, "error": text[:300], "seconds": time.perf_counter() - start}
            done = False
            async for line in resp.aiter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return {"ok": False, "status": 200, "error": str(event["error"])[:300], "seconds": time.perf_counter() - start}
                for choice in event.get("choices", []):
                    piece = choice.get("delta", {}).get("content")
                    if piece:
                        if first is None:
                            first = time.perf_counter() - start
                        pieces.append(piece)
            if not done:
                return {"ok": False, "status": 200, "error": "stream ended without [DONE]", "seconds": time.perf_counter() - start}
    except Exception as e:  # noqa: BLE001  (every failure counts as an error of the run)
        return {"ok": False, "status": None, "error": f"{type(e).__name__}: {e}"[:300], "seconds": time.perf_counter() - start}
    return {"ok": True, "status": 200, "seconds": time.perf_counter() - start, "ttft": first, "answer": "".join(pieces).strip()}


async def _sample_queue(client: Any, url: str, samples: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        try:
            text = (await client.get(f"{url}/metrics", timeout=5)).text
            for line in text.splitlines():
                if line.startswith("ragkit_queue_depth{"):
                    samples.append(float(line.split()[-1]))
        except Exception:  # noqa: BLE001  (a missed sample is not an error of the run)
            pass
        try:
            await asyncio.wait_for(stop.wait(), 0.5)
        except asyncio.TimeoutError:
            pass


async def _load(url: str, model: str, questions: list[str], n: int, concurrency: int, timeout: float, deadline: float) -> dict[str, Any]:
    import httpx

    results: list[dict[str, Any]] = []
    todo = list(range(n))
    queue_samples: list[float] = []
    stop = asyncio.Event()
    limits = httpx.Limits(max_connections=concurrency + 2, max_keepalive_connections=concurrency + 2)
    async with httpx.AsyncClient(limits=limits) as client:
        sampler = asyncio.create_task(_sample_queue(client, url, queue_samples, stop))
        end_by = time.monotonic() + deadline

        async def worker() -> None:
            while todo and time.monotonic() < end_by:
                i = todo.pop(0)
                results.append({"i": i, **await _one(client, url, model, questions[i % len(questions)], timeout)})

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
        stop.set()
        await sampler
        metrics = (await client.get(f"{url}/metrics", timeout=10)).text
    return {"results": results, "wall": wall, "queue_samples": queue_samples, "not_sent": len(todo), "metrics": metrics}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pipeline", default=str(DEFAULT_PIPELINE))
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--max-queue", type=int, default=None, help="server --max-queue (default: 2 x concurrency)")
    ap.add_argument("--server-concurrency", type=int, default=None, help="server --concurrency (default: the server's own choice)")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    ap.add_argument("--deadline", type=float, default=3600.0, help="seconds for the whole run; requests not sent by then are reported")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "load_test.json"))
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so the finally below stops the server
    max_queue = args.max_queue or 2 * args.concurrency
    questions = [json.loads(line)["question"] for line in QUESTIONS.read_text(encoding="utf-8").splitlines() if line.strip()]

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    log = Path(tempfile.gettempdir()) / f"ragkit-load-test-{port}.log"
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "ragkit.cli", "serve", args.pipeline, "--host", "127.0.0.1", "--port", str(port), "--max-queue", str(max_queue)]
    if args.server_concurrency is not None:
        cmd += ["--concurrency", str(args.server_concurrency)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        import urllib.request

        t_start = time.perf_counter()
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"ragkit serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
                    health = json.loads(resp.read())
                    if resp.status == 200:
                        break
            except OSError:
                pass
            if time.perf_counter() - t_start > 600:
                raise SystemExit(f"ragkit serve did not become healthy:\n{log.read_text()[-3000:]}")
            time.sleep(0.25)
        startup = time.perf_counter() - t_start
        run = asyncio.run(_load(url, health["model"], questions, args.requests, args.concurrency, args.timeout, args.deadline))
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    results = run["results"]
    ok = [r for r in results if r["ok"]]
    errors = [r for r in results if not r["ok"]]
    lat = [r["seconds"] for r in ok]
    ttft = [r["ttft"] for r in ok if r.get("ttft") is not None]
    server_lines = [x for x in run["metrics"].splitlines() if x.startswith(("ragkit_requests_total", "ragkit_tokens_", "ragkit_pipeline_runs_total"))]
    summary = {
        "what": "streamed POST /v1/chat/completions to `ragkit serve` on 127.0.0.1; latency = send to [DONE], TTFT = to the first content chunk",
        "command": "python benchmarks/load_test.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "pipeline": os.path.relpath(args.pipeline, ROOT),
        "server": {"command": f"ragkit serve {os.path.relpath(args.pipeline, ROOT)} --host 127.0.0.1 --port <free> --max-queue {max_queue}"
                   + (f" --concurrency {args.server_concurrency}" if args.server_concurrency is not None else ""), "concurrency": health["concurrency"], "max_queue": max_queue, "startup_seconds": round(startup, 1)},
        "requests": args.requests,
        "client_concurrency": args.concurrency,
        "completed": len(ok),
        "errors": len(errors),
        "not_sent": run["not_sent"],
        "error_samples": errors[:5],
        "status_counts": {s: sum(1 for r in results if str(r["status"]) == s) for s in sorted({str(r["status"]) for r in results})},
        "wall_seconds": round(run["wall"], 2),
        "throughput_rps": round(len(ok) / run["wall"], 3) if run["wall"] else None,
        "latency_seconds": {
            "p50": _pct(lat, 50),
            "p95": _pct(lat, 95),
            "p99": _pct(lat, 99),
            "mean": statistics.fmean(lat) if lat else None,
            "max": max(lat) if lat else None,
        },
        "ttft_seconds": {"p50": _pct(ttft, 50), "p95": _pct(ttft, 95), "p99": _pct(ttft, 99)},
        "queue_depth": {"max": max(run["queue_samples"], default=None), "mean": statistics.fmean(run["queue_samples"]) if run["queue_samples"] else None},
        "server_metrics": server_lines,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "RAGKIT_NUM_THREADS": os.environ.get("RAGKIT_NUM_THREADS")},
    }
    for k in ("latency_seconds", "ttft_seconds"):
        summary[k] = {n: (round(v, 3) if isinstance(v, float) else v) for n, v in summary[k].items()}
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps({k: summary[k] for k in ("completed", "errors", "wall_seconds", "throughput_rps", "latency_seconds", "ttft_seconds", "queue_depth")}, indent=2))
    return summary


if __name__ == "__main__":
    main()
