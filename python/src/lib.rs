//! `pretext._pretext`: the Python package's extension module, a thin layer over the pretext
//! library. Every function here turns its arguments into the request the command line builds and
//! calls the same library function as `pretext <command>` (see `src/commands/`); the Python
//! wrappers in `pretext/__init__.py` shape the arguments and results.
//!
//! The work runs on a Rust thread while the calling thread, without the GIL, wakes every 100 ms
//! to let Python handle signals: Ctrl-C asks a pretraining (or compare) to write its checkpoint
//! and stop, as on the command line, and raises `KeyboardInterrupt` once it has. Errors become
//! `pretext.PretextError` subclasses with the command line's one-line message; a panic becomes a
//! `PretextError` too, and prints nothing (the panic hook is silent).

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::mpsc::{channel, RecvTimeoutError};
use std::time::Duration;

use numpy::{PyArray1, PyArrayMethods, PyReadonlyArray4, PyUntypedArrayMethods};
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

use pretext::commands::cli::{PretrainArgs, TransferArgs};
use pretext::commands::embed::{images, text_embed, EmbedRequest};
use pretext::commands::export::{ExportRequest, Format};
use pretext::commands::{compare, embed, export, pretrain, transfer};
use pretext::engine::run_dir::{read_run_info, RunInfo, RUN_INFO};
use pretext::engine::run_loop;
use pretext::platform::device;
use pretext::{tasks, Error};

/// mimalloc with freed pages kept, as the `pretext` binary runs (src/main.rs): the same training
/// speed from Python as from the command line.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in libmimalloc-sys 0.1.49 (pinned, as in the root Cargo.toml).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

create_exception!(
    _pretext,
    PretextError,
    PyException,
    "Base of every error pretext raises; the message is the command line's one line."
);
create_exception!(
    _pretext,
    UsageError,
    PretextError,
    "Something impossible was asked for (unknown task, missing run, wrong shape, ...)."
);
create_exception!(
    _pretext,
    ConfigError,
    PretextError,
    "A bad setting (key or value), as `--set` or a preset file would report it."
);
create_exception!(
    _pretext,
    DataError,
    PretextError,
    "A data set could not be read; the message names the file and position."
);
create_exception!(
    _pretext,
    IoError,
    PretextError,
    "A file of pretext's own (config, checkpoint, result) could not be read or written."
);
create_exception!(
    _pretext,
    CheckpointError,
    PretextError,
    "A checkpoint or saved encoder is missing pieces or does not fit the model."
);
create_exception!(
    _pretext,
    TrainingError,
    PretextError,
    "Training diverged or was stopped."
);

/// The exception for a library error, with the message `pretext` prints after `error: `.
fn to_py(e: Error) -> PyErr {
    let msg = e.chain();
    match e {
        Error::Usage(_) => UsageError::new_err(msg),
        Error::Config { .. } => ConfigError::new_err(msg),
        Error::Data(_) => DataError::new_err(msg),
        Error::Io { .. } => IoError::new_err(msg),
        Error::Checkpoint { .. } => CheckpointError::new_err(msg),
        Error::Training { .. } => TrainingError::new_err(msg),
    }
}

fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Run `work` on its own thread with the GIL released, handling Python's signals every 100 ms.
/// With `checkpoints` (pretraining, compare), a `KeyboardInterrupt` asks the loop to write a
/// checkpoint and stop, waits for it, and is raised then; a second one stops waiting. Without,
/// the exception is raised at once and the work finishes in the background.
fn run_blocking<T, F>(py: Python<'_>, checkpoints: bool, work: F) -> PyResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> pretext::Result<T> + Send + 'static,
{
    let (tx, rx) = channel();
    std::thread::Builder::new()
        .name("pretext".into())
        // The binary's work runs on the main thread (8 MiB); a spawned thread gets 2 MiB.
        .stack_size(8 << 20)
        .spawn(move || {
            let _ = tx.send(std::panic::catch_unwind(AssertUnwindSafe(work)));
        })
        .map_err(|e| PretextError::new_err(format!("could not start a thread: {e}")))?;
    let mut rx = rx;
    let mut stopping: Option<PyErr> = None;
    loop {
        let (got, back) = py.detach(move || (rx.recv_timeout(Duration::from_millis(100)), rx));
        rx = back;
        match got {
            Ok(result) => {
                if let Some(interrupt) = stopping {
                    return Err(interrupt);
                }
                return match result {
                    Ok(Ok(v)) => Ok(v),
                    Ok(Err(e)) => Err(to_py(e)),
                    Err(panic) => Err(PretextError::new_err(format!(
                        "internal error (a bug in pretext, please report it): {}",
                        panic_message(panic.as_ref())
                    ))),
                };
            }
            Err(RecvTimeoutError::Disconnected) => {
                return Err(PretextError::new_err(
                    "internal error: pretext's worker thread ended without a result",
                ))
            }
            Err(RecvTimeoutError::Timeout) => {}
        }
        if let Err(e) = py.check_signals() {
            if stopping.is_some() || !checkpoints {
                return Err(e);
            }
            run_loop::interrupt();
            stopping = Some(e);
        }
        // A loop that starts after the signal clears the flag: ask again until the work ends.
        if stopping.is_some() && !run_loop::interrupted() {
            run_loop::interrupt();
        }
    }
}

fn json_string<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("json")
}

/// `pretext pretrain`: returns the run's summary as JSON.
#[pyfunction]
#[pyo3(signature = (task, data, out, resume, config, tokenizer, sets, device, skip_bad, stop_after, quiet))]
#[allow(clippy::too_many_arguments)]
fn _pretrain(
    py: Python<'_>,
    task: Option<String>,
    data: Option<String>,
    out: Option<PathBuf>,
    resume: Option<PathBuf>,
    config: Option<PathBuf>,
    tokenizer: Option<String>,
    sets: Vec<String>,
    device: String,
    skip_bad: bool,
    stop_after: Option<u64>,
    quiet: bool,
) -> PyResult<String> {
    let args = PretrainArgs {
        task,
        data,
        tokenizer,
        out,
        resume,
        config,
        set: sets,
        device,
        skip_bad,
        stop_after,
        quiet,
    };
    let done = run_blocking(py, true, move || pretrain::run(args))?;
    Ok(json_string(&done.summary))
}

/// `pretext transfer`: returns the path of the result JSON it wrote.
#[pyfunction]
#[pyo3(signature = (source, data, labels_per_class, protocol, config, sets, out, device, quiet))]
#[allow(clippy::too_many_arguments)]
fn _transfer(
    py: Python<'_>,
    source: String,
    data: Option<String>,
    labels_per_class: String,
    protocol: String,
    config: Option<PathBuf>,
    sets: Vec<String>,
    out: Option<PathBuf>,
    device: String,
    quiet: bool,
) -> PyResult<PathBuf> {
    let args = TransferArgs {
        from: source,
        data,
        labels_per_class,
        protocol,
        config,
        set: sets,
        out,
        device,
        quiet,
    };
    let done = run_blocking(py, false, move || transfer::run(args))?;
    Ok(done.path().to_path_buf())
}

/// `image` or `text`: what kind of encoder a run directory holds.
#[pyfunction]
fn _run_kind(run: PathBuf) -> PyResult<&'static str> {
    match read_run_info(&run).map_err(to_py)? {
        Some(RunInfo::Image(_)) => Ok("image"),
        Some(RunInfo::Text(_)) => Ok("text"),
        None => Err(UsageError::new_err(format!(
            "{}: no {RUN_INFO} there; pass a directory written by `pretext pretrain` (or pretext.pretrain)",
            run.display()
        ))),
    }
}

fn image_info(run: &std::path::Path) -> pretext::Result<pretext::engine::run_dir::EncoderInfo> {
    match read_run_info(run)? {
        Some(RunInfo::Image(info)) => Ok(info),
        Some(RunInfo::Text(info)) => Err(Error::Usage(format!(
            "{}: a {} (text) run; its transformer takes documents (a list of str), not images",
            run.display(),
            info.task
        ))),
        None => Err(Error::Usage(format!(
            "{}: no {RUN_INFO} there; pass a directory written by `pretext pretrain`",
            run.display()
        ))),
    }
}

fn to_array<'py>(py: Python<'py>, (v, dim): (Vec<f32>, usize)) -> PyResult<Bound<'py, PyAny>> {
    let rows = v.len().checked_div(dim).unwrap_or(0);
    Ok(PyArray1::from_vec(py, v).reshape([rows, dim])?.into_any())
}

/// Pixels of n images of c×h×w: (pixels, n, (c, h, w)).
type Images<T> = (Vec<T>, usize, (usize, usize, usize));

/// The pixels of a C-contiguous [n, c, h, w] array, copied (the work runs on another thread).
fn pixels<T: numpy::Element + Copy>(a: &PyReadonlyArray4<'_, T>) -> PyResult<Images<T>> {
    let s = a.shape();
    let data = a
        .as_slice()
        .map_err(|_| UsageError::new_err("images: expected a C-contiguous array"))?
        .to_vec();
    Ok((data, s[0], (s[1], s[2], s[3])))
}

/// How a pixel type's images are handed to the library.
type Wrap<T> = for<'a> fn(&'a [T], usize, (usize, usize, usize)) -> images::InMemory<'a>;

/// Vectors of in-memory images; `wrap` says how their pixels are kept.
fn embed_images<'py, T: Send + Sync + 'static>(
    py: Python<'py>,
    run: PathBuf,
    (px, n, chw): Images<T>,
    wrap: Wrap<T>,
    (stage, batch_size, device): (Option<usize>, Option<usize>, String),
) -> PyResult<Bound<'py, PyAny>> {
    let out = run_blocking(py, false, move || {
        let info = image_info(&run)?;
        let device = device::parse(&device)?;
        images::embed_in_memory(&run, &info, wrap(&px, n, chw), stage, batch_size, &device)
    })?;
    to_array(py, out)
}

fn as_u8(pixels: &[u8], n: usize, chw: (usize, usize, usize)) -> images::InMemory<'_> {
    images::InMemory::U8 { pixels, n, chw }
}

fn as_f32(pixels: &[f32], n: usize, chw: (usize, usize, usize)) -> images::InMemory<'_> {
    images::InMemory::F32 { pixels, n, chw }
}

/// Vectors of uint8 images, [n, c, h, w].
#[pyfunction]
#[pyo3(signature = (run, images, stage, batch_size, device))]
fn _embed_u8<'py>(
    py: Python<'py>,
    run: PathBuf,
    images: PyReadonlyArray4<'py, u8>,
    stage: Option<usize>,
    batch_size: Option<usize>,
    device: String,
) -> PyResult<Bound<'py, PyAny>> {
    let how = (stage, batch_size, device);
    embed_images(py, run, pixels(&images)?, as_u8, how)
}

/// Vectors of float32 images in [0, 1], [n, c, h, w].
#[pyfunction]
#[pyo3(signature = (run, images, stage, batch_size, device))]
fn _embed_f32<'py>(
    py: Python<'py>,
    run: PathBuf,
    images: PyReadonlyArray4<'py, f32>,
    stage: Option<usize>,
    batch_size: Option<usize>,
    device: String,
) -> PyResult<Bound<'py, PyAny>> {
    let how = (stage, batch_size, device);
    embed_images(py, run, pixels(&images)?, as_f32, how)
}

/// Vectors of image files, decoded as a `folder:` data set's are.
#[pyfunction]
#[pyo3(signature = (run, paths, stage, batch_size, device))]
fn _embed_files<'py>(
    py: Python<'py>,
    run: PathBuf,
    paths: Vec<PathBuf>,
    stage: Option<usize>,
    batch_size: Option<usize>,
    device: String,
) -> PyResult<Bound<'py, PyAny>> {
    let out = run_blocking(py, false, move || {
        let info = image_info(&run)?;
        let images = images::InMemory::Files(&paths);
        images::embed_in_memory(
            &run,
            &info,
            images,
            stage,
            batch_size,
            &device::parse(&device)?,
        )
    })?;
    to_array(py, out)
}

/// Vectors of documents (text runs).
#[pyfunction]
#[pyo3(signature = (run, docs, batch_size, device))]
fn _embed_documents<'py>(
    py: Python<'py>,
    run: PathBuf,
    docs: Vec<String>,
    batch_size: Option<usize>,
    device: String,
) -> PyResult<Bound<'py, PyAny>> {
    let out = run_blocking(py, false, move || {
        text_embed::embed_documents(&run, &docs, batch_size, &device::parse(&device)?)
    })?;
    to_array(py, out)
}

/// `pretext embed --data SPEC --out FILE`: writes the files; returns FILE.json's content.
#[pyfunction]
#[pyo3(signature = (run, data, out, stage, skip_bad, batch_size, device, quiet))]
#[allow(clippy::too_many_arguments)]
fn _embed_data(
    py: Python<'_>,
    run: PathBuf,
    data: Option<String>,
    out: PathBuf,
    stage: Option<usize>,
    skip_bad: bool,
    batch_size: Option<usize>,
    device: String,
    quiet: bool,
) -> PyResult<String> {
    let info = run_blocking(py, false, move || {
        embed::embed(&EmbedRequest {
            from: run,
            data,
            out,
            stage,
            skip_bad,
            batch_size,
            device: device::parse(&device)?,
            quiet,
        })
    })?;
    Ok(json_string(&info))
}

/// `pretext export`: returns what was written, as JSON.
#[pyfunction]
#[pyo3(signature = (run, format, out))]
fn _export(py: Python<'_>, run: PathBuf, format: String, out: PathBuf) -> PyResult<String> {
    let r = run_blocking(py, false, move || {
        export::export(&ExportRequest {
            from: run,
            format: Format::parse(&format)?,
            out,
            device: device::parse("cpu")?,
        })
    })?;
    Ok(serde_json::json!({
        "path": r.path,
        "bytes": r.bytes,
        "params": r.params,
        "wall_s": r.wall_s,
        "architecture": r.architecture,
        "task": r.task,
        "steps": r.steps,
        "format": r.format,
        "tokenizer": r.tokenizer,
    })
    .to_string())
}

/// `pretext compare`: returns the outcome as JSON.
#[pyfunction]
#[pyo3(signature = (data, tasks, labels_per_class, protocols, budget, minutes, seeds, stages, sets, transfer_sets, out, device, command, quiet))]
#[allow(clippy::too_many_arguments)]
fn _compare(
    py: Python<'_>,
    data: String,
    tasks: Option<String>,
    labels_per_class: Option<String>,
    protocols: String,
    budget: u64,
    minutes: f64,
    seeds: u64,
    stages: String,
    sets: Vec<String>,
    transfer_sets: Vec<String>,
    out: PathBuf,
    device: String,
    command: String,
    quiet: bool,
) -> PyResult<String> {
    let o = run_blocking(py, true, move || {
        compare::run(&compare::CompareRequest {
            device: device::parse(&device)?,
            data,
            tasks,
            labels_per_class,
            protocols,
            budget,
            minutes,
            seeds,
            stages,
            pretrain_sets: sets,
            transfer_sets,
            out,
            device_name: device,
            command,
            quiet,
        })
    })?;
    Ok(serde_json::json!({
        "report_html": o.report_html,
        "report_md": o.report_md,
        "cells_run": o.cells_run,
        "cells_total": o.cells_total,
        "skipped": o.skipped,
        "interrupted": o.interrupted,
    })
    .to_string())
}

/// `pretext tasks`: (name, kind, description) of every pretext task.
#[pyfunction]
fn _tasks() -> Vec<(&'static str, &'static str, &'static str)> {
    tasks::TASKS
        .iter()
        .map(|t| {
            let kind = if t.is_text() { "text" } else { "images" };
            (t.name, kind, t.description)
        })
        .collect()
}

#[pymodule]
fn _pretext(m: &Bound<'_, PyModule>) -> PyResult<()> {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; valid at any time.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    // Python handles SIGINT; the work is stopped through `run_loop::interrupt` (run_blocking).
    run_loop::use_external_interrupts();
    // A panic in pretext's work becomes a PretextError (run_blocking) and prints nothing. The
    // work runs on threads of its own, so only panics off the importing (Python's) thread are
    // silenced: another Rust extension's panic on Python's thread still reports as it would.
    let python_thread = std::thread::current().id();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() == python_thread {
            previous(info);
        }
    }));
    let py = m.py();
    m.add("PretextError", py.get_type::<PretextError>())?;
    m.add("UsageError", py.get_type::<UsageError>())?;
    m.add("ConfigError", py.get_type::<ConfigError>())?;
    m.add("DataError", py.get_type::<DataError>())?;
    m.add("IoError", py.get_type::<IoError>())?;
    m.add("CheckpointError", py.get_type::<CheckpointError>())?;
    m.add("TrainingError", py.get_type::<TrainingError>())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    m.add_function(wrap_pyfunction!(_pretrain, m)?)?;
    m.add_function(wrap_pyfunction!(_transfer, m)?)?;
    m.add_function(wrap_pyfunction!(_run_kind, m)?)?;
    m.add_function(wrap_pyfunction!(_embed_u8, m)?)?;
    m.add_function(wrap_pyfunction!(_embed_f32, m)?)?;
    m.add_function(wrap_pyfunction!(_embed_files, m)?)?;
    m.add_function(wrap_pyfunction!(_embed_documents, m)?)?;
    m.add_function(wrap_pyfunction!(_embed_data, m)?)?;
    m.add_function(wrap_pyfunction!(_export, m)?)?;
    m.add_function(wrap_pyfunction!(_compare, m)?)?;
    m.add_function(wrap_pyfunction!(_tasks, m)?)?;
    Ok(())
}
