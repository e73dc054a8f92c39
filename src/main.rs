//! The `pretext` binary: parse the command line, call the library, print the error chain once.

use clap::Parser;
use pretext::commands::{self, cli::Cli};
use pretext::platform::dist;
use pretext::Error;

/// mimalloc keeps freed blocks for reuse where glibc's malloc hands every large tensor buffer
/// back to the kernel and faults it in again on the next step: causal-LM training steps ran
/// ~25 % faster with it on this machine (BENCHMARKS.md).
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

extern "C" {
    /// mimalloc's `mi_option_set` (in the static library the `mimalloc` crate links).
    fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
}

/// `mi_option_purge_delay` in the mimalloc v3 sources that libmimalloc-sys 0.1.49 builds
/// (`c_src/mimalloc/v3/include/mimalloc.h`; Cargo.toml pins that version for this reason).
const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;

/// Never hand freed pages back to the kernel. A training step frees and reallocates the same
/// tensor buffers every step; with mimalloc's default purging the kernel zeroed them again on
/// the next touch (`clear_page_erms` 17 % of a causal-LM step's samples, 1 thread). The process
/// keeps its peak footprint instead, which it reaches on every step anyway. An explicit
/// `MIMALLOC_PURGE_DELAY` in the environment still wins.
fn keep_freed_pages() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one integer option; valid at any time, including before other threads.
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
}

fn main() {
    keep_freed_pages();
    let cli = Cli::parse();
    // Under mpirun/srun: join the MPI world (finalised when `session` drops).
    let session =
        match dist::init().and_then(|s| commands::only_pretrain_across_ranks(&cli).map(|_| s)) {
            Ok(s) => s,
            Err(e) => fail(e),
        };
    let result = commands::run(cli);
    if let Err(e) = result {
        if dist::size() > 1 {
            // The other ranks may be waiting for this one in a collective: end the whole job.
            eprintln!(
                "error on rank {} of {}: {:#}",
                dist::rank(),
                dist::size(),
                anyhow::Error::new(e)
            );
            dist::abort_job(2);
            unreachable!("MPI_Abort returns only when not under MPI");
        }
        drop(session);
        fail(e);
    }
    drop(session);
}

fn fail(e: Error) -> ! {
    let code = e.exit_code();
    eprintln!("error: {:#}", anyhow::Error::new(e));
    std::process::exit(code);
}
