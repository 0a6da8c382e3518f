"""Throughput of 1 versus 3 regcache replicas sharing one SeaweedFS bucket and one PostgreSQL
database, with one docker-registry upstream, all on loopback.

    python bench/fleet.py [--quick] [--out bench/results/fleet.json]

Prints a Markdown table of medians and writes every sample as JSON (and the table beside it).
See bench/README.md ("Fleet") for what each scenario measures.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests"))

import report  # noqa: E402
from load import pull  # noqa: E402
from report import Metric, add_param_options, chosen_params, machine  # noqa: E402
from run import regcache_version  # noqa: E402
from targets import TAG, Published, TargetError, Upstream, wait_warm  # noqa: E402
from tooling.postgres import Postgres, postgres_bin  # noqa: E402
from tooling.seaweed import WEED, SeaweedFS  # noqa: E402
from tooling.server import Regcache  # noqa: E402

MIB = 1 << 20
FLEET_TOKEN = "bench-fleet-token"


@dataclass(frozen=True)
class Params:
    """Sizes, counts and repetitions of one run."""

    reps: int
    image_mib: int
    layers: int
    replicas: int = 3  # the fleet compared with one replica
    clients: int = 32  # concurrent pulls, spread round-robin over the replicas
    blob_concurrency: int = 3  # blobs in flight per pull, as dockerd's default
    lease_seconds: int = 5
    timeout: float = 120  # any single load step


FULL = Params(reps=3, image_mib=100, layers=5)
QUICK = Params(reps=2, image_mib=20, layers=5, timeout=60)


def metrics(p: Params) -> list[Metric]:
    """The table's rows, labelled with this run's sizes and client counts."""
    image = f"{p.image_mib} MiB, {p.layers} layers"
    return [
        Metric("cold_s", f"{p.clients} concurrent cold pulls, {image}", "s", False),
        Metric("cold_x", "… upstream blob bytes", "x image", False),
        Metric(
            "cold_gets", f"… upstream blob GETs ({p.layers + 1} blobs)", "GETs", False, digits=0
        ),
        Metric(
            "cold_max_gets", "… upstream GETs of the most-fetched blob", "GETs", False, digits=0
        ),
        Metric("warm_mibs", f"{p.clients} concurrent warm pulls, {image}", "MiB/s", True, digits=0),
        Metric("warm_s", "… wall time", "s", False),
    ]


class Results(report.Results):
    """The samples of `report.Results`, with the replica counts as its targets ("1", "3")."""

    columns_key = failure_key = "replicas"

    def __init__(self, rows: Iterable[Metric], counts: tuple[int, int]) -> None:
        super().__init__(rows)
        self.counts = counts

    def columns(self) -> Iterable[str]:
        return [str(count) for count in self.counts]

    def ratio(self, key: str) -> str:
        one, many = (self.value(key, str(count)) for count in self.counts)
        if one is None or many is None or not one:
            return "—"
        return f"{many / one:.2f}x"

    def markdown(self, header: list[str]) -> str:
        one, many = self.counts
        names = [f"{one} replica", f"{many} replicas", f"{many} / {one}"]
        lines = [*header, "", f"| scenario | unit | {' | '.join(names)} |"]
        lines.append("|---|---|" + "---:|" * len(names))
        for key, metric in self.metrics.items():
            cells = [self.cell(key, str(count)) for count in self.counts] + [self.ratio(key)]
            arrow = "↑" if metric.higher_is_better else "↓"
            lines.append(f"| {metric.label} | {metric.unit} {arrow} | {' | '.join(cells)} |")
        if self.failures:
            lines += ["", "Failures:", ""]
            lines += [f"- {count} replica(s), {sc}: {msg}" for count, sc, msg in self.failures]
        return "\n".join(lines)


class Engines:
    """One SeaweedFS and one PostgreSQL for the whole run; a new bucket and database per fleet."""

    def __init__(self, workdir: Path) -> None:
        self.s3 = SeaweedFS(workdir)
        self.postgres = Postgres()
        self._names = itertools.count()

    def start(self) -> None:
        self.s3.start()
        self.postgres.start()

    def stop(self) -> None:
        try:
            self.s3.stop()
        finally:
            self.postgres.stop()

    def fresh(self) -> dict[str, Any]:
        """Settings for an empty bucket and an empty database of their own."""
        name = f"fleet{next(self._names)}"
        self.s3.create_bucket(name)
        return {
            "object_storage": {
                "endpoint_url": self.s3.endpoint,
                "bucket": name,
                "access_key": self.s3.access_key,
                "secret_key": self.s3.secret_key,
            },
            "database_url": self.postgres.create_database(name),
        }


class Fleet:
    """`count` regcache processes on one fresh bucket and database, each told its own address."""

    def __init__(
        self, workdir: Path, count: int, shared: dict[str, Any], upstream_url: str, p: Params
    ) -> None:
        self.replicas: list[Regcache] = []
        upstream = {"name": "upstream", "url": upstream_url, "prefix": "upstream.local"}
        for i in range(count):
            home = workdir / f"replica{i}"
            home.mkdir(parents=True)
            config = home / "regcache.yml"
            replica = Regcache(home, config=config)
            fleet = {"address": replica.url, "token": FLEET_TOKEN, "lease_seconds": p.lease_seconds}
            settings = {**shared, "upstreams": [{**upstream, "mirror": True}], "fleet": fleet}
            config.write_text(yaml.safe_dump(settings))
            self.replicas.append(replica)

    @property
    def urls(self) -> list[str]:
        return [replica.url for replica in self.replicas]

    def start(self) -> None:
        """Start every replica at once, as a Deployment does; all must answer."""
        with ThreadPoolExecutor(len(self.replicas)) as pool:
            outcomes = list(pool.map(_try_start, self.replicas))
        if errors := [error for error in outcomes if error]:
            self.stop()
            raise TargetError(f"regcache did not start: {errors[0]}")

    def stop(self) -> None:
        for replica in self.replicas:
            replica.stop()


def _try_start(replica: Regcache) -> str | None:
    try:
        replica.start()
    except RuntimeError as exc:
        lines = [line for line in str(exc).splitlines() if line.strip()]
        return lines[-1] if lines else "(no output)"
    return None


class Bench:
    """The upstream with its image, the engines, fleets on demand, and the results."""

    def __init__(self, params: Params, workdir: Path) -> None:
        self.params = params
        self.workdir = workdir
        self.counts = (1, params.replicas)
        self.results = Results(metrics(params), self.counts)
        self.upstream = Upstream(workdir)
        self.engines = Engines(workdir)
        self.image: Published | None = None
        self._runs = itertools.count()
        self._started = time.monotonic()

    def log(self, message: str) -> None:
        print(f"[{time.monotonic() - self._started:6.1f} s] {message}", file=sys.stderr, flush=True)

    def setup(self) -> None:
        """Start the upstream with the image, SeaweedFS and PostgreSQL."""
        p = self.params
        self.upstream.start()
        self.image = self.upstream.publish("medium", total_bytes=p.image_mib * MIB, layers=p.layers)
        self.log(f"upstream holds library/medium:{TAG} ({p.image_mib} MiB, {p.layers} layers)")
        self.engines.start()
        self.log("SeaweedFS and PostgreSQL started")

    def close(self) -> None:
        try:
            self.engines.stop()
        finally:
            self.upstream.stop()

    @contextmanager
    def fleet(self, count: int) -> Iterator[Fleet]:
        """`count` freshly started replicas on an empty bucket and database."""
        workdir = self.workdir / f"fleet-{next(self._runs)}"
        fleet = Fleet(workdir, count, self.engines.fresh(), self.upstream.url, self.params)
        fleet.start()
        try:
            yield fleet
        finally:
            fleet.stop()
            shutil.rmtree(workdir, ignore_errors=True)

    def pull(self, fleet: Fleet) -> float:
        """Wall seconds for the concurrent pulls of the image, spread over the replicas."""
        p, image = self.params, self.image
        assert image is not None
        return pull(
            fleet.urls,
            image.repo,
            TAG,
            clients=p.clients,
            blob_concurrency=p.blob_concurrency,
            timeout=p.timeout,
        )

    def add(self, key: str, count: int, samples: list[float]) -> None:
        self.results.add(key, str(count), samples)
        metric = self.results.metrics[key]
        shown = ", ".join(metric.show(s) for s in samples)
        self.log(f"{count} replica(s): {metric.label}: {shown} {metric.unit}")


COLD_KEYS = ["cold_s", "cold_x", "cold_gets", "cold_max_gets"]
WARM_KEYS = ["warm_mibs", "warm_s"]


def run_count(b: Bench, count: int) -> None:
    """Cold pulls on a new fleet per repetition, then warm pulls on the last one."""
    p, image = b.params, b.image
    assert image is not None
    samples: dict[str, list[float]] = {key: [] for key in COLD_KEYS}
    scenario = "concurrent cold pulls"
    try:
        for rep in range(p.reps):
            with b.fleet(count) as fleet:
                b.upstream.mark()
                samples["cold_s"].append(b.pull(fleet))
                traffic = b.upstream.traffic()
                gets = traffic.blob_gets
                samples["cold_x"].append(traffic.blob_bytes / image.blob_bytes)
                samples["cold_gets"].append(sum(gets.values()))
                samples["cold_max_gets"].append(max(gets.values(), default=0))
                b.results.detail("cold_gets_per_digest", str(count), dict(gets))
                if rep < p.reps - 1:
                    continue
                for key, values in samples.items():
                    b.add(key, count, values)
                scenario = "concurrent warm pulls"
                digests = [blob.digest for blob in b.image.image.blobs]
                wait_warm(b.upstream, fleet.urls, b.image.repo, digests, b.params.timeout)
                seconds, upstream_requests = [], []
                for _ in range(p.reps):
                    b.upstream.mark()
                    seconds.append(b.pull(fleet))
                    upstream_requests.append(b.upstream.traffic().requests)
                total = p.clients * image.blob_bytes / MIB
                b.add("warm_mibs", count, [total / s for s in seconds])
                b.add("warm_s", count, seconds)
                b.results.detail("warm_upstream_requests", str(count), upstream_requests)
    except Exception as exc:
        lines = str(exc).strip().splitlines() or [""]
        message = f"{type(exc).__name__}: {lines[0][:300]}"
        b.log(f"{count} replica(s): {scenario} FAILED: {message}")
        b.results.fail(scenario, COLD_KEYS + WARM_KEYS, str(count), message)


def check_single_download(results: Results) -> None:
    """A failure for each cold run in which the upstream did not send the image's blob bytes
    exactly once (one upstream download per digest across the fleet)."""
    for count in results.counts:
        for i, ratio in enumerate(results.samples["cold_x"].get(str(count), [])):
            if round(ratio, 2) != 1.0:
                results.failures.append(
                    (str(count), "one upstream download per digest", f"run {i + 1}: {ratio:.2f}x")
                )


def _version(cmd: list[str]) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "unavailable"


def engine_versions() -> dict[str, str]:
    """SeaweedFS's and PostgreSQL's versions."""
    try:
        postgres = _version([str(postgres_bin() / "postgres"), "--version"])
    except RuntimeError:
        postgres = "unavailable"
    weed = _version([str(WEED), "version"])
    return {"seaweedfs": weed, "postgresql": postgres}


def header(
    info: dict[str, Any], engines: dict[str, str], run: dict[str, Any], version: str
) -> list[str]:
    """Markdown lines describing the machine and the run, as bench/run.py writes them."""
    end_load = os.getloadavg()[0]
    gib = info["memory_bytes"] / (1 << 30)
    return [
        f"Machine: {info['nproc']} CPUs ({info['cpu']}), {gib:.1f} GiB RAM, "
        f"Linux {info['kernel']}, Python {info['python']}; 1-minute load average "
        f"{info['load_average_1min']:.1f} at the start, {end_load:.1f} at the end.  ",
        f"Upstream: {info['docker_registry']}; object storage: {engines['seaweedfs']}; "
        f"database: {engines['postgresql']}.  ",
        f"regcache: {version}.  ",
        "Run: " + ", ".join(f"{key}={value}" for key, value in run.items()) + ".  ",
        "Each value is the median of the repetitions; ↑ higher is better, ↓ lower is better.",
    ]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; size options override the chosen preset."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "fleet.json")
    parser.add_argument("--workdir", type=Path, help="parent of the scratch directory (/tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory")
    add_param_options(parser, Params)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Run both fleet sizes, print the table, write the JSON; 1 if anything failed."""
    args = parse_args(argv)
    params = chosen_params(args, QUICK, FULL)
    if params.replicas < 2 or params.reps < 1 or params.clients < 1:
        raise SystemExit("--replicas must be at least 2, --reps and --clients at least 1")
    started_at, started, info = datetime.now(UTC), time.monotonic(), machine()
    workdir = Path(tempfile.mkdtemp(prefix="regcache-fleet-bench-", dir=args.workdir))
    bench = Bench(params, workdir)
    try:
        bench.setup()
        for count in bench.counts:
            run_count(bench, count)
    finally:
        bench.close()
        if args.keep:
            bench.log(f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    seconds = time.monotonic() - started
    results = bench.results
    check_single_download(results)
    version, engines = regcache_version(), engine_versions()
    run = {"preset": "quick" if args.quick else "full", **dataclasses.asdict(params)}
    table = results.markdown(header(info, engines, run, version))
    print(table)
    print(f"\n{seconds:.0f} s in all", file=sys.stderr)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "started_at": started_at.isoformat(timespec="seconds"),
        "seconds": round(seconds, 1),
        "machine": {**info, **engines},
        "regcache": version,
        "params": run,
        "medians": {
            key: {str(c): results.value(key, str(c)) for c in results.counts}
            for key in results.metrics
        },
        **results.to_json(),
        "markdown": table,
    }
    args.out.write_text(json.dumps(document, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(table + "\n")
    return 1 if results.failures else 0


if __name__ == "__main__":
    sys.exit(main())
