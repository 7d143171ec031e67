"""The whole local stack for end-to-end tests: started, deployed, and driven by scenarios."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from paystep_local.localstack import LOCAL_STRIPE_KEY, LocalStack
from paystep_local.scenarios import Stack

T = TypeVar("T")


@contextmanager
def deployed_stack(
    folder: Path, deploy_args: tuple[str, ...], **options: Any
) -> Iterator[LocalStack]:
    """A `LocalStack(folder, **options)` deployed with `deploy_args`, this process's AWS
    SDK and paystep settings pointed at it while it runs."""
    with LocalStack(folder, **options) as stack:
        stack.start(*deploy_args)
        with stack.environment():
            yield stack


def run_scenario(stack: LocalStack, scenario: Callable[[Stack], Awaitable[T]], **clients: Any) -> T:
    """Run `scenario` with the stack's clients (`Stack(..., **clients)`); its result."""

    async def go() -> T:
        assert stack.deployment and stack.stripe_base
        async with Stack(
            stack.deployment, stack.stripe_base, LOCAL_STRIPE_KEY, **clients
        ) as session:
            return await scenario(session)

    return asyncio.run(go())
