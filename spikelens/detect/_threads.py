"""The detector's passes that run on a thread beside the others (`detect._start_side_passes`,
`spikes._x_parts`) hand their results, or their errors, to the caller through a `Future`:
an error raised on the thread is raised again where the caller asks for the result, so a
detection never silently lacks a pass and never waits forever. docs/performance.md says
which passes overlap and what it saves."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import TypeVar

T = TypeVar("T")


def settle(fut: Future[T], make: Callable[[], T]) -> None:
    """Run `make` into `fut`: its result, or the exception `fut.result()` raises again."""
    try:
        fut.set_result(make())
    except BaseException as exc:  # noqa: BLE001 - raised again by fut.result()
        fut.set_exception(exc)


def start(make: Callable[[], T], name: str) -> Future[T]:
    """`make` started on a daemon thread called `name`; its future."""
    fut: Future[T] = Future()
    threading.Thread(target=settle, args=(fut, make), name=name, daemon=True).start()
    return fut
