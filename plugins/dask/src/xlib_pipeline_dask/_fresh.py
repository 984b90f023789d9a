"""The local cluster's worker process: built on first use, since subclassing
``distributed``'s ``Subprocess`` imports distributed (a third of a second), which an
installed but unused plugin must never cost."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from typing import Any


@functools.cache
def fresh_worker_class() -> type[Any]:
    """:class:`FreshWorker`, a Dask worker (or nanny) in a fresh interpreter."""
    from distributed.deploy.subprocess import Subprocess

    class FreshWorker(Subprocess):
        """A Dask worker (or nanny) in a fresh interpreter: ``python -m distributed.cli.dask_spec``.

        ``env`` extends the driver's environment (TLS credentials travel as dask config
        variables); ``PYTHONPATH`` repeats the driver's ``sys.path`` so modules the driver can
        import are importable on the worker too.
        """

        def __init__(
            self,
            scheduler: str,
            *,
            name: Any = None,
            worker_class: str = "distributed.Nanny",
            worker_kwargs: Mapping[str, Any] | None = None,
            env: Mapping[str, str] | None = None,
        ) -> None:
            self.scheduler = scheduler
            self.name = name
            self.worker_class = worker_class
            self.worker_kwargs = dict(worker_kwargs or {})
            self.env = dict(env or {})
            super().__init__()  # type: ignore[no-untyped-call]

        async def _start(self) -> None:
            spec = {"cls": self.worker_class, "opts": {**self.worker_kwargs, "name": self.name}}
            cmd = [
                sys.executable,
                "-m",
                "distributed.cli.dask_spec",
                self.scheduler,
                "--spec",
                json.dumps(spec),
            ]
            env = dict(os.environ)
            paths = [p for p in sys.path if p and os.path.isdir(p)]
            env["PYTHONPATH"] = os.pathsep.join(paths)
            env.setdefault("DASK_LOGGING__DISTRIBUTED", "critical")
            env.update(self.env)
            self.process = await asyncio.create_subprocess_exec(
                *cmd,
                env=env,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches the driver, which decides
            )

    return FreshWorker
