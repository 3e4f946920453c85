"""The store's background tasks: how each is stopped."""

from __future__ import annotations

import asyncio


async def cancel(*tasks: asyncio.Task[None] | None) -> None:
    """Cancel `tasks` (None: nothing) and wait until each has ended; raise what one raised but its
    cancellation. Waiting through `asyncio.wait`, not `await task`: a cancellation of the caller (a
    timeout around a close) ends the wait and reaches the caller even if a task never ends, instead
    of being handed to that task, and is never taken for the task's own and swallowed."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    if not running:
        return
    await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.result()
