"""Run regcache as a real process for tests: start, wait until ready, SIGKILL, restart."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import requests

from tooling.peers import free_port


class Regcache:
    """A `python -m regcache serve` process on a loopback port with its own data directory."""

    def __init__(
        self,
        workdir: Path,
        *,
        config: Path | None = None,
        env: dict[str, str] | None = None,
        ca_file: Path | None = None,
    ) -> None:
        self.workdir = workdir
        self.ca_file = ca_file  # serving HTTPS with a certificate this CA signed
        self.data_dir = workdir / "data"
        self.config = config
        self.env = env or {}
        self.port = free_port()
        self.url = f"{'https' if ca_file else 'http'}://127.0.0.1:{self.port}"
        self.log_path = workdir / "regcache.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> Regcache:
        command = [
            sys.executable, "-m", "regcache", "serve",
            "--listen", f"127.0.0.1:{self.port}", "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        if self.config is not None:
            command += ["--config", str(self.config)]
        env = {**os.environ, **self.env}
        self.workdir.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"regcache exited:\n{self.log()[-3000:]}")
            try:
                verify = str(self.ca_file) if self.ca_file else True
                if requests.get(f"{self.url}/v2/", timeout=1, verify=verify).status_code < 500:
                    return self
            except requests.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError(f"regcache did not answer in 20 s:\n{self.log()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a crash or an OOM kill."""
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
            self.process = None

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def __enter__(self) -> Regcache:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


class PeakRss:
    """Samples a process's resident memory in a thread; `.peak` is the highest seen, in bytes."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        self._process = psutil.Process(pid)
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self._process.memory_info().rss)
            except psutil.NoSuchProcess:
                return
            self._stop.wait(self._interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()
