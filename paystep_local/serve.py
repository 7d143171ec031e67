"""Run a local double as a process: `python -m paystep_local.<double> --port N`.

The double starts on a loop of its own and prints `listening on URL` once it
serves (what a launcher waits for), then serves until interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import Callable
from typing import Protocol


class Startable(Protocol):
    async def start(self) -> str:
        """Serve; the URL served on."""
        ...


def parser(prog: str) -> argparse.ArgumentParser:
    """The options every double takes: `--host`, `--port` (0: a free one)."""
    options = argparse.ArgumentParser(prog=f"python -m {prog}")
    options.add_argument("--host", default="127.0.0.1")
    options.add_argument("--port", type=int, default=0)
    return options


def serve_forever(make: Callable[[], Startable]) -> None:
    """Start `make()` on a new loop, print where it listens, serve until interrupted."""

    async def serve() -> None:
        url = await make().start()
        print(f"listening on {url}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
