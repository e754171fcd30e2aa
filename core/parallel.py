"""CPU forward passes that keep their speed on a busy machine.

torch splits every CPU operation across its intra-op threads and waits for the slowest before the next one starts.
When other programs keep the cores busy, the scheduler takes our threads off a core in turn, and each of the
thousands of small operations in a pass waits for whichever thread is off: on the project's 2-core machine, with
other sessions busy, one image pass took 3.7 s on two threads and 0.56 s on one. So on a CPU:

- many batches (label lists, chain candidates) run as whole batches on worker threads with one intra-op thread
  each, taken from a queue: a descheduled worker delays only its own batch, never every operation of the others;
- a single pass (an image, a chain prefix) uses only as many threads as there are cores nothing else is running on.

Thread counts are set for the duration of a call and restored after it. Other devices keep torch's own scheduling.
"""

import contextlib
import os
import threading
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from typing import Callable, Iterator, Optional, Sequence, TypeVar

import torch

Job = TypeVar("Job")
Result = TypeVar("Result")


def workers(device) -> int:
    """Worker threads for independent batches: torch's own CPU thread budget, one everywhere else."""
    return max(1, torch.get_num_threads()) if torch.device(device).type == "cpu" else 1


def free_cores() -> int:
    """Cores no other program is running on right now (at least 1, at most torch's thread budget).

    Linux counts runnable tasks in ``/proc/loadavg``; ours are taken off. Elsewhere the whole budget is assumed.
    """
    budget = max(1, torch.get_num_threads())
    try:
        with open("/proc/loadavg", encoding="ascii") as file:
            running = int(file.read().split()[3].split("/")[0])
        ours = sum(_runnable(tid) for tid in os.listdir("/proc/self/task"))
    except (OSError, ValueError, IndexError):
        return budget
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or budget
    return max(1, min(budget, cores - max(0, running - ours)))


def _runnable(tid: str) -> bool:
    try:
        with open(f"/proc/self/task/{tid}/stat", encoding="ascii", errors="replace") as file:
            return file.read().rsplit(")", 1)[1].split()[0] == "R"
    except (OSError, IndexError):
        return False


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``count`` inside the block and restored after it."""
    before = torch.get_num_threads()
    if count == before:
        yield
        return
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def single_pass(device):
    """Threads for one forward pass: on a CPU, the cores that are free now; elsewhere unchanged."""
    if torch.device(device).type != "cpu":
        return contextlib.nullcontext()
    return torch_threads(free_cores())


Poll = Callable[[], None]
_WAIT_SECONDS = 0.05  # how often this thread wakes to poll while workers run (poll rate-limits itself)


class _Stopped(Exception):
    """Ends a worker's job after this thread stopped waiting for it (its result is never read)."""


def _nothing() -> None:
    pass


def each_batch(work: Callable[[Job, Poll], Result], jobs: Sequence[Job], device,
               done: Callable[[Job, Result], None], poll: Optional[Poll] = None) -> None:
    """``done(job, work(job, poll))`` for every job, called in this thread; jobs are started in the given order.

    ``work`` calls its ``poll`` inside a long job (between transformer blocks), the chance to cancel. In this thread
    that is the caller's ``poll``. On a CPU with more than one job and core, jobs run on worker threads with one
    intra-op thread each (see the module's docstring), so the caller's hook is never called from a worker: this
    thread calls ``poll`` while it waits, and a worker's ``poll`` only stops it once this thread has stopped. An
    error, or an exception raised by ``done`` or ``poll`` (a cancel), stops the jobs: those not yet started never
    start, running ones at their next poll.
    """
    poll = poll or _nothing
    count = min(len(jobs), workers(device))
    if count < 2:
        for job in jobs:
            with single_pass(device):
                result = work(job, poll)
            done(job, result)
        return

    stop = threading.Event()

    def stopped() -> None:
        if stop.is_set():
            raise _Stopped()

    def run(job):
        with torch.no_grad():  # grad mode is per thread
            return work(job, stopped)

    with torch_threads(1), ThreadPoolExecutor(count, thread_name_prefix="clip-batch") as pool:
        futures = {pool.submit(run, job): job for job in jobs}
        pending = set(futures)
        try:
            while pending:
                finished, pending = wait(pending, timeout=_WAIT_SECONDS, return_when=FIRST_COMPLETED)
                for future in finished:
                    done(futures[future], future.result())
                poll()
        finally:
            stop.set()
            for future in futures:
                future.cancel()

