"""Cold start, A/B: this tree against an older one, interleaved, in the same minutes.

    git archive 097d1a7 src plugins | tar -x -C /tmp/cold_old
    git archive HEAD src plugins | tar -x -C /tmp/cold_new
    python benchmarks/_cold_ab.py /tmp/cold_old --new /tmp/cold_new --rounds 3 --repeat 3

Each round runs ``_cold.py --json REPEAT`` twice, old tree first then this one (the order
alternates every round). The old tree is imported through ``PYTHONPATH`` (its ``src`` and
every ``plugins/*/src``), which comes before the editable installs on ``sys.path``; the
installed entry points are the same for both. Prints, per variant, the medians over the
rounds of the per-round medians: the cold build + first run against the reference (wall
and CPU), ``PipelineManager({})`` with every plugin over the bare core, and
``xlib-pipeline --help``. Same-run ratios only; the load average is printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def _run(tree: Path | None, repeat: int) -> dict[str, Any]:
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    if tree is not None:
        paths = [tree / "src", *sorted((tree / "plugins").glob("*/src"))]
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in paths)
    else:
        env.pop("PYTHONPATH", None)
    cmd = [sys.executable, str(HERE / "_cold.py"), "--json", str(repeat)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _figures(res: dict[str, Any]) -> dict[str, float]:
    m, c = res["median"], res["cpu"]
    out = {
        "cold_wall": m["ours-all"] / m["reference"],
        "cold_cpu": c["ours-all"] / c["reference"],
        "core_wall": m["ours-core"] / m["reference"],
        "core_cpu": c["ours-core"] / c["reference"],
        "manager_ms": (m["manager-all"] - m["manager-core"]) * 1e3,
        "manager_cpu_ms": (c["manager-all"] - c["manager-core"]) * 1e3,
    }
    if "help" in m:
        out["help_ms"] = m["help"] * 1e3
        out["python_ms"] = m["python"] * 1e3
    if "help" in c:
        out["help_cpu_ms"] = c["help"] * 1e3
        out["python_cpu_ms"] = c["python"] * 1e3
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path, help="a copy of the older tree (src/, plugins/)")
    ap.add_argument(
        "--new",
        type=Path,
        default=None,
        help="a copy of this tree, imported through PYTHONPATH like the old one (default: "
        "the editable installs). Use it: PYTHONPATH entries come first on sys.path, so "
        "otherwise only the old tree's packages skip the search through the others",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3, help="fresh processes per contender")
    args = ap.parse_args()
    rows: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    for i in range(args.rounds):
        order = ("old", "new") if i % 2 == 0 else ("new", "old")
        for variant in order:
            got = _figures(_run(args.old if variant == "old" else args.new, args.repeat))
            rows[variant].append(got)
            load = os.getloadavg()[0]
            print(f"round {i + 1} {variant}: {json.dumps(got)} load {load:.1f}", flush=True)
    for variant, found in rows.items():
        med = {k: statistics.median(r[k] for r in found) for k in found[0]}
        print(variant, "medians:", json.dumps({k: round(v, 3) for k, v in med.items()}))


if __name__ == "__main__":
    main()
