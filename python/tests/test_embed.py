"""`pretext.embed` gives the command line's vectors bit for bit: arrays (uint8 and float32),
image files, a data spec and documents, each against the .npy `pretext embed` writes."""

import csv

import numpy as np
import pytest

import pretext
from conftest import PHOTOS, TINY, missing


def cli_vectors(cli, run, data, out):
    cli("embed", "--from", run, "--data", data, "--out", out, "--quiet")
    with open(out.with_suffix(".csv")) as f:
        ids = [row["id"] for row in csv.DictReader(f)]
    return np.load(out), ids


def test_arrays_equal_the_cli_bit_for_bit(fashion_slice, tmp_path, cli):
    d, images = fashion_slice  # 48 uint8 images 28×28, train then test
    run = pretext.pretrain(
        task="rotation", data="idx:%s" % d, out=tmp_path / "rot", steps=3,
        progress=False, **TINY
    )
    want, ids = cli_vectors(cli, run.path, "idx:%s" % d, tmp_path / "cli.npy")
    assert want.shape[0] == 48 and ids[0] == "train/0" and ids[-1] == "test/7"

    got = pretext.embed(run, images)  # N×H×W
    assert got.dtype == np.float32 and got.shape == want.shape
    assert np.array_equal(got, want)
    assert np.array_equal(pretext.embed(run, images[..., None]), want)  # N×H×W×C
    floats = images[:, None].astype(np.float32) / np.float32(255)  # N×C×H×W in [0, 1]
    assert np.array_equal(pretext.embed(run, floats), want)
    # Batches of another size change nothing but speed.
    assert np.array_equal(pretext.embed(run, images, batch_size=5), want)
    # A data spec runs the command's own path; out= keeps its files.
    spec = pretext.embed(run, data="idx:%s" % d, out=tmp_path / "py.npy", progress=False)
    assert np.array_equal(spec, want) and (tmp_path / "py.csv").exists()
    # An earlier stage: a different, narrower vector (width 8: stage 2 has 16 channels).
    s2 = pretext.embed(run, images, stage=2)
    assert s2.shape == (48, 16)
    cli("embed", "--from", run.path, "--data", "idx:%s" % d, "--stage", "2",
        "--out", tmp_path / "s2.npy", "--quiet")
    assert np.array_equal(s2, np.load(tmp_path / "s2.npy"))


def test_image_files_equal_the_cli_folder(tmp_path, cli):
    if not PHOTOS.exists():
        missing("no %s" % PHOTOS)
    run = pretext.pretrain(
        task="rotation", data="folder:%s" % PHOTOS, out=tmp_path / "photos", steps=2,
        image_size=32, progress=False, **TINY
    )
    want, ids = cli_vectors(cli, run.path, "folder:%s" % PHOTOS, tmp_path / "cli.npy")
    assert len(ids) == want.shape[0] >= 20
    got = pretext.embed(run, ids)
    assert np.array_equal(got, want)
    # Another order of the same files: the same rows, reordered.
    assert np.array_equal(pretext.embed(run, ids[::-1]), want[::-1])


def test_documents_equal_the_cli_jsonl(tmp_path, cli):
    import gzip
    import json

    from conftest import SHARED

    src = SHARED / "text" / "spamassassin.jsonl.gz"
    if not src.exists():
        missing("no %s" % src)
    with gzip.open(src, "rt") as f:
        lines = [next(f) for _ in range(40)]
    data = tmp_path / "mails.jsonl"
    data.write_text("".join(lines))
    run = pretext.pretrain(
        task="masked-lm", data="jsonl:%s" % data, out=tmp_path / "bert", tokenizer="bytes",
        steps=2, d_model=32, layers=1, heads=2, seq_len=32, batch_size=4, warmup_steps=1,
        eval_every=2, eval_batches=1, checkpoint_every=2, val_fraction=0.2, progress=False,
    )
    assert run.kind == "text"
    want, ids = cli_vectors(cli, run.path, "jsonl:%s" % data, tmp_path / "cli.npy")
    assert want.shape == (40, 32)
    docs = [json.loads(l)["text"] for l in lines]
    got = pretext.embed(run, docs)
    assert got.dtype == np.float32 and np.array_equal(got, want)
    with pytest.raises(pretext.UsageError):
        pretext.embed(run, np.zeros((1, 28, 28), np.uint8))  # images to a text run
