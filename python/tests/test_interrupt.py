"""Ctrl-C in Python: SIGINT during `pretext.pretrain` writes a checkpoint, raises
KeyboardInterrupt, and `Run.resume()` continues from it."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pretext
from conftest import DEMO

# Python leaves SIGINT ignored when it starts with it ignored, as a background job of a
# non-interactive shell (CI's runner, `cmd &`) starts: the child restores Python's usual
# Ctrl-C handling first, which is what this test is about.
CHILD = r"""
import signal, sys, pretext
signal.signal(signal.SIGINT, signal.default_int_handler)
try:
    pretext.pretrain(task="rotation", data=%(data)r, out=sys.argv[1], steps=100000, width=8,
                     batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=100000,
                     progress=False)
    print("finished")
except KeyboardInterrupt:
    print("KeyboardInterrupt")
"""


def test_sigint_stops_with_a_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    # The child's output goes to files, not pipes, so nothing it prints can wait on this process.
    out_file, err_file = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with open(out_file, "w") as o, open(err_file, "w") as e:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD % {"data": DEMO}, str(out)],
            stdout=o,
            stderr=e,
            text=True,
            cwd=str(Path(__file__).parent),
        )
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.exists() and len(metrics.read_text().splitlines()) >= 2):
        assert child.poll() is None, (out_file.read_text(), err_file.read_text())
        time.sleep(0.1)
    assert metrics.exists() and len(metrics.read_text().splitlines()) >= 2, \
        "training did not start in 120 s"
    child.send_signal(signal.SIGINT)
    try:
        child.wait(timeout=120)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        raise AssertionError("no end 120 s after SIGINT; stdout %r, stderr tail %r"
                             % (out_file.read_text(), err_file.read_text()[-3000:]))
    stdout, stderr = out_file.read_text(), err_file.read_text()
    assert child.returncode == 0, stderr
    assert stdout.strip() == "KeyboardInterrupt", (stdout, stderr)
    assert "interrupted: writing a checkpoint" in stderr
    assert "panicked" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert not summary["completed"] and summary["steps_done"] >= 2
    step = summary["steps_done"]
    assert (out / "checkpoints" / ("step-%08d" % step)).exists()
    run = pretext.Run(out).resume(stop_after=step + 2, progress=False)
    assert run.last["steps_done"] == step + 2
    steps = [json.loads(l)["step"] for l in metrics.read_text().splitlines()]
    assert steps == sorted(set(steps)) and steps[-1] == step + 2
