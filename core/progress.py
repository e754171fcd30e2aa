"""Progress reporting and cancellation for long work.

A progress hook is any callable ``hook(done, total, desc)``. The engine calls it after each unit of work, and in
between (``Steps.tick``, at most every TICK_SECONDS) inside long units such as a chain step over thousands of
candidates; the hook cancels the work by raising (ComfyUI raises its interrupt exception, the CLI raises
``Cancelled``). The engine only commits results (e.g. cache files) after the work has finished, so a raise never
leaves anything half-written.
"""

import time
from typing import Callable, Optional

ProgressHook = Callable[[int, int, str], None]
# How often a long unit of work re-reports its position, so that a cancel is noticed within about this long
# (plus one transformer block) without flooding a UI with progress messages.
TICK_SECONDS = 0.2


def _silent(done: int, total: int, desc: str) -> None:
    pass


class Steps:
    """Counts units of one piece of work and reports them to a hook."""

    def __init__(self, hook: Optional[ProgressHook], total: int, desc: str):
        self.hook = hook or _silent
        self.total = max(int(total), 1)
        self.desc = desc
        self.done = 0
        self._report()

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        self._report()

    def finish(self) -> None:
        if self.done < self.total:
            self.advance(self.total - self.done)

    def tick(self) -> None:
        """Inside a unit: re-report the current position (the hook's chance to cancel), at most every
        TICK_SECONDS."""
        if time.monotonic() - self._reported >= TICK_SECONDS:
            self._report()

    def _report(self) -> None:
        self._reported = time.monotonic()
        self.hook(self.done, self.total, self.desc)
