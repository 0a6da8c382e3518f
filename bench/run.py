"""Benchmark regcache against docker-registry in proxy mode and nginx, all on loopback.

    python bench/run.py [--quick] [--out bench/results/latest.json]

Prints a Markdown table of medians and writes every sample as JSON (and the table beside it).
See bench/README.md for what each scenario measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

from report import TARGETS, add_param_options, chosen_params, header, machine  # noqa: E402
from scenarios import FULL, QUICK, Bench, Params, run_all  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; size options override the chosen preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "latest.json")
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated subset of: " + ", ".join(TARGETS),
    )
    parser.add_argument("--workdir", type=Path, help="parent of the scratch directory (/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    add_param_options(parser, Params)
    return parser.parse_args(argv)


def regcache_version() -> str:
    """The installed version and the work tree's commit."""
    try:
        version = metadata.version("regcache")
    except metadata.PackageNotFoundError:
        version = "not installed"
    git = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"],
        capture_output=True,
        text=True,
        check=False,
    )
    return f"{version} ({git.stdout.strip() or 'no git'})"


def main(argv: list[str] | None = None) -> int:
    """Run every scenario, print the table, write the JSON."""
    args = parse_args(argv)
    params = chosen_params(args, QUICK, FULL)
    targets = [name.strip() for name in args.targets.split(",") if name.strip()]
    if unknown := set(targets) - set(TARGETS):
        raise SystemExit(f"unknown targets: {', '.join(sorted(unknown))}")
    started_at, started, info = datetime.now(UTC), time.monotonic(), machine()
    workdir = Path(tempfile.mkdtemp(prefix="regcache-bench-", dir=args.workdir))
    bench = Bench(params, workdir)
    try:
        bench.setup()
        run_all(bench, targets)
    finally:
        bench.close()
        if args.keep:
            bench.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - started
    version = regcache_version()
    run = {"preset": "quick" if args.quick else "full", **dataclasses.asdict(params)}
    table = bench.results.markdown(header(info, run, version))
    print(table)
    print(f"\n{seconds:.0f} s in all", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": info,
        "regcache": version,
        "params": run,
        "targets": targets,
        **bench.results.to_json(),
        "markdown": table,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
