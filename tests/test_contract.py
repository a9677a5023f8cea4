"""The contract as others use it: buf curl over reflection (the README's grpcurl equivalents),
and buf lint's verdict on the proto (scripts/test runs it too; this proves the rules bite)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from resinkit_grpc.gen.resinkit.v1 import task_service_pb2 as pb
from tests.servers import ServerProcess

ROOT = Path(__file__).resolve().parent.parent
BUF = ROOT / ".tools" / "node_modules" / ".bin" / "buf"


def buf(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    assert BUF.exists(), "buf is missing: scripts/test installs it into .tools/"
    return subprocess.run(
        [str(BUF), *args], capture_output=True, text=True, timeout=120, check=False, cwd=cwd
    )


def test_buf_curl_lists_services_and_methods_over_reflection(server: ServerProcess) -> None:
    base = f"http://{server.address}"
    flags = ("curl", "--protocol", "grpc", "--http2-prior-knowledge")
    services = buf(*flags, "--list-services", base)
    assert services.returncode == 0, services.stderr
    assert "resinkit.v1.TaskService" in services.stdout.split()
    methods = buf(*flags, "--list-methods", base)
    assert methods.returncode == 0, methods.stderr
    expected = {
        f"resinkit.v1.TaskService/{m.name}"
        for m in pb.DESCRIPTOR.services_by_name["TaskService"].methods
    }
    assert expected <= set(methods.stdout.split())


def test_buf_lint_refuses_a_proto_that_breaks_its_rules(tmp_path: Path) -> None:
    shutil.copy(ROOT / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(ROOT / "protos", tmp_path / "protos")
    assert buf("lint", cwd=tmp_path).returncode == 0
    proto = tmp_path / "protos" / "resinkit" / "v1" / "task_service.proto"
    text = proto.read_text()
    assert text.count("  string actor = 8;") == 1
    proto.write_text(text.replace("  string actor = 8;", "  string eventActor_ = 8;"))
    linted = buf("lint", cwd=tmp_path)
    assert linted.returncode != 0
    assert "eventActor_" in linted.stdout and "lower_snake_case" in linted.stdout
