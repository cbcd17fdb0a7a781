//! Where a data-parallel run sums its gradients: on CUDA through NCCL, in
//! the gradients' own kind (bf16 in a bf16 run), when the runner is built
//! with `--features nccl`; else in host memory over the run's communicator
//! (MPI). `BRAIN_NCCL` chooses: `auto` (the default: NCCL for a CUDA run of
//! several ranks, when built with it), `off` (host memory always), or `on`
//! (NCCL even in a world of one, which then sums one rank's gradients
//! through NCCL: how `scripts/gpu-check.sh` tries the loop's NCCL path on
//! one GPU).

use std::sync::OnceLock;

use align_core::optim::DeviceSum;
use align_distributed::Comm;
use align_nccl::Nccl;
use anyhow::Context;
use tch::{Device, Tensor};

/// NCCL as the optimizer's [`DeviceSum`].
pub struct NcclSum(pub Nccl);

impl DeviceSum for NcclSum {
    fn sum_in_place(&self, t: &Tensor) -> anyhow::Result<()> {
        self.0.all_reduce_sum(t)
    }
}

/// The process's NCCL communicator: made by the first run that needs it
/// (every rank runs the manifest's runs in the same order, so every rank
/// joins at the same point), on that run's device, and kept.
static NCCL: OnceLock<(usize, NcclSum)> = OnceLock::new();

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Auto,
    Off,
    On,
}

fn choice() -> anyhow::Result<Choice> {
    match std::env::var("BRAIN_NCCL").as_deref() {
        Err(_) | Ok("") | Ok("auto") => Ok(Choice::Auto),
        Ok("off") | Ok("0") => Ok(Choice::Off),
        Ok("on") | Ok("1") => Ok(Choice::On),
        Ok(other) => anyhow::bail!("BRAIN_NCCL={other}: write `auto`, `on` or `off`"),
    }
}

/// The device sum for a run training on `device` over `comm`: `None` sums
/// in host memory (or, in a world of one, not at all).
pub fn for_run(comm: &dyn Comm, device: Device) -> anyhow::Result<Option<&'static dyn DeviceSum>> {
    let choice = choice()?;
    let wanted = match choice {
        Choice::Off => false,
        Choice::On => true,
        Choice::Auto => comm.size() > 1 && device.is_cuda(),
    };
    if !wanted {
        return Ok(None);
    }
    let Device::Cuda(index) = device else {
        anyhow::bail!("BRAIN_NCCL=on: NCCL sums CUDA tensors, and this run trains on {device:?}");
    };
    if choice == Choice::Auto && !align_nccl::BUILT {
        static SAID: OnceLock<()> = OnceLock::new();
        if comm.is_root() && SAID.set(()).is_ok() {
            eprintln!(
                "note: the {} ranks sum their CUDA gradients through host memory over MPI; \
                 build the runner with `--features \"mpi nccl\"` to sum them on the GPUs \
                 through NCCL",
                comm.size()
            );
        }
        return Ok(None);
    }
    if let Some((at, sum)) = NCCL.get() {
        anyhow::ensure!(
            *at == index,
            "this process's NCCL communicator is on cuda:{at}, and this run trains on \
             cuda:{index}: give every run of the manifest the same device"
        );
        return Ok(Some(sum));
    }
    let nccl = Nccl::new(comm, index).with_context(|| {
        format!(
            "joining NCCL for the gradients of rank {} of {} on cuda:{index} (each rank needs a \
             GPU of its own: start at most as many ranks on a node as it has GPUs, or sum \
             through host memory with BRAIN_NCCL=off)",
            comm.rank(),
            comm.size()
        )
    })?;
    let (_, sum) = NCCL.get_or_init(|| (index, NcclSum(nccl)));
    Ok(Some(sum))
}
