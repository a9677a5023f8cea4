"""The `resinkit-grpc` command's entry point. `tasks` goes straight to tasks_cli, which loads
only the client: the server's modules (SQLAlchemy, the store) cost about a second to import,
paid by every call otherwise. Everything else goes to cli.py."""

from __future__ import annotations

import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["tasks"]:
        from resinkit_grpc import tasks_cli

        tasks_cli.main(args[1:])
    else:
        from resinkit_grpc import cli

        cli.main(args)
