//! What every layer stands on: atomic file writes (`fsio`), the compute device (`device`) and
//! the MPI world (`dist`: rank, size, all-reduce; one process without the `mpi` feature).

pub mod device;
pub mod dist;
pub mod fsio;
