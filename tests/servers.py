"""Real server processes for the tests: `python -m resinkit_grpc serve` on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import grpc

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc

BOOT_TIMEOUT = 60.0


class ServerProcess:
    """One `resinkit-grpc serve` process; `address` is known once it prints its serving line."""

    def __init__(self, database_url: str, log_dir: Path, *args: str, **env: str) -> None:
        self.database_url = database_url
        self.args = args
        self.env = {**os.environ, **env}
        self.log_path = log_dir / f"server-{time.monotonic_ns()}.log"
        # What runs the server, and where (another interpreter or directory, say).
        self.command = [sys.executable, "-m", "resinkit_grpc", "serve"]
        self.cwd: Path | None = None
        self.process: subprocess.Popen[str] | None = None
        self.address = ""
        self.metrics_url = ""  # with --metrics-address: http://HOST:PORT/metrics
        self.console_url = ""  # with --console-address: http://HOST:PORT/
        self._log: IO[str] | None = None
        self._channels: list[grpc.Channel] = []
        # Whether stop() had to kill it: it did not exit within 30 s of its signal.
        self.hung = False

    def start(self) -> ServerProcess:
        self._log = self.log_path.open("w")
        self.process = subprocess.Popen(
            [
                *self.command,
                "--address",
                "127.0.0.1:0",
                "--database-url",
                self.database_url,
                "--grace-period",
                "5",
                *self.args,
            ],
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=self.env,
            cwd=self.cwd,
        )
        assert self.process.stdout is not None
        deadline = time.monotonic() + BOOT_TIMEOUT
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("metrics on "):
                self.metrics_url = line.split()[-1]
            if line.startswith("console on "):
                self.console_url = line.split()[-1]
            if line.startswith("serving on "):
                self.address = line.split()[-1]
                return self
            if not line and self.process.poll() is not None:
                break
        self.stop()
        raise RuntimeError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address)
        self._channels.append(channel)
        return channel

    def stub(self) -> Any:
        return pb_grpc.TaskServiceStub(self.channel())

    def send(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout: float = 30.0) -> int:
        """Waits for the process to exit; if it does not, fails with its stacks and log."""
        assert self.process is not None
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.send_signal(signal.SIGUSR1)  # faulthandler: dump every thread
            time.sleep(1)
            log = self.log()[-8000:]
            raise AssertionError(f"server still running after {timeout} s:\n{log}") from None

    def stop(self, signum: int = signal.SIGTERM) -> int:
        """Stops the server the way an orchestrator would; returns its exit code."""
        for channel in self._channels:
            channel.close()
        self._channels.clear()
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signum)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.hung = True
                self.process.send_signal(signal.SIGUSR1)  # faulthandler: stacks into the log
                time.sleep(1)
                self.process.kill()
                self.process.wait()
        if self.process.stdout:
            self.process.stdout.close()
        if self._log:
            self._log.close()
        return self.process.returncode

    def rss_bytes(self) -> int:
        """The server's resident memory now."""
        assert self.process is not None
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1]) * 1024

    def log(self) -> str:
        return self.log_path.read_text()


def run_cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`resinkit-grpc ARGS` run to its end (a command that is expected to stop by itself),
    with `env` added to the environment."""
    return subprocess.run(
        [sys.executable, "-m", "resinkit_grpc", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
