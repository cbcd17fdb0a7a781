//! [`align_distributed::Comm`] over MPI's world communicator (rsmpi), for
//! `mpiexec -n N runner MANIFEST` (or `srun` under Slurm): [`init`] at the
//! start of `main` starts MPI when the launcher started more than one rank
//! and makes it the process's [`align_distributed::world`].
//!
//! Without the `mpi` feature this crate needs no MPI: [`init`] refuses a
//! multi-rank launch and a single process runs as ever.

/// Holds MPI open; dropping it finalises MPI (keep it until `main` returns).
pub struct Guard {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Starts MPI when the launcher (`PMI_SIZE`, `OMPI_COMM_WORLD_SIZE`, …)
/// started more than one rank; a single process stays
/// [`align_distributed::Single`] and touches no MPI library. A build without
/// the `mpi` feature refuses a multi-rank launch.
pub fn init() -> anyhow::Result<Guard> {
    #[cfg(feature = "mpi")]
    if let Some((size, _)) = align_distributed::launched().filter(|(size, _)| *size > 1) {
        let (universe, comm) = imp::start()?;
        anyhow::ensure!(
            align_distributed::Comm::size(&comm) == size,
            "the launcher says {size} ranks, MPI's world has {}",
            align_distributed::Comm::size(&comm)
        );
        align_distributed::install(Box::new(comm))?;
        return Ok(Guard {
            _universe: Some(universe),
        });
    }
    #[cfg(not(feature = "mpi"))]
    align_distributed::refuse_launch()?;
    Ok(Guard {
        #[cfg(feature = "mpi")]
        _universe: None,
    })
}

#[cfg(feature = "mpi")]
mod imp {
    use mpi::collective::SystemOperation;
    use mpi::datatype::PartitionMut;
    use mpi::environment::Universe;
    use mpi::topology::SimpleCommunicator;
    use mpi::traits::*;
    use mpi::Count;

    use align_distributed::Comm;

    /// MPI counts are `int`: larger buffers go in pieces of this many elements.
    const CHUNK: usize = 1 << 30;

    pub(crate) struct MpiComm {
        world: SimpleCommunicator,
        rank: usize,
        size: usize,
    }

    // SAFETY: MPI is initialised with the default threading level and the runner
    // calls every collective from its main thread, the one that initialised MPI;
    // the communicator handle itself is an immutable id (an `int` in MPICH).
    unsafe impl Send for MpiComm {}
    unsafe impl Sync for MpiComm {}

    pub(crate) fn start() -> anyhow::Result<(Universe, MpiComm)> {
        let universe =
            mpi::initialize().ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let world = universe.world();
        let (rank, size) = (world.rank() as usize, world.size() as usize);
        Ok((universe, MpiComm { world, rank, size }))
    }

    impl MpiComm {
        /// The sum of every rank's `buf` at rank 0, then broadcast: every rank
        /// holds rank 0's bits.
        fn sum<T: Copy + Default + Equivalence>(&self, buf: &mut [T])
        where
            [T]: BufferMut,
        {
            let root = self.world.process_at_rank(0);
            for piece in buf.chunks_mut(CHUNK) {
                if self.rank == 0 {
                    let send = piece.to_vec();
                    root.reduce_into_root(&send[..], piece, SystemOperation::sum());
                } else {
                    root.reduce_into(&piece[..], SystemOperation::sum());
                }
                root.broadcast_into(piece);
            }
        }
    }

    impl Comm for MpiComm {
        fn rank(&self) -> usize {
            self.rank
        }
        fn size(&self) -> usize {
            self.size
        }
        fn barrier(&self) {
            self.world.barrier();
        }
        fn broadcast(&self, buf: &mut [u8]) {
            let root = self.world.process_at_rank(0);
            for piece in buf.chunks_mut(CHUNK) {
                root.broadcast_into(piece);
            }
        }
        fn sum_f32(&self, buf: &mut [f32]) {
            self.sum(buf);
        }
        fn sum_f64(&self, buf: &mut [f64]) {
            self.sum(buf);
        }
        fn gather_f64(&self, local: &[f64], counts: &[usize]) -> Vec<f64> {
            assert_eq!(counts.len(), self.size);
            assert_eq!(counts[self.rank], local.len(), "rank {}'s count", self.rank);
            let total: usize = counts.iter().sum();
            assert!(total < CHUNK, "a gather of {total} values");
            let displs: Vec<Count> = counts
                .iter()
                .scan(0, |at, &c| {
                    let d = *at;
                    *at += c as Count;
                    Some(d)
                })
                .collect();
            let counts: Vec<Count> = counts.iter().map(|&c| c as Count).collect();
            let mut out = vec![0.0f64; total];
            {
                let mut partition = PartitionMut::new(&mut out[..], counts, &displs[..]);
                self.world.all_gather_varcount_into(local, &mut partition);
            }
            out
        }
        fn abort(&self, code: i32) -> ! {
            self.world.abort(code)
        }
    }
}
