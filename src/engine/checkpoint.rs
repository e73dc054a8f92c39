//! Checkpoints on disk. A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding the
//! task's model and optimiser state (burnpack, burn's own format, which keeps the parameter ids
//! the optimiser state is keyed by), the encoder as `encoder.safetensors`, and `state.json`.
//! It is written under a temporary name and renamed into place, and `checkpoints/latest` (itself
//! replaced atomically) names the newest complete one: a kill at any moment leaves the last
//! checkpoint whole, and a half-written one is never loaded.

use std::fs;
use std::path::{Path, PathBuf};

use burn::module::Module;
use burn::optim::ModuleOptimizer;
use burn::store::{ModuleSnapshot, SafetensorsStore};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::nn::Backbone;
pub use crate::platform::fsio::write_atomic;

/// What besides the weights a run needs to continue exactly where it stopped.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct CheckpointState {
    /// Steps completed.
    pub step: u64,
    /// The loader's next batch number (every batch's RNG is derived from the seed and this).
    pub data_cursor: u64,
    pub seed: u64,
    pub task: String,
}

/// Save a module's parameters and buffers. `valid()` first: it folds the pending per-thread update
/// of batch-norm running statistics into the stored value (burn keeps it one step behind until
/// then), so a checkpoint holds exactly the state training would continue with.
pub fn save_module<M: Module>(module: M, path: &Path) -> Result<()> {
    let bytes = module
        .valid()
        .into_record()
        .into_bytes()
        .map_err(|e| Error::checkpoint(path, e))?;
    write_atomic(path, &bytes)
}

pub fn load_module<M: Module>(module: M, path: &Path) -> Result<M> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let record = burn::store::ModuleRecord::from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::checkpoint(path, e))?;
    module
        .try_load_record(record)
        .map_err(|e| Error::checkpoint(path, e))
}

pub fn save_optimizer(optim: &ModuleOptimizer, path: &Path) -> Result<()> {
    let bytes = optim.into_bytes().map_err(|e| Error::checkpoint(path, e))?;
    write_atomic(path, &bytes)
}

pub fn load_optimizer(optim: ModuleOptimizer, path: &Path) -> Result<ModuleOptimizer> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    optim
        .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
        .map_err(|e| Error::checkpoint(path, e))
}

/// Save an encoder's weights as safetensors (the interchange format users load elsewhere).
pub fn save_encoder(encoder: &Backbone, path: &Path) -> Result<()> {
    save_weights(encoder, path)
}

/// Load safetensors weights into an encoder built from its spec; every tensor must fit.
pub fn load_encoder(encoder: Backbone, path: &Path) -> Result<Backbone> {
    load_weights(encoder, path)
}

/// Save any module's weights as safetensors.
pub fn save_weights<M: Module>(module: &M, path: &Path) -> Result<()> {
    // One metadata key only: burn keeps metadata in a HashMap, so several keys would be written in
    // a different order each time and identical weights would give different files.
    let mut store = SafetensorsStore::from_bytes(None)
        .clear_metadata()
        .metadata(
            "producer",
            concat!("pretext ", env!("CARGO_PKG_VERSION"), " (burn 0.22.1)"),
        );
    module
        .clone()
        .valid()
        .save_into(&mut store)
        .map_err(|e| Error::checkpoint(path, e))?;
    let bytes = store.get_bytes().map_err(|e| Error::checkpoint(path, e))?;
    write_atomic(path, &bytes)
}

/// Load safetensors weights into a module built from its spec; every tensor must fit.
pub fn load_weights<M: Module>(mut module: M, path: &Path) -> Result<M> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut store = SafetensorsStore::from_bytes(Some(bytes));
    let result = module
        .load_from(&mut store)
        .map_err(|e| Error::checkpoint(path, e))?;
    if !result.errors.is_empty() || !result.missing.is_empty() {
        return Err(Error::checkpoint(
            path,
            format!(
                "weights do not fit the model: errors {:?}, missing {:?}",
                result.errors, result.missing
            ),
        ));
    }
    Ok(module)
}

pub fn checkpoints_dir(run: &Path) -> PathBuf {
    run.join("checkpoints")
}

/// Write a checkpoint: `save` fills a fresh temporary directory, which is then renamed into place
/// and recorded as latest; older checkpoints beyond `keep` are removed.
pub fn write_checkpoint(
    run: &Path,
    state: &CheckpointState,
    keep: usize,
    save: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = checkpoints_dir(run);
    fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = format!("step-{:08}", state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    let dst = root.join(&name);
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    let filled = save(&tmp).and_then(|()| {
        fault_kill_in_checkpoint(state.step);
        let json = serde_json::to_vec_pretty(state).expect("state serialises");
        write_atomic(&tmp.join("state.json"), &json)
    });
    if let Err(e) = filled {
        // Disk full or read-only: give the space back; `latest` still names the previous one.
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dst.exists() {
        fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
    }
    fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    // The directory entry must reach the disk before `latest` names it.
    if let Ok(d) = fs::File::open(&root) {
        let _ = d.sync_all();
    }
    write_atomic(&root.join("latest"), name.as_bytes())?;
    prune(&root, &name, keep)?;
    Ok(dst)
}

/// Test hook for the interruption tests: when `PRETEXT_FAULT_KILL_IN_CHECKPOINT` equals `step`,
/// the process SIGKILLs itself halfway through writing that checkpoint (model and optimiser files
/// written, `state.json` not yet, not renamed into place) — a crash at the worst moment.
fn fault_kill_in_checkpoint(step: u64) {
    let wanted = std::env::var("PRETEXT_FAULT_KILL_IN_CHECKPOINT").ok();
    if wanted.and_then(|v| v.parse::<u64>().ok()) == Some(step) {
        #[cfg(unix)]
        // SAFETY: kill(2) on our own pid with a valid signal number has no memory effects.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
        std::process::abort();
    }
}

fn prune(root: &Path, latest: &str, keep: usize) -> Result<()> {
    let mut names: Vec<String> = fs::read_dir(root)
        .map_err(|e| Error::io(root, e))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("step-") || n.starts_with(".tmp-step-"))
        .collect();
    names.sort();
    let complete: Vec<&String> = names.iter().filter(|n| n.starts_with("step-")).collect();
    let cut = complete.len().saturating_sub(keep.max(1));
    for n in complete[..cut]
        .iter()
        .copied()
        .chain(names.iter().filter(|n| n.starts_with(".tmp-")))
    {
        if n != latest {
            let p = root.join(n);
            fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(())
}

/// The newest complete checkpoint of a run, if any.
pub fn latest_checkpoint(run: &Path) -> Result<Option<(PathBuf, CheckpointState)>> {
    let root = checkpoints_dir(run);
    let latest = root.join("latest");
    let name = match fs::read_to_string(&latest) {
        Ok(s) => s.trim().to_string(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&latest, e)),
    };
    if !name.starts_with("step-") || name.contains('/') {
        return Err(Error::checkpoint(
            &latest,
            format!("expected a name like step-00000100, found {name:?}"),
        ));
    }
    let dir = root.join(&name);
    let state_path = dir.join("state.json");
    let text = fs::read(&state_path).map_err(|e| Error::io(&state_path, e))?;
    let state: CheckpointState =
        serde_json::from_slice(&text).map_err(|e| Error::checkpoint(&state_path, e))?;
    Ok(Some((dir, state)))
}
