//! The collectives of data-parallel training, one rank per process.
//!
//! [`Comm`] is all the training loop asks of a communicator: its rank and
//! size, rank 0's bytes broadcast to every rank, a sum of every rank's
//! numbers that every rank holds bit for bit, a gather of every rank's
//! numbers in rank order, and a barrier. [`Single`] is a world of one and
//! does nothing; the `align-mpi` crate (its `mpi` feature, the runner's
//! `mpi` feature) starts MPI when the process was launched by `mpiexec` or
//! `srun` with more than one rank. [`local::group`] is a world of threads
//! in one process, for tests.
//!
//! The process's communicator is [`world`]: `align_mpi::init` sets it once,
//! at the start of `main` ([`install`]); until then, and in every
//! single-process run, it is [`Single`]. This crate has no features, so the
//! crates that call it are built once whether the runner has MPI or not.

use std::ops::Range;
use std::sync::OnceLock;

pub mod local;

/// A communicator over the ranks of one data-parallel run. Every rank calls
/// every collective in the same order (each blocks until all have).
pub trait Comm: Send + Sync {
    /// This process's rank, `0..size()`.
    fn rank(&self) -> usize;

    /// The number of ranks.
    fn size(&self) -> usize;

    /// Rank 0 writes results and checkpoints; the others only train.
    fn is_root(&self) -> bool {
        self.rank() == 0
    }

    /// Returns when every rank has called it.
    fn barrier(&self);

    /// Rank 0's `buf` into every rank's `buf` (same length everywhere).
    fn broadcast(&self, buf: &mut [u8]);

    /// The element-wise sum of every rank's `buf`, into every rank's `buf`,
    /// the same bits on every rank (reduced in one place, then broadcast:
    /// MPI does not promise an all-reduce's float sums agree across ranks).
    fn sum_f32(&self, buf: &mut [f32]);

    /// As [`sum_f32`](Self::sum_f32), in f64.
    fn sum_f64(&self, buf: &mut [f64]);

    /// Every rank's `local` end to end in rank order; `counts[r]` is rank
    /// `r`'s length (every rank passes the same `counts`).
    fn gather_f64(&self, local: &[f64], counts: &[usize]) -> Vec<f64>;

    /// Ends every rank of the run with `code` (an error on one rank would
    /// otherwise leave the others waiting in a collective).
    fn abort(&self, code: i32) -> !;
}

/// A world of one process: every collective is the identity.
#[derive(Debug, Default, Clone, Copy)]
pub struct Single;

impl Comm for Single {
    fn rank(&self) -> usize {
        0
    }
    fn size(&self) -> usize {
        1
    }
    fn barrier(&self) {}
    fn broadcast(&self, _buf: &mut [u8]) {}
    fn sum_f32(&self, _buf: &mut [f32]) {}
    fn sum_f64(&self, _buf: &mut [f64]) {}
    fn gather_f64(&self, local: &[f64], counts: &[usize]) -> Vec<f64> {
        assert_eq!(counts, [local.len()], "one rank, one count");
        local.to_vec()
    }
    fn abort(&self, code: i32) -> ! {
        std::process::exit(code)
    }
}

static WORLD: OnceLock<Box<dyn Comm>> = OnceLock::new();

/// The process's communicator: MPI's world after [`init`] started it, else
/// a [`Single`] process.
pub fn world() -> &'static dyn Comm {
    match WORLD.get() {
        Some(c) => c.as_ref(),
        None => &Single,
    }
}

/// Rank `rank`'s share of `items` items among `size` ranks: a contiguous
/// block, sizes differing by at most one, blocks in rank order, so the
/// ranks' blocks end to end are `0..items`, each index once.
pub fn shard(items: usize, rank: usize, size: usize) -> Range<usize> {
    assert!(size > 0 && rank < size, "rank {rank} of {size}");
    (rank * items / size)..((rank + 1) * items / size)
}

/// How many ranks the launcher says this process is one of, and its rank:
/// MPICH's (and Intel MPI's, and Slurm's PMI-2) `PMI_SIZE`/`PMI_RANK`, Open
/// MPI's `OMPI_COMM_WORLD_SIZE`/`OMPI_COMM_WORLD_RANK`, else Slurm's
/// `SLURM_STEP_NUM_TASKS`/`SLURM_PROCID` (`srun -n N` with PMIx); `None`
/// when no launcher started it.
pub fn launched() -> Option<(usize, usize)> {
    let var = |name: &str| std::env::var(name).ok()?.trim().parse::<usize>().ok();
    [
        ("PMI_SIZE", "PMI_RANK"),
        ("OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK"),
        ("SLURM_STEP_NUM_TASKS", "SLURM_PROCID"),
    ]
    .iter()
    .find_map(|(size, rank)| Some((var(size)?, var(rank).unwrap_or(0))))
}

/// This process's index among the ranks on its node, as the launcher says:
/// Open MPI's `OMPI_COMM_WORLD_LOCAL_RANK`, MPICH's (hydra's)
/// `MPI_LOCALRANKID`, Slurm's `SLURM_LOCALID`; `None` when none does.
pub fn local_rank() -> Option<usize> {
    [
        "OMPI_COMM_WORLD_LOCAL_RANK",
        "MPI_LOCALRANKID",
        "SLURM_LOCALID",
    ]
    .iter()
    .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// Makes `comm` the process's [`world`] (once, before any collective:
/// `align_mpi::init` calls it when it starts MPI).
pub fn install(comm: Box<dyn Comm>) -> anyhow::Result<()> {
    WORLD
        .set(comm)
        .map_err(|_| anyhow::anyhow!("the process's communicator was set twice"))
}

/// Refuses a launch of more than one rank (by `mpiexec` or `srun`) in a
/// build without MPI: each rank would otherwise run the whole experiment
/// on its own, into the same directory.
pub fn refuse_launch() -> anyhow::Result<()> {
    match launched() {
        Some((size, rank)) if size > 1 => anyhow::bail!(
            "this process is rank {rank} of {size} (started by mpiexec or srun), but this runner \
             was built without MPI: build it with `cargo build --release -p runner --features mpi` \
             (Debian: apt-get install mpich libmpich-dev libclang-dev), or run one process"
        ),
        _ => Ok(()),
    }
}

/// Runs `f` on rank 0 first and on the others once it has returned: for
/// work that fills a cache the other ranks then read (a stage that trains
/// and saves a model). An error on rank 0 skips the barrier: the caller
/// ends the run (see [`Comm::abort`]).
pub fn root_first<T>(f: impl FnOnce() -> anyhow::Result<T>) -> anyhow::Result<T> {
    let comm = world();
    if comm.is_root() {
        let out = f()?;
        comm.barrier();
        Ok(out)
    } else {
        comm.barrier();
        f()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_every_item_once_in_order() {
        for items in 0..40 {
            for size in 1..9 {
                let blocks: Vec<Range<usize>> = (0..size).map(|r| shard(items, r, size)).collect();
                let all: Vec<usize> = blocks.iter().flat_map(|b| b.clone()).collect();
                assert_eq!(all, (0..items).collect::<Vec<_>>(), "{items} over {size}");
                let (lo, hi) = (
                    blocks.iter().map(|b| b.len()).min().unwrap(),
                    blocks.iter().map(|b| b.len()).max().unwrap(),
                );
                assert!(hi - lo <= 1, "{items} over {size}: {blocks:?}");
            }
        }
    }

    /// A build without MPI refuses to be one of several ranks (each would
    /// run the whole experiment) and runs alone as ever. The only test here
    /// that touches the environment.
    #[test]
    fn a_multi_rank_launch_without_mpi_is_refused() {
        std::env::set_var("PMI_SIZE", "3");
        std::env::set_var("PMI_RANK", "1");
        let err = refuse_launch().expect_err("refused");
        assert!(err.to_string().contains("rank 1 of 3"), "{err}");
        std::env::set_var("PMI_SIZE", "1");
        assert!(refuse_launch().is_ok());
        std::env::remove_var("PMI_SIZE");
        std::env::remove_var("PMI_RANK");
        assert!(refuse_launch().is_ok());
    }

    #[test]
    fn a_single_process_is_the_identity() {
        let c = Single;
        let mut x = [1.5f32, -2.0];
        c.sum_f32(&mut x);
        assert_eq!(x, [1.5, -2.0]);
        assert_eq!(c.gather_f64(&[3.0], &[1]), [3.0]);
        assert!(c.is_root() && c.size() == 1);
        assert_eq!(world().size(), 1, "no launcher in tests: one process");
    }
}
