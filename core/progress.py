"""Progress reporting and cancellation for long work.

A progress hook is any callable ``hook(done, total, desc)``. The engine calls it after each unit of work; the hook
cancels the work by raising (ComfyUI raises its interrupt exception, the CLI raises ``Cancelled``). The engine only
commits results (e.g. cache files) after the work has finished, so a raise never leaves anything half-written.
"""

from typing import Callable, Optional

ProgressHook = Callable[[int, int, str], None]


def _silent(done: int, total: int, desc: str) -> None:
    pass


class Steps:
    """Counts units of one piece of work and reports them to a hook."""

    def __init__(self, hook: Optional[ProgressHook], total: int, desc: str):
        self.hook = hook or _silent
        self.total = max(int(total), 1)
        self.desc = desc
        self.done = 0
        self.hook(0, self.total, desc)

    def advance(self, n: int = 1) -> None:
        self.done = min(self.done + n, self.total)
        self.hook(self.done, self.total, self.desc)

    def finish(self) -> None:
        if self.done < self.total:
            self.advance(self.total - self.done)
