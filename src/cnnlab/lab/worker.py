"""One thread for all torch work, behind a bounded queue, so the server's event loop never waits on torch.

A full queue answers at once (``Busy``, HTTP 503) instead of piling up requests a drawing page has already
replaced with newer ones.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

from cnnlab.errors import CnnlabError

QUEUE_SIZE = 8


class Busy(CnnlabError):
    """The worker's queue is full."""


class Worker:
    """Runs submitted functions one at a time on its own daemon thread."""

    def __init__(self, size: int = QUEUE_SIZE):
        self.jobs: queue.Queue = queue.Queue(maxsize=size)
        self.thread = threading.Thread(target=self._loop, name="cnnlab-lab-worker", daemon=True)
        self.thread.start()

    async def call(self, func: Callable[..., Any], *args: Any) -> Any:
        """Run ``func(*args)`` on the worker thread and return its result (or raise its exception)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        try:
            self.jobs.put_nowait((loop, future, func, args))
        except queue.Full:
            raise Busy(f"the lab is busy with {self.jobs.qsize()} requests; try again in a moment") from None
        return await future

    def close(self) -> None:
        """Let the thread end after the jobs already queued."""
        self.jobs.put(None)

    def _loop(self) -> None:
        while (job := self.jobs.get()) is not None:
            loop, future, func, args = job
            try:
                result, error = func(*args), None
            except BaseException as exc:  # handed to the awaiting request, which answers for it
                result, error = None, exc
            loop.call_soon_threadsafe(_settle, future, result, error)


def _settle(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    if future.cancelled():  # the client went away
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
