"""Time `sample-effect demo` on the default model (the issue's budget: at most 10 minutes on 2 cores).

    python benchmarks/demo_time.py --out benchmarks/results/demo_time.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sample_effect.runtime.cpu import cpu_info


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/demo_time.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "sample_effect", "demo", "--out", d, "--quiet"],
                              capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t0
        summary = proc.stdout.strip().splitlines()
    record = {
        "benchmark": "demo", "wall_s": round(wall, 1), "returncode": proc.returncode, "budget_s": 600,
        "within_budget": wall <= 600, "cpus": os.cpu_count(), "python": platform.python_version(), "cpu": cpu_info(),
        "stdout_tail": summary[-8:], "stderr_tail": proc.stderr.strip().splitlines()[-5:],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
