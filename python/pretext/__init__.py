"""pretext: self-supervised pretraining on unlabelled images and text, transfer with few labels.

The command line's jobs as Python functions, over the same Rust library (docs/python.md)::

    import pretext
    run = pretext.pretrain(task="rotation", data="builtin:fashion-mnist-demo", out="runs/rot",
                           steps=300, batch_size=64, **{"rotation.flip": False})
    result = pretext.transfer(run, protocol="linear", labels_per_class=10)   # the CLI's JSON
    vectors = pretext.embed(run, images)      # float32 [N, dim], the same bits as `pretext embed`
    pretext.export(run, format="onnx", out="encoder.onnx")

Settings are keyword arguments named as `--set` keys (or a ``settings=`` dict). Training runs
with the GIL released; Ctrl-C stops a pretraining with a checkpoint (``run.resume()``
continues it) and raises ``KeyboardInterrupt``. Progress goes to stderr (``progress=False``
turns it off). Errors are ``pretext.PretextError`` subclasses with the command line's message.

``pretext.torch`` is the exported encoders' PyTorch module (``pretext_encoder.py``); it is
imported on first use, so ``import pretext`` needs only NumPy.
"""

import json
import numbers
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

from . import _pretext
from ._pretext import (
    CheckpointError,
    ConfigError,
    DataError,
    IoError,
    PretextError,
    TrainingError,
    UsageError,
    __version__,
)

__all__ = [
    "Run",
    "Result",
    "pretrain",
    "resume",
    "transfer",
    "embed",
    "export",
    "compare",
    "tasks",
    "PretextError",
    "UsageError",
    "ConfigError",
    "DataError",
    "IoError",
    "CheckpointError",
    "TrainingError",
    "__version__",
]


def __getattr__(name):
    # PEP 562: `pretext.torch` imports torch only when it is asked for.
    if name == "torch":
        import importlib

        module = importlib.import_module(".pretext_encoder", __name__)
        globals()["torch"] = module
        return module
    raise AttributeError("module 'pretext' has no attribute %r" % name)


def _toml(key, value):
    """A Python value as the TOML that `--set key=value` takes."""
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, numbers.Integral):
        return str(int(value))
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, (str, os.PathLike)):
        return json.dumps(os.fspath(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(key, v) for v in value) + "]"
    raise UsageError(
        "setting %s: expected a bool, number, string or list, found %s"
        % (key, type(value).__name__)
    )


def _sets(settings, kwargs):
    """`--set` lines from a ``settings=`` dict and keyword arguments (the latter win)."""
    merged = dict(settings or {})
    merged.update(kwargs)
    return ["%s=%s" % (k, _toml(k, v)) for k, v in merged.items()]


def _path(p):
    return None if p is None else os.fspath(p)


def _budgets(v):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return ",".join(str(x) for x in v)
    return str(v)


class Result(dict):
    """A transfer's result: the JSON the command line writes, as a dict; ``.path`` is its file."""

    path: Path

    def __init__(self, data, path):
        super().__init__(data)
        self.path = Path(path)


class Run:
    """A pretraining run directory (as ``pretext pretrain --out`` writes it)."""

    def __init__(self, path, summary=None):
        self.path = Path(path)
        #: What the call that returned this Run reported (``summary.json``'s fields).
        self.last = summary

    def __fspath__(self):
        return os.fspath(self.path)

    def __repr__(self):
        return "Run(%r)" % os.fspath(self.path)

    def __eq__(self, other):
        return isinstance(other, Run) and self.path == other.path

    def __hash__(self):
        return hash(self.path)

    def _json(self, name):
        f = self.path / name
        if not f.exists():
            return None
        with open(f) as fh:
            return json.load(fh)

    @property
    def summary(self):
        """``summary.json`` (steps done, final loss, throughput, ...), or None before one exists."""
        return self._json("summary.json")

    @property
    def info(self):
        """``run.json``: kind (image or text), task, data, architecture, input normalisation."""
        return self._json("run.json")

    @property
    def completed(self):
        s = self.summary
        return bool(s and s.get("completed"))

    @property
    def kind(self):
        """``"image"`` or ``"text"``."""
        return _pretext._run_kind(os.fspath(self.path))

    def resume(self, *, stop_after=None, device="cpu", progress=True):
        """Continue the run from its latest checkpoint (``pretext pretrain --resume``)."""
        return resume(self, stop_after=stop_after, device=device, progress=progress)

    def transfer(self, **kwargs):
        """``pretext.transfer(self, ...)``."""
        return transfer(self, **kwargs)

    def embed(self, images=None, **kwargs):
        """``pretext.embed(self, ...)``."""
        return embed(self, images, **kwargs)

    def export(self, **kwargs):
        """``pretext.export(self, ...)``."""
        return export(self, **kwargs)


def tasks():
    """Every pretext task: a list of dicts with ``name``, ``kind`` (images/text), ``description``."""
    return [
        {"name": n, "kind": k, "description": d} for (n, k, d) in _pretext._tasks()
    ]


def pretrain(
    task=None,
    data=None,
    out=None,
    *,
    config=None,
    tokenizer=None,
    device="cpu",
    skip_bad=False,
    stop_after=None,
    progress=True,
    settings=None,
    **kwargs
):
    """Pretrain an encoder (``pretext pretrain``); returns the :class:`Run`.

    ``kwargs`` (and ``settings``) are config keys as for ``--set``: ``steps=100``,
    ``batch_size=64``, ``**{"rotation.flip": False}``.
    """
    if out is None:
        raise UsageError("out= is required (the run directory to create)")
    summary = _pretext._pretrain(
        task,
        data,
        _path(out),
        None,
        _path(config),
        _path(tokenizer),
        _sets(settings, kwargs),
        device,
        bool(skip_bad),
        stop_after,
        not progress,
    )
    return Run(out, json.loads(summary))


def resume(run, *, stop_after=None, device="cpu", progress=True):
    """Continue a run from its latest checkpoint (``pretext pretrain --resume RUN``)."""
    summary = _pretext._pretrain(
        None,
        None,
        None,
        _path(run),
        None,
        None,
        [],
        device,
        False,
        stop_after,
        not progress,
    )
    return Run(run, json.loads(summary))


def transfer(
    source,
    data=None,
    *,
    protocol="linear",
    labels_per_class=10,
    out=None,
    config=None,
    device="cpu",
    progress=True,
    settings=None,
    **kwargs
):
    """Evaluate an encoder on labelled data (``pretext transfer``).

    ``source``: a :class:`Run` or run directory, or ``"random"`` / ``"scratch"``. Returns the
    result JSON the command line writes, as a :class:`Result` (a dict with ``.path``).
    """
    path = _pretext._transfer(
        os.fspath(source),
        data,
        str(labels_per_class),
        protocol,
        _path(config),
        _sets(settings, kwargs),
        _path(out),
        device,
        not progress,
    )
    with open(path) as fh:
        return Result(json.load(fh), path)


def _images(images):
    """An image array as the extension takes it: C-contiguous [N, C, H, W], uint8 or float32."""
    a = np.asarray(images)
    if a.dtype == np.uint8:
        if a.ndim == 3:
            a = a[:, :, :, None]
        if a.ndim != 4:
            raise UsageError(
                "images: expected uint8 N×H×W or N×H×W×C, found %d dimensions %s"
                % (a.ndim, a.shape)
            )
        return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
    if a.dtype in (np.float32, np.float64):
        if a.ndim != 4:
            raise UsageError(
                "images: expected float32 N×C×H×W in [0, 1], found %d dimensions %s"
                % (a.ndim, a.shape)
            )
        a = np.ascontiguousarray(a, dtype=np.float32)
        if a.size and not (np.isfinite(a).all() and a.min() >= 0.0 and a.max() <= 1.0):
            raise UsageError(
                "images: expected float values in [0, 1], found %s to %s"
                % (np.nanmin(a), np.nanmax(a))
            )
        return a
    raise UsageError(
        "images: expected uint8 (N×H×W[×C]) or float32 (N×C×H×W in [0, 1]), found %s" % a.dtype
    )


def embed(
    run,
    images=None,
    *,
    data=None,
    out=None,
    stage=None,
    batch_size=None,
    skip_bad=False,
    device="cpu",
    progress=True
):
    """The run's vectors, float32 [N, dim] (``pretext embed``): the same numbers as the CLI's.

    ``images``: a uint8 array N×H×W or N×H×W×C, a float32 array N×C×H×W in [0, 1] (the run's
    normalisation is applied inside), a list of image file paths (image runs; decoded as a
    ``folder:`` data set's files), or a list of documents (text runs). Or ``data=`` a data spec
    (``folder:photos``, ``idx:...``; the run's own data when neither is given): then the CLI's
    files are written to ``out`` (FILE.npy + .csv + .json; a temporary file when None).
    """
    run_s = os.fspath(run)
    if images is None:
        if out is None:
            with tempfile.TemporaryDirectory() as tmp:
                target = os.path.join(tmp, "embed.npy")
                _pretext._embed_data(
                    run_s, data, target, stage, bool(skip_bad), batch_size, device, not progress
                )
                return np.load(target)
        _pretext._embed_data(
            run_s, data, _path(out), stage, bool(skip_bad), batch_size, device, not progress
        )
        return np.load(_path(out))
    if data is not None or out is not None or skip_bad:
        raise UsageError("embed: data=, out= and skip_bad= are for data specs, not images given in memory")
    if isinstance(images, (list, tuple)):
        if not images:
            raise UsageError("embed: an empty list (expected image paths or documents)")
        if not all(isinstance(x, (str, os.PathLike)) for x in images):
            raise UsageError("embed: expected a list of str (image paths or documents)")
        if _pretext._run_kind(run_s) == "text":
            if stage is not None:
                raise UsageError("stage= is for image encoders, not a text run")
            return _pretext._embed_documents(run_s, [str(x) for x in images], batch_size, device)
        return _pretext._embed_files(
            run_s, [os.fspath(x) for x in images], stage, batch_size, device
        )
    a = _images(images)
    if a.dtype == np.uint8:
        return _pretext._embed_u8(run_s, a, stage, batch_size, device)
    return _pretext._embed_f32(run_s, a, stage, batch_size, device)


def export(run, format, out):
    """Export the run's encoder (``pretext export``): ``format`` is ``"onnx"`` (one file) or
    ``"torch"`` (a directory); returns what was written (path, bytes, params, architecture...)."""
    r = json.loads(_pretext._export(os.fspath(run), format, os.fspath(out)))
    r["path"] = Path(r["path"])
    if r.get("tokenizer"):
        r["tokenizer"] = Path(r["tokenizer"])
    return r


def compare(
    data,
    *,
    out,
    tasks=None,
    labels_per_class=None,
    protocols="linear,knn,finetune",
    budget=1000,
    minutes=0.0,
    seeds=3,
    stages="all",
    transfer_settings=None,
    device="cpu",
    progress=True,
    settings=None,
    **kwargs
):
    """Pretrain several tasks with one budget and transfer each (``pretext compare``).

    ``kwargs``/``settings`` are pretraining keys for every task, ``transfer_settings`` a dict of
    transfer keys. Returns the report's paths (report_html, report_md), cells_run, cells_total,
    skipped tasks and whether it was interrupted (rerun to continue).
    """
    r = _pretext._compare(
        data,
        _budgets(tasks),
        _budgets(labels_per_class),
        _budgets(protocols),
        int(budget),
        float(minutes),
        int(seeds),
        _budgets(stages),
        _sets(settings, kwargs),
        _sets(transfer_settings, {}),
        os.fspath(out),
        device,
        "pretext.compare(...) from Python " + ".".join(str(v) for v in sys.version_info[:3]),
        not progress,
    )
    r = json.loads(r)
    for k in ("report_html", "report_md"):
        r[k] = Path(r[k])
    return r
