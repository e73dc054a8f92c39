"""Shared pieces of the Python package's tests: where the data and the `pretext` binary are,
and small runs (width 8, a few steps) on real data, made once per session."""

import gzip
import os
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pretext

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"
FASHION = SHARED / "fashion-mnist"
PHOTOS = SHARED / "photos"
DEMO = "builtin:fashion-mnist-demo"

# The smallest runs the existing Rust tests use (tests/common/mod.rs, tests/cli.rs).
TINY = dict(width=8, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2)


def strict():
    """Under CI=true a missing tool or data set fails instead of skipping (as .ci/run says)."""
    return os.environ.get("CI") == "true"


def missing(what):
    if strict():
        pytest.fail("%s (CI=true: every tool must be installed)" % what)
    pytest.skip(what)


def cli_binary():
    """The `pretext` binary: $PRETEXT_BIN, else the workspace's target/{debug,release}/pretext,
    else `pretext` on PATH."""
    env = os.environ.get("PRETEXT_BIN")
    if env:
        return env
    target = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
    for profile in ("debug", "release"):
        p = target / profile / "pretext"
        if p.exists():
            return str(p)
    return shutil.which("pretext")


@pytest.fixture(scope="session")
def cli():
    """Run the binary; returns the finished process (stdout, stderr as text)."""
    binary = cli_binary()
    if binary is None:
        missing("no pretext binary (cargo build, or set PRETEXT_BIN)")

    def run(*args, check=True):
        p = subprocess.run([binary, *map(str, args)], capture_output=True, text=True)
        if check and p.returncode != 0:
            raise AssertionError("pretext %s failed:\n%s" % (" ".join(map(str, args)), p.stderr))
        return p

    return run


def read_idx(path, n):
    """The first n images of an idx3 file (gz)."""
    with gzip.open(path, "rb") as f:
        _, _, _, dims = struct.unpack(">BBBB", f.read(4))
        shape = struct.unpack(">" + "I" * dims, f.read(4 * dims))
        count = int(np.prod(shape[1:]))
        return np.frombuffer(f.read(n * count), dtype=np.uint8).reshape((n,) + shape[1:])


def write_idx(path, arr):
    kind = 0x08
    with open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, kind, arr.ndim))
        f.write(struct.pack(">" + "I" * arr.ndim, *arr.shape))
        f.write(np.ascontiguousarray(arr).tobytes())


@pytest.fixture(scope="session")
def fashion_slice(tmp_path_factory):
    """40 training and 8 test images of the real Fashion-MNIST as an idx directory, and the
    arrays (train then test, the rows `pretext embed` writes)."""
    if not FASHION.exists():
        missing("no %s" % FASHION)
    d = tmp_path_factory.mktemp("fashion48")
    train = read_idx(FASHION / "train-images-idx3-ubyte.gz", 40)
    test = read_idx(FASHION / "t10k-images-idx3-ubyte.gz", 8)
    write_idx(d / "train-images-idx3-ubyte", train)
    write_idx(d / "t10k-images-idx3-ubyte", test)
    write_idx(d / "train-labels-idx1-ubyte", np.arange(40, dtype=np.uint8) % 10)
    write_idx(d / "t10k-labels-idx1-ubyte", np.arange(8, dtype=np.uint8) % 10)
    return d, np.concatenate([train, test])


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """A finished rotation run on the built-in demo data (4 steps)."""
    out = tmp_path_factory.mktemp("runs") / "rot"
    return pretext.pretrain(
        task="rotation", data=DEMO, out=out, steps=4, progress=False, **TINY
    )
