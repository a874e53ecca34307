"""Every example study, end to end: run it, export its laws, and report what it took.

Each study of ``studies/`` (or those named) runs through the real command line (with an
embedded MLflow store and checkpoints of its own, a local Ray), then ``isoflop export`` writes
its fitted laws. Reported per study: the runs trained, the wall time of ``run`` and of
``export``, the exit codes, and every law with its fitted parameters (or why it was not
fitted). The bar for the family studies: each finishes on a 2-core CPU in a few minutes
and exports a fitted law.

    python benchmarks/studies.py [NAME ...] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STUDIES = ROOT / "studies"


def run_one(path: Path, workdir: Path) -> dict:
    """Run and export one study in ``workdir``; the numbers for its row."""
    cli = [sys.executable, "-m", "orchestrator.cli"]
    env = {**os.environ, "ISOFLOP_PLAIN": "1", "PYTHONPATH": str(ROOT)}
    # from the repository (a study's relative paths are read from there), with a store and
    # checkpoints of its own
    store = f"sqlite:///{workdir / 'mlflow.db'}"
    own = [f"tracking.uri={store}", f"resources.checkpoint_dir={workdir / 'checkpoints'}"]
    t0 = time.perf_counter()
    ran = subprocess.run([*cli, "run", str(path), *own], cwd=ROOT, env=env, capture_output=True, text=True)
    t_run = time.perf_counter() - t0
    out = workdir / "law.json"
    t1 = time.perf_counter()
    exported = subprocess.run(
        [*cli, "export", str(path), "--tracking-uri", store, "-o", str(out)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    t_export = time.perf_counter() - t1
    finished = re.search(r"isoflop: (\d+) runs finished, (\d+) already done, (\d+) failed", ran.stdout)
    laws = []
    if exported.returncode == 0 and out.is_file():
        document = json.loads(out.read_text())
        for entry in document["laws"]:
            laws.append({"name": entry.get("name", entry["law"]), "params": entry["params"], "n_runs": entry.get("fitted_to", {}).get("n_runs")})
        laws += [{"name": k, "error": v} for k, v in document["study"].get("not_fitted", {}).items()]
    return {
        "study": path.stem,
        "run_rc": ran.returncode,
        "export_rc": exported.returncode,
        "runs": int(finished.group(1)) if finished else None,
        "failed": int(finished.group(3)) if finished else None,
        "run_s": t_run,
        "export_s": t_export,
        "laws": laws,
        "stderr": (ran.stderr + exported.stderr)[-2000:] if ran.returncode or exported.returncode else "",
    }


def _law_cell(law: dict) -> str:
    if "error" in law:
        return f"`{law['name']}` not fitted: {law['error'][:80]}"
    params = ", ".join(f"{k} {v:.3g}" for k, v in list(law["params"].items())[:6])
    return f"`{law['name']}` on {law['n_runs']} runs: {params}" + (" ..." if len(law["params"]) > 6 else "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("names", nargs="*", help="study names (default: every file in studies/)")
    ap.add_argument("--out", type=Path, help="write the rows as JSON")
    args = ap.parse_args()
    paths = [STUDIES / f"{n}.yaml" for n in args.names] or sorted(STUDIES.glob("*.yaml"))
    print(f"# {platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, Python {platform.python_version()}")
    print("| study | runs | failed | run (s) | export (s) | exit codes | laws |")
    print("|---|---:|---:|---:|---:|---|---|")
    rows = []
    for path in paths:
        workdir = Path(tempfile.mkdtemp(prefix=f"isoflop-{path.stem}-"))
        try:
            row = run_one(path, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        rows.append(row)
        laws = "; ".join(_law_cell(law) for law in row["laws"]) or "-"
        print(
            f"| {row['study']} | {row['runs']} | {row['failed']} | {row['run_s']:.0f} | {row['export_s']:.0f} | "
            f"{row['run_rc']}/{row['export_rc']} | {laws} |",
            flush=True,
        )
        if row["stderr"]:
            print(f"<!-- {row['study']}: {row['stderr'][-500:]} -->", flush=True)
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
