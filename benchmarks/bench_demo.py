"""Issue 2's benchmark row: `import ragkit` time, and the demo's cold and warm end-to-end latency.

    python benchmarks/bench_demo.py [--repeats 5]

* import: median wall time of `python -c "import ragkit"` in fresh processes, minus the median of a
  bare `python -c "pass"` (interpreter start-up).
* cold: a fresh process runs `ragkit run pipelines/kgqa_sparql.yaml -q ...` once: loading the
  pipeline file, the models (from the converted cache), the graph and the example index, then
  answering. Measured from process start to exit.
* warm: the same pipeline, already warmed up, answers the fixture questions in one process; median
  end-to-end latency, TTFT (to the first streamed answer token) and the answer stage's TPOT.

Writes benchmarks/results/demo.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _median_run(cmd: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    py = sys.executable
    base = _median_run([py, "-c", "pass"], args.repeats)
    imp = _median_run([py, "-c", "import ragkit"], args.repeats)
    questions = [json.loads(x) for x in (ROOT / "fixtures/library/questions.jsonl").read_text().splitlines() if x.strip()]
    easy = [q["question"] for q in questions if q.get("difficulty") == "easy"]

    cold = _median_run([py, "-m", "ragkit.cli", "run", "pipelines/kgqa_sparql.yaml", "-q", easy[0]], max(1, args.repeats // 2))

    from ragkit import Pipeline

    pipe = Pipeline.from_yaml(ROOT / "pipelines/kgqa_sparql.yaml")
    pipe.warm_up()
    pipe.run(question=easy[0])  # first call pays one-off costs (kernel selection, caches)
    lat, ttft, tpot, qgen = [], [], [], []
    for q in easy:
        r = pipe.run(question=q, on_token=lambda _t: None)
        lat.append(r.trace.seconds)
        ttft.append(r.trace.ttft or r.trace.seconds)
        gen = r.trace.stage("generate")
        if gen.tpot is not None:
            tpot.append(gen.tpot)
        qgen.append(r.trace.stage("querygen").seconds)
    out = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "import_ragkit_s": round(imp - base, 4),
        "import_ragkit_raw_s": round(imp, 4),
        "python_startup_s": round(base, 4),
        "demo_cold_s": round(cold, 2),
        "demo_warm_latency_p50_s": round(statistics.median(lat), 2),
        "demo_warm_ttft_p50_s": round(statistics.median(ttft), 2),
        "answer_tpot_p50_ms": round(1000 * statistics.median(tpot), 1) if tpot else None,
        "querygen_p50_s": round(statistics.median(qgen), 2),
        "questions": len(easy),
    }
    (ROOT / "benchmarks/results").mkdir(exist_ok=True)
    (ROOT / "benchmarks/results/demo.json").write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
