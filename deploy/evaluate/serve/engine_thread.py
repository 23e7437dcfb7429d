"""A replica's one thread for engine calls, on which chats never wait for a whole evaluation.

Every engine call runs on one thread: vLLM's offline engine is not re-entrant, and on CPU its
attention kernels check that they run with the OpenMP thread count they were planned with, a
per-thread setting that another pool thread may not share ("thread_num 1 vs. 2"). An evaluation is
one long task there, so chats wait in a queue of their own: the thread answers them when idle and,
while an evaluation runs, between its chunks of episodes (the evaluation calls
:meth:`EngineThread.answer_waiting`).
"""

from __future__ import annotations

import asyncio
import queue
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any


class EngineBusy(RuntimeError):
    """A request needs an engine that cannot be loaded now without evicting one a running
    evaluation holds: it waits for the evaluation's end."""


class EngineThread:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sftrl-engine")
        self._waiting: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the engine thread after what is queued there (an evaluation)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def run_between(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` on the engine thread as soon as it is idle or a running evaluation ends a
        chunk (a chat)."""
        future: Future[Any] = Future()
        self._waiting.put((partial(fn, *args), future))
        self._executor.submit(self.answer_waiting)
        return await asyncio.wrap_future(future)

    def answer_waiting(self) -> None:
        """Answer every request waiting now; call it on the engine thread only. One that raises
        :class:`EngineBusy` waits again (its own turn on the thread comes after the evaluation)."""
        busy = []
        while True:
            try:
                fn, future = self._waiting.get_nowait()
            except queue.Empty:
                break
            try:
                future.set_result(fn())
            except EngineBusy:
                busy.append((fn, future))
            except BaseException as exc:  # noqa: BLE001 - the caller gets it, as from run_in_executor
                future.set_exception(exc)
        for item in busy:
            self._waiting.put(item)
