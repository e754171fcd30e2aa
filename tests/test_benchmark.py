"""The benchmark script runs end to end and its prompts match the reference (a smoke test, not a timing test)."""

import json
import os
import subprocess
import sys
import time

import pytest

from tests.tiny_models import TINY_CLIP_CONFIG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_benchmark_prints_a_table_of_identical_prompts(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "benchmark.py"), "--arch", str(config), "--device", "cpu",
         "--labels", "1500", "--intermediate", "32", "--repeats", "1"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| work | reference s | ours s | speed-up")
    modes = {row.split(" | ")[0][2:]: row for row in rows[1:]}
    assert set(modes) == {"embed all labels (first run)", "reload embeddings from cache", "fast mode",
                          "classic mode", "best mode", "negative mode"}
    for mode in ("fast mode", "classic mode", "best mode", "negative mode"):
        assert modes[mode].rstrip().endswith("| yes |"), modes[mode]


def test_dataset_benchmark_prints_a_table_of_both_paths():
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "dataset.py"), "--images", "3", "--batch-size", "2",
         "--threads", "1"], capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line.split(" | ")[0][2:] for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows == ["path", "batch", "one at a time"]
    assert result.stdout.rstrip().endswith("identical caption files: yes")




def test_cancel_latency_script_prints_its_table(tmp_path):
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(TINY_CLIP_CONFIG))
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "bench", "cancel_latency.py"), "--arch", str(config), "--labels", "600"],
        capture_output=True, text=True, timeout=900, env=dict(os.environ, HF_HUB_OFFLINE="1"))
    assert result.returncode == 0, result.stdout + result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| hook calls | embedding: longest gap") and len(rows) == 3
    assert rows[1].startswith("| per finished unit only |") and rows[2].startswith("| polls every 0.2 s |")
    assert "identical prompt: yes" in result.stdout
def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as file:
            return file.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process state from /proc")
def test_contention_runs_lowest_priority_spinners_and_always_stops_them():
    from bench.benchmark import competing_load

    with pytest.raises(KeyboardInterrupt):
        with competing_load(2) as pids:
            assert len(pids) == 2
            deadline = time.monotonic() + 30
            while any(os.getpriority(os.PRIO_PROCESS, p) != 19 for p in pids) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [os.getpriority(os.PRIO_PROCESS, p) for p in pids] == [19, 19]
            assert os.getsid(0) not in {os.getsid(p) for p in pids}  # they compete like other programs
            assert all(_alive(p) for p in pids)
            raise KeyboardInterrupt  # a Ctrl-C mid-run
    assert not any(_alive(p) for p in pids)
