"""A Kafka broker of the test's own, which the test may stop and restart (outage tests).

Own KAFKA_HOME, own free ports, the repo's jars through a symlink: the shared broker other
tests use is never disturbed.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "kafka.sh"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """scripts/kafka.sh pointed at a private KAFKA_HOME whose lib/ is the repo's jars."""

    def __init__(self, home: Path) -> None:
        lib = REPO / ".kafka" / "lib"
        if not lib.is_dir():  # same fetch the shared broker's first start does
            subprocess.run(["bash", str(SCRIPT), "fetch"], check=True, capture_output=True, timeout=600)
        home.mkdir(parents=True, exist_ok=True)
        (home / "lib").symlink_to(lib)
        self.port, self.controller_port = _free_port(), _free_port()
        self.env = {
            **os.environ,
            "KAFKA_HOME": str(home),
            "KAFKA_PORT": str(self.port),
            "KAFKA_CONTROLLER_PORT": str(self.controller_port),
            "KAFKA_START_TIMEOUT": "60",
        }
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, cmd: str) -> None:
        out = subprocess.run(
            ["bash", str(SCRIPT), cmd], env=self.env, capture_output=True, text=True, timeout=90
        )
        if out.returncode != 0:
            raise RuntimeError(f"kafka.sh {cmd} failed (rc {out.returncode}): {out.stderr[-2000:]}")
