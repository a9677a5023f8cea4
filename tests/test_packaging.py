"""The floors in pyproject.toml are true: a fresh virtual environment with exactly the oldest
allowed version of every dependency installs the package, and the server migrates, serves
and answers on it; without the postgresql extra, a PostgreSQL URL is one clear line."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from typing import Any

import grpc
import pytest
from standardwebhooks.webhooks import Webhook

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from resinkit_grpc.gen.resinkit.v1 import task_service_pb2_grpc as pb_grpc
from resinkit_grpc.notify.secrets import new_secret
from tests.receivers import Receiver
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
FLOOR = re.compile(r"^([A-Za-z0-9_.-]+)(\[[^\]]*\])?>=([0-9][^,<]*)")


def floors() -> list[str]:
    """`name==floor` for every runtime dependency, the postgresql extra's included."""
    project: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = []
    for requirement in [*project["dependencies"], *project["optional-dependencies"]["postgresql"]]:
        match = FLOOR.match(requirement)
        assert match, f"{requirement!r} has no floor"
        pinned.append(f"{match.group(1)}=={match.group(3)}")
    return pinned


@pytest.fixture(scope="module")
def oldest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment holding the package on its oldest allowed dependencies."""
    where = tmp_path_factory.mktemp("oldest")
    constraints = where / "constraints.txt"
    constraints.write_text("\n".join(floors()) + "\n")
    subprocess.run([sys.executable, "-m", "venv", str(where / "venv")], check=True)
    python = where / "venv" / "bin" / "python"
    installed = subprocess.run(
        [
            str(python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--constraint",
            str(constraints),
            f"{ROOT}[postgresql]",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    versions = subprocess.run(
        [str(python), "-m", "pip", "freeze"], capture_output=True, text=True, check=True
    ).stdout.lower()
    for pin in floors():
        assert pin.lower().replace("_", "-") in versions.replace("_", "-"), pin
    return python


def test_the_server_runs_on_the_oldest_allowed_dependencies(
    oldest: Path, new_database_url: Any, tmp_path: Path
) -> None:
    secret = new_secret()
    secrets = tmp_path / "webhook-secrets.toml"
    secrets.write_text(f'[[secrets]]\nid = "oldest"\nsecret = "{secret}"\n')
    server = ServerProcess(
        new_database_url(),
        tmp_path,
        "--metrics-address",
        "127.0.0.1:0",
        "--console-address",
        "127.0.0.1:0",
        "--heartbeat-interval",
        "0.2",
        "--webhook-allow-private",
        "--webhook-secrets-file",
        str(secrets),
    )
    server.command = [str(oldest), "-m", "resinkit_grpc", "serve"]
    server.env["PYTHONPATH"] = ""  # nothing from this checkout: the installed package only
    server.cwd = tmp_path
    server.start()
    try:
        with grpc.insecure_channel(server.address) as channel, Receiver() as receiver:
            stub = pb_grpc.TaskServiceStub(channel)
            task = pb.Task(task_type="oldest")
            task.notification_config.update(
                {"webhooks": [{"url": receiver.url, "secret_id": "oldest"}]}
            )
            made = stub.CreateTask(pb.CreateTaskRequest(task=task))
            # The oldest aiohttp sent it, the oldest standardwebhooks signed it.
            receiver.wait_for(lambda got: len(got) == 1)
            delivered = Webhook(secret).verify(
                receiver.requests[0].body, receiver.requests[0].headers
            )
            assert delivered["data"]["task"]["taskId"] == made.task_id
            assert stub.GetTask(pb.GetTaskRequest(task_id=made.task_id)) == made
            watched = stub.WatchTaskEvents(
                pb.WatchTaskEventsRequest(task_ids=[made.task_id], after_event_id=0), timeout=10
            )
            assert next(watched).event.event_type == "CREATED"
            watched.cancel()
        with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
            scraped = response.read().decode()
        assert 'grpc_server_handled_total{grpc_code="OK",grpc_method="CreateTask"' in scraped
        # The console, on the oldest aiohttp: its page and assets from the wheel, its API, its
        # live stream.
        with urllib.request.urlopen(server.console_url + "static/app.js", timeout=10) as response:
            assert b"import" in response.read()
        with urllib.request.urlopen(server.console_url, timeout=10) as response:
            assert b'<script type="module" src="/static/app.js">' in response.read()
        listed = server.console_url + "api/tasks?type=oldest"
        with urllib.request.urlopen(listed, timeout=10) as response:
            assert json.loads(response.read())["tasks"][0]["task_id"] == made.task_id
        stream = urllib.request.Request(
            server.console_url + "api/events", headers={"Last-Event-ID": "0"}
        )
        with urllib.request.urlopen(stream, timeout=10) as response:
            lines = [response.readline() for _ in range(5)]
        assert b"event: task_event\n" in lines, lines
    finally:
        assert server.stop() == 0, server.log()


def test_a_postgresql_url_without_the_extra_is_one_clear_line(oldest: Path) -> None:
    without_psycopg = (
        "import sys; sys.modules['psycopg'] = None; "
        "from resinkit_grpc.cli import main; "
        "main(['migrate', '--database-url', 'postgresql+psycopg://nobody@127.0.0.1/none'])"
    )
    result = subprocess.run(
        [str(oldest), "-c", without_psycopg],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd="/",
    )
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "resinkit-grpc: error: PostgreSQL needs its driver: pip install 'resinkit-grpc[postgresql]'"
    ]


def test_the_installed_package_ships_the_proto_beside_its_stubs(oldest: Path) -> None:
    """Other services install the package and compile the contract for their own language."""
    read = (
        "from importlib import resources; "
        "print(resources.files('resinkit_grpc.gen.resinkit.v1')"
        ".joinpath('task_service.proto').read_text(), end='')"
    )
    result = subprocess.run(
        [str(oldest), "-c", read], capture_output=True, text=True, timeout=60, check=False, cwd="/"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == (ROOT / "protos" / "resinkit" / "v1" / "task_service.proto").read_text()
