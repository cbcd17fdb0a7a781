//! Sums of CUDA tensors over the ranks of a data-parallel run, through NCCL.
//!
//! [`Nccl::new`] makes one communicator over the ranks of an
//! [`align_distributed::Comm`]: rank 0 asks NCCL for a unique id and the
//! run's communicator (MPI) broadcasts its 128 bytes, then every rank joins
//! with its rank. [`Nccl::all_reduce_sum`] sums a contiguous CUDA tensor
//! (f32, f64, bf16 or f16) in place on every rank.
//!
//! The bindings are cudarc's, loaded at run time (`dynamic-loading`): a build
//! needs neither CUDA nor NCCL, only the `nccl` feature. The library is the
//! `libnccl.so.2` of the PyTorch wheel (`site-packages/nvidia/nccl/lib`);
//! cudarc looks for it as `libnccl.so`, so a directory with that name linked
//! to it goes on `LD_LIBRARY_PATH` (`scripts/gpu-check.sh` makes one).
//!
//! NCCL runs on CUDA's legacy default stream, the one LibTorch's kernels run
//! on unless a caller switched streams: the sum is ordered after the kernels
//! that wrote the tensor and before those that read it.

use align_distributed::Comm;
use tch::Tensor;

/// Whether this build has NCCL (the `nccl` feature); without it
/// [`Nccl::new`] says how to build with it.
pub const BUILT: bool = cfg!(feature = "nccl");

/// NCCL's version, e.g. `(2, 28, 9)`.
pub fn version() -> anyhow::Result<(i32, i32, i32)> {
    imp::version()
}

/// A communicator over every rank of a run, each on its own CUDA device.
pub struct Nccl {
    inner: imp::Inner,
    rank: usize,
    size: usize,
}

impl Nccl {
    /// Joins every rank of `world`, this one on CUDA device `device` (every
    /// rank calls it, in the same order as the run's other collectives).
    pub fn new(world: &dyn Comm, device: usize) -> anyhow::Result<Nccl> {
        let inner = imp::Inner::new(world, device)?;
        Ok(Nccl {
            inner,
            rank: world.rank(),
            size: world.size(),
        })
    }

    pub fn rank(&self) -> usize {
        self.rank
    }

    pub fn size(&self) -> usize {
        self.size
    }

    /// Every rank's `t` summed, into every rank's `t`: a contiguous CUDA
    /// tensor of f32, f64, bf16 or f16, the same shape on every rank.
    pub fn all_reduce_sum(&self, t: &Tensor) -> anyhow::Result<()> {
        anyhow::ensure!(
            t.device().is_cuda(),
            "NCCL sums CUDA tensors; this one is on {:?}",
            t.device()
        );
        anyhow::ensure!(
            t.is_contiguous(),
            "NCCL sums contiguous tensors (call .contiguous() first)"
        );
        self.inner.all_reduce_sum(t)
    }

    /// Waits until every NCCL call made so far on this device has finished
    /// (an error inside one surfaces here at the latest).
    pub fn synchronize(&self) -> anyhow::Result<()> {
        self.inner.synchronize()
    }
}

#[cfg(feature = "nccl")]
mod imp {
    use std::ffi::c_int;

    use align_distributed::Comm;
    use anyhow::Context;
    use cudarc::nccl::{result, sys};
    use tch::{Kind, Tensor};

    /// Checks that libnccl can be loaded before cudarc would panic on it.
    fn loadable() -> anyhow::Result<()> {
        // SAFETY: only tries to open the library.
        if unsafe { sys::is_culib_present() } {
            return Ok(());
        }
        anyhow::bail!(
            "cannot load NCCL: no `libnccl.so` on LD_LIBRARY_PATH. The PyTorch wheel ships it \
             as site-packages/nvidia/nccl/lib/libnccl.so.2: make a directory with a link \
             `libnccl.so` to it and put that directory on LD_LIBRARY_PATH \
             (scripts/gpu-check.sh does so)"
        )
    }

    pub fn version() -> anyhow::Result<(i32, i32, i32)> {
        loadable()?;
        let v = result::get_nccl_version().map_err(|e| anyhow::anyhow!("ncclGetVersion: {e:?}"))?;
        // NCCL ≥ 2.9 encodes MAJOR·10000 + MINOR·100 + PATCH.
        Ok((v / 10000, v / 100 % 100, v % 100))
    }

    pub struct Inner {
        comm: sys::ncclComm_t,
        device: usize,
    }

    // SAFETY: an NCCL communicator may be used from any thread, one call at
    // a time; `Inner` is used through `&self` only by the training loop's
    // thread.
    unsafe impl Send for Inner {}
    unsafe impl Sync for Inner {}

    impl Inner {
        pub fn new(world: &dyn Comm, device: usize) -> anyhow::Result<Inner> {
            loadable()?;
            // NCCL binds a communicator to the current device.
            cudarc::runtime::result::device::set(device as c_int)
                .map_err(|e| anyhow::anyhow!("cudaSetDevice({device}): {e:?}"))?;
            let mut id = [0u8; 128];
            if world.is_root() {
                let uid = result::get_uniqueid()
                    .map_err(|e| anyhow::anyhow!("ncclGetUniqueId: {e:?}"))?;
                for (b, c) in id.iter_mut().zip(uid.internal) {
                    *b = c as u8;
                }
            }
            world.broadcast(&mut id);
            let mut uid = sys::ncclUniqueId { internal: [0; 128] };
            for (c, b) in uid.internal.iter_mut().zip(id) {
                *c = b as std::ffi::c_char;
            }
            let mut comm: sys::ncclComm_t = std::ptr::null_mut();
            // SAFETY: `comm` is written by NCCL; every rank passes the same id.
            unsafe {
                result::comm_init_rank(&mut comm, world.size() as c_int, uid, world.rank() as c_int)
            }
            .map_err(|e| anyhow::anyhow!("ncclCommInitRank: {e:?}"))
            .with_context(|| format!("rank {} of {}", world.rank(), world.size()))?;
            Ok(Inner { comm, device })
        }

        pub fn all_reduce_sum(&self, t: &Tensor) -> anyhow::Result<()> {
            let dtype = match t.kind() {
                Kind::Float => sys::ncclDataType_t::ncclFloat32,
                Kind::Double => sys::ncclDataType_t::ncclFloat64,
                Kind::BFloat16 => sys::ncclDataType_t::ncclBfloat16,
                Kind::Half => sys::ncclDataType_t::ncclFloat16,
                other => anyhow::bail!("NCCL sums f32, f64, bf16 or f16 tensors, not {other:?}"),
            };
            let ptr = t.data_ptr();
            // SAFETY: `t` is a contiguous CUDA tensor of `numel` elements of
            // `dtype` that outlives the call's stream order (the caller
            // holds it); in place is allowed (send = receive buffer).
            unsafe {
                result::all_reduce(
                    ptr,
                    ptr,
                    t.numel(),
                    dtype,
                    sys::ncclRedOp_t::ncclSum,
                    self.comm,
                    std::ptr::null_mut(), // the legacy default stream: LibTorch's
                )
            }
            .map_err(|e| anyhow::anyhow!("ncclAllReduce: {e:?}"))?;
            Ok(())
        }

        pub fn synchronize(&self) -> anyhow::Result<()> {
            tch::Cuda::synchronize(self.device as i64);
            Ok(())
        }
    }

    impl Drop for Inner {
        fn drop(&mut self) {
            // SAFETY: the communicator was made by `ncclCommInitRank` and is
            // dropped once.
            let _ = unsafe { result::comm_destroy(self.comm) };
        }
    }
}

#[cfg(not(feature = "nccl"))]
mod imp {
    use align_distributed::Comm;
    use tch::Tensor;

    const NOT_BUILT: &str = "this build has no NCCL: build the runner with \
                             `--features nccl` (it loads the PyTorch wheel's libnccl at run time)";

    pub fn version() -> anyhow::Result<(i32, i32, i32)> {
        anyhow::bail!(NOT_BUILT)
    }

    pub struct Inner;

    impl Inner {
        pub fn new(_: &dyn Comm, _: usize) -> anyhow::Result<Inner> {
            anyhow::bail!(NOT_BUILT)
        }

        pub fn all_reduce_sum(&self, _: &Tensor) -> anyhow::Result<()> {
            unreachable!("an `Inner` is never made without NCCL")
        }

        pub fn synchronize(&self) -> anyhow::Result<()> {
            Ok(())
        }
    }
}
