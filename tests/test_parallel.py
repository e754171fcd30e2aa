"""CPU work on worker threads: every batch done once, results handed over in the caller's thread, torch's thread
count restored on every exit, a cancel stops the batches not yet started."""

import threading

import pytest
import torch

from core import Cancelled
from core.parallel import each_batch, free_cores, single_pass, torch_threads
from core.text_encoder import TextEncoder


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_batches_run_on_workers_with_one_thread_each_and_are_handed_back_here(two_threads):
    caller, seen, done = threading.get_ident(), {}, []

    def work(job, poll):
        seen[job] = (threading.get_ident(), torch.get_num_threads(), torch.is_grad_enabled())
        return job * job

    each_batch(work, list(range(8)), "cpu", lambda job, result: done.append((job, result, threading.get_ident())))
    assert sorted(done) == [(j, j * j, caller) for j in range(8)]
    assert all(ident != caller and threads == 1 and not grad for ident, threads, grad in seen.values())
    assert torch.get_num_threads() == 2


def test_a_cancel_stops_the_batches_not_yet_started_and_restores_threads(two_threads):
    started, blocked = [], threading.Event()

    def work(job, poll):
        started.append(job)
        if job:
            blocked.wait(1)  # keeps both workers busy until the cancel has been seen
        return job

    def done(job, result):
        raise Cancelled("stop")

    with pytest.raises(Cancelled):
        each_batch(work, list(range(20)), "cpu", done)
    assert sorted(started) in ([0, 1], [0, 1, 2])
    assert torch.get_num_threads() == 2


def test_a_cancel_polled_here_stops_running_workers_mid_job(two_threads):
    """The caller's hook is polled in its own thread while workers run; a cancel there ends the running jobs at
    their next poll instead of letting them finish."""
    caller, polled, steps = threading.get_ident(), [], []

    def work(job, poll):
        for step in range(400):  # a long job that polls between its "blocks"
            steps.append(job)
            poll()
            threading.Event().wait(0.01)
        return job

    def poll():
        polled.append(threading.get_ident())
        if len(polled) == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        each_batch(work, [0, 1, 2, 3], "cpu", lambda job, result: None, poll)
    assert set(polled) == {caller}
    assert 0 < len(steps) < 200  # both workers stopped long before their 400 steps
    assert torch.get_num_threads() == 2


def test_other_devices_run_in_order_in_this_thread():
    caller, order = threading.get_ident(), []
    each_batch(lambda job, poll: threading.get_ident(), [3, 1, 2], "meta", lambda job, ident: order.append((job, ident)))
    assert order == [(3, caller), (1, caller), (2, caller)]


def test_thread_counts_are_restored_and_never_raised(two_threads):
    with pytest.raises(RuntimeError):
        with torch_threads(1):
            assert torch.get_num_threads() == 1
            raise RuntimeError
    assert torch.get_num_threads() == 2
    assert 1 <= free_cores() <= 2
    with single_pass("cpu"):
        assert 1 <= torch.get_num_threads() <= 2
    assert torch.get_num_threads() == 2


def test_encoding_on_workers_equals_one_thread_and_a_cancel_loses_nothing(clip, two_threads):
    texts = [f"a photo of {n} cats, oil painting" + " detailed" * (n % 5) for n in range(40)]
    encoder = TextEncoder(clip, batch_size=4)
    ours = encoder.encode(texts)
    with torch_threads(1):
        serial = encoder.encode(texts)
    assert torch.allclose(ours, serial, atol=1e-6)

    calls = []

    def hook(done, total, desc):
        calls.append(done)
        if done == 2:
            raise Cancelled("user pressed cancel")

    with pytest.raises(Cancelled):
        encoder.encode(texts, hook, "Embedding")
    assert calls[-1] == 2 and torch.get_num_threads() == 2
    assert torch.equal(encoder.encode(texts), ours)
