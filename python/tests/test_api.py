"""The Python API end to end on small real runs: pretrain + resume, transfer, export, tasks,
and compare, each checked against what the run directory (or the command line) says."""

import json
import subprocess
import sys

import numpy as np
import pytest

import pretext
from conftest import DEMO, TINY


def test_tasks_lists_the_cli_tasks(cli):
    names = [t["name"] for t in pretext.tasks()]
    assert "rotation" in names and "causal-lm" in names
    kinds = {t["name"]: t["kind"] for t in pretext.tasks()}
    assert kinds["rotation"] == "images" and kinds["masked-lm"] == "text"
    # The same tasks, in the same order, as `pretext tasks`.
    lines = cli("tasks").stdout.splitlines()
    assert [l.split()[0] for l in lines] == names


def test_pretrain_stops_and_resumes(tmp_path):
    out = tmp_path / "rot"
    run = pretext.pretrain(
        task="rotation",
        data=DEMO,
        out=out,
        steps=6,
        stop_after=3,
        progress=False,
        settings={"limit": 128},
        **TINY,
        **{"rotation.flip": False}
    )
    assert isinstance(run, pretext.Run) and run.path == out
    assert run.last["steps_done"] == 3 and not run.last["completed"]
    assert (out / "checkpoints" / "latest").exists()
    cfg = (out / "config.toml").read_text()
    assert "width = 8" in cfg and "steps = 6" in cfg and "limit = 128" in cfg, cfg
    assert "flip = false" in cfg, cfg
    again = run.resume(progress=False)
    assert again == run
    assert again.last["steps_done"] == 6 and again.last["completed"]
    assert run.summary["steps_done"] == 6 and run.completed
    steps = [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 6 and sorted(set(steps)) == steps, steps
    assert run.kind == "image" and run.info["task"] == "rotation"


def test_transfer_returns_the_json_it_wrote(tiny_run, tmp_path, cli):
    r = pretext.transfer(
        tiny_run, protocol="knn", labels_per_class=5, test_limit=200, progress=False
    )
    assert r.path == tiny_run.path / "transfer" / "knn-5-seed0.json"
    assert json.loads(r.path.read_text()) == dict(r)
    assert r["n_train"] == 50 and r["n_test"] == 200
    assert 0.0 <= r["accuracy"] <= 1.0
    # The command line, same settings, into another directory: the same result.
    out = tmp_path / "cli"
    cli(
        "transfer", "--from", tiny_run.path, "--protocol", "knn", "--labels-per-class", "5",
        "--set", "test_limit=200", "--out", out, "--quiet",
    )
    from_cli = json.loads((out / "knn-5-seed0.json").read_text())
    assert set(from_cli) == set(r)
    assert from_cli["accuracy"] == r["accuracy"]
    # A baseline, with settings as a dict.
    base = pretext.transfer(
        "random", data=DEMO, protocol="linear", labels_per_class=2, out=tmp_path / "random",
        settings={"test_limit": 100, "probe_steps": 20}, progress=False,
    )
    assert base.path.parent == tmp_path / "random" and base["n_train"] == 20


def test_export_onnx_and_torch_dir(tiny_run, tmp_path):
    r = pretext.export(tiny_run, format="onnx", out=tmp_path / "enc.onnx")
    assert r["path"] == tmp_path / "enc.onnx" and r["path"].stat().st_size == r["bytes"]
    assert r["architecture"] == "convnet" and r["task"] == "rotation" and r["steps"] == 4
    t = pretext.export(tiny_run, format="torch", out=tmp_path / "torch")
    assert (tmp_path / "torch" / "pretext_encoder.py").read_text() == (
        __import__("pathlib").Path(pretext.__file__).parent / "pretext_encoder.py"
    ).read_text()
    assert t["format"] == "torch"


def test_import_does_not_import_torch():
    code = "import sys, pretext; assert 'torch' not in sys.modules; print(pretext.__version__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == pretext.__version__


def test_compare_small(tmp_path):
    r = pretext.compare(
        DEMO,
        out=tmp_path / "cmp",
        tasks=["rotation"],
        labels_per_class=[2],
        protocols="linear",
        budget=2,
        seeds=1,
        stages="none",
        width=8,
        batch_size=8,
        transfer_settings={"test_limit": 100, "probe_steps": 20, "finetune_steps": 4},
        progress=False,
    )
    assert r["report_md"].exists() and r["report_html"].exists()
    assert r["cells_run"] == r["cells_total"] > 0 and not r["interrupted"]
    md = r["report_md"].read_text()
    assert "| rotation | linear |" in md, md
    again = pretext.compare(
        DEMO, out=tmp_path / "cmp", tasks="rotation", labels_per_class="2",
        protocols="linear", budget=2, seeds=1, stages="none", width=8, batch_size=8,
        transfer_settings={"test_limit": 100, "probe_steps": 20, "finetune_steps": 4},
        progress=False,
    )
    assert again["cells_run"] == 0
