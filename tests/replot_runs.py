"""Redraw every committed run's figures into a folder and fingerprint them (decoded pixels, sha256).

Used to prove a refactor of the figure code draws the same pixels (``--save`` a manifest before, ``--check``
it after: ``python -m tests.replot_runs --save before.json``) and by ``tests/test_replot.py`` to compare the committed
figures with what the code draws now.
Covers the sweep figures (``api.plot_run``), the e2e figure, the ablation waterfalls and the IO study.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"


def sweep_runs(results: Path = RESULTS) -> list[Path]:
    """Run folders (a results.csv beside a meta.json) under ``results``, sorted."""
    return sorted(p.parent for p in results.rglob("results.csv") if (p.parent / "meta.json").exists()
                  and p.parent.parent.name != "sharded4")


def pixels(path: Path) -> str:
    """sha256 of a PNG's decoded RGBA pixels and its size (independent of PNG compression metadata)."""
    from matplotlib.image import imread

    image = imread(path)
    return hashlib.sha256(f"{image.shape}".encode() + image.tobytes()).hexdigest()


def redraw(out: Path, results: Path = RESULTS) -> dict[str, Path]:
    """Every figure of every committed run drawn into ``out``; {name relative to results/: path drawn}."""
    from fa2bench import api
    from fa2bench.profiling.iostudy import load_study
    from fa2bench.read import ablation, plots
    from fa2bench.run.results import load_run

    drawn: dict[str, Path] = {}
    for run in sweep_runs(results):
        rel = run.relative_to(results)
        frame = load_run(run)
        if (run / "ablation.md").exists():
            target = out / rel
            target.mkdir(parents=True, exist_ok=True)
            ablation.write(target, frame)
            files = sorted((target / "figures").glob("*.png"))
        else:
            files = [f for fs in api.plot_run(frame, out / rel / "figures").files.values() for f in fs]
        drawn.update({str(f.relative_to(out)): f for f in files})
    for study in sorted(results.rglob("io_study.csv")):
        rel = study.parent.relative_to(results)
        (out / rel).mkdir(parents=True, exist_ok=True)
        path = plots.save_io_study(load_study(study.parent), out / rel / "io_study.png")
        if path:
            drawn[str(path.relative_to(out))] = path
    return drawn


def manifest(results: Path = RESULTS) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        return {name: pixels(path) for name, path in sorted(redraw(Path(tmp), results).items())}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--save", type=Path, help="write the manifest of the redrawn figures here")
    group.add_argument("--check", type=Path, help="redraw and compare with this manifest")
    args = parser.parse_args(argv)
    now = manifest()
    if args.save:
        args.save.write_text(json.dumps(now, indent=1) + "\n")
        print(f"{len(now)} figures -> {args.save}")
        return 0
    before = json.loads(args.check.read_text())
    differ = sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))
    for name in differ:
        print(f"differs: {name}")
    print(f"{len(now)} figures, {len(differ)} differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
