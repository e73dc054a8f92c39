"""Bad input raises a pretext.PretextError subclass with the command line's one-line message,
and nothing (no panic message, no traceback from Rust) reaches stderr."""

import numpy as np
import pytest

import pretext
from conftest import DEMO, TINY


def no_noise(capfd):
    err = capfd.readouterr().err
    assert "panicked" not in err and "RUST_BACKTRACE" not in err, err
    return err


def cli_message(cli, *args):
    p = cli(*args, check=False)
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip().splitlines()[-1]
    assert line.startswith("error: "), p.stderr
    return line[len("error: "):]


def test_hierarchy():
    for e in (pretext.UsageError, pretext.ConfigError, pretext.DataError, pretext.IoError,
              pretext.CheckpointError, pretext.TrainingError):
        assert issubclass(e, pretext.PretextError) and issubclass(e, Exception)


def test_unknown_setting_is_a_config_error_as_on_the_cli(tmp_path, capfd, cli):
    with pytest.raises(pretext.ConfigError) as e:
        pretext.pretrain(task="rotation", data=DEMO, out=tmp_path / "r", stepz=1, progress=False)
    assert "stepz" in str(e.value) and "\n" not in str(e.value)
    no_noise(capfd)
    assert str(e.value) == cli_message(
        cli, "pretrain", "--task", "rotation", "--data", DEMO, "--out", tmp_path / "c",
        "--set", "stepz=1",
    )


def test_unknown_task_and_missing_data(tmp_path, capfd, cli):
    with pytest.raises(pretext.PretextError) as e:
        pretext.pretrain(task="rotatoin", data=DEMO, out=tmp_path / "r", progress=False)
    assert "rotatoin" in str(e.value)
    assert str(e.value) == cli_message(
        cli, "pretrain", "--task", "rotatoin", "--data", DEMO, "--out", tmp_path / "c"
    )
    missing = tmp_path / "nowhere"
    with pytest.raises(pretext.DataError) as e:
        pretext.pretrain(task="rotation", data="idx:%s" % missing, out=tmp_path / "r2",
                         progress=False, **TINY)
    assert str(missing) in str(e.value)
    assert str(e.value) == cli_message(
        cli, "pretrain", "--task", "rotation", "--data", "idx:%s" % missing,
        "--out", tmp_path / "c2",
    )
    with pytest.raises(pretext.UsageError):
        pretext.pretrain(task="rotation", data=DEMO, progress=False)  # no out=
    no_noise(capfd)


def test_bad_runs_and_images(tiny_run, tmp_path, capfd):
    with pytest.raises(pretext.UsageError) as e:
        pretext.embed(tmp_path, np.zeros((2, 28, 28), np.uint8))
    assert "run.json" in str(e.value)
    with pytest.raises(pretext.UsageError) as e:  # the wrong size
        pretext.embed(tiny_run, np.zeros((2, 20, 20), np.uint8))
    assert "20×20" in str(e.value) and "28×28" in str(e.value), str(e.value)
    with pytest.raises(pretext.UsageError):  # values outside [0, 1]
        pretext.embed(tiny_run, np.full((2, 1, 28, 28), 255.0, np.float32))
    with pytest.raises(pretext.UsageError):
        pretext.embed(tiny_run, np.zeros((2, 28, 28), np.int64))
    with pytest.raises(pretext.UsageError) as e:
        pretext.embed(tiny_run, np.zeros((2, 28, 28), np.uint8), stage=9)
    assert "stage" in str(e.value)
    with pytest.raises(pretext.DataError):  # not an image file
        pretext.embed(tiny_run, [str(tmp_path / "missing.png")])
    with pytest.raises(pretext.UsageError):
        pretext.export(tiny_run, format="tflite", out=tmp_path / "x")
    with pytest.raises(pretext.PretextError):
        pretext.transfer(tiny_run, protocol="linear", labels_per_class="many", progress=False)
    with pytest.raises(pretext.PretextError):
        pretext.Run(tmp_path).resume(progress=False)
    no_noise(capfd)
