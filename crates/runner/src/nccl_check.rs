//! `runner nccl-check`: the NCCL path on this machine's GPU, alone. Every
//! rank of the run (one without `mpiexec`) sums `(rank + 1) · v` for bf16
//! and f32 tensors `v` on its CUDA device, checks every element equals
//! `v · size (size + 1) / 2` exactly (small integers: exact in bf16 too);
//! then does the same through the training loop's path (bf16 parameters'
//! gradients flattened on the device, summed by NCCL, written back, one
//! tensor without a gradient left without one); and times a large bf16
//! sum. Prints one JSON line per rank.

use std::time::Instant;

use align_core::optim::Optimizer;
use align_nccl::Nccl;
use anyhow::Context;
use serde_json::json;
use tch::{Device, Kind, Tensor};

#[derive(clap::Args)]
pub struct NcclCheckArgs {
    /// CUDA device: `cuda` (this rank's local index) or `cuda:N`.
    #[arg(long, default_value = "cuda")]
    pub device: String,
    /// MiB of bf16 in the timed sum.
    #[arg(long, default_value_t = 256)]
    pub mib: usize,
    /// Timed repetitions of that sum.
    #[arg(long, default_value_t = 5)]
    pub repeats: usize,
}

/// This rank's CUDA device index.
fn device_index(spec: &str, world: &dyn align_distributed::Comm) -> anyhow::Result<usize> {
    match spec.strip_prefix("cuda") {
        Some("") => {
            anyhow::ensure!(
                tch::Cuda::device_count() > 0,
                "no CUDA device is visible to LibTorch"
            );
            // The GPU a training run on this rank uses.
            match runner::rank_device(Device::Cuda(0), world) {
                Device::Cuda(i) => Ok(i),
                _ => unreachable!("a CUDA device stays one"),
            }
        }
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .with_context(|| format!("--device {spec}: write `cuda` or `cuda:N`")),
        None => anyhow::bail!("--device {spec}: NCCL needs a CUDA device (`cuda` or `cuda:N`)"),
    }
}

pub fn nccl_check(args: &NcclCheckArgs) -> anyhow::Result<()> {
    let world = align_distributed::world();
    let index = device_index(&args.device, world)?;
    let device = Device::Cuda(index);
    let version = align_nccl::version()?;
    let nccl = runner::grad_sum::NcclSum(Nccl::new(world, index)?);
    let loop_path = gradients_check(world, &nccl, device)?;
    let nccl = &nccl.0;
    let (rank, size) = (nccl.rank(), nccl.size());
    let total = (size * (size + 1) / 2) as f64; // Σ (rank + 1)

    let mut checks = serde_json::Map::new();
    for kind in [Kind::BFloat16, Kind::Float] {
        // Values 0..=7: every partial sum over ≤ 8 ranks is an integer < 256.
        let v = Tensor::arange(1 << 20, (Kind::Int64, device)).remainder(8); // [N]
        let mine = (&v * (rank as i64 + 1)).to_kind(kind);
        nccl.all_reduce_sum(&mine)?;
        nccl.synchronize()?;
        let want = (v.to_kind(Kind::Double) * total).to_kind(kind);
        let wrong = mine.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
        checks.insert(
            format!("{kind:?}").to_lowercase(),
            json!({ "elements": mine.numel(), "wrong": wrong }),
        );
        anyhow::ensure!(
            wrong == 0,
            "rank {rank}: {wrong} of {} {kind:?} sums differ from v·{total}",
            mine.numel()
        );
    }

    let n = (args.mib << 20) / 2;
    let big = Tensor::ones([n as i64], (Kind::BFloat16, device));
    nccl.all_reduce_sum(&big)?; // warm-up
    nccl.synchronize()?;
    let mut seconds = Vec::new();
    for _ in 0..args.repeats {
        let start = Instant::now();
        nccl.all_reduce_sum(&big)?;
        nccl.synchronize()?;
        seconds.push(start.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    let median = seconds[seconds.len() / 2];
    println!(
        "{}",
        json!({
            "check": "nccl",
            "nccl_version": format!("{}.{}.{}", version.0, version.1, version.2),
            "rank": rank,
            "world_size": size,
            "device": format!("cuda:{index}"),
            "exact_sums": checks,
            "loop_gradients": loop_path,
            "timed_bf16_mib": args.mib,
            "seconds": seconds,
            "median_seconds": median,
            // NCCL's bus bandwidth of an all-reduce: bytes · 2 (n − 1) / n.
            "bus_gb_per_s": (n * 2) as f64 * 2.0 * (size as f64 - 1.0) / size as f64 / median / 1e9,
        })
    );
    Ok(())
}

/// The loop's gradient sum ([`Optimizer::sum_grads`] through NCCL) on bf16
/// parameters whose gradients are `(rank + 1) · v`: every element must be
/// `v · size (size + 1) / 2` exactly, and a tensor no rank's loss reached
/// must stay without a gradient.
fn gradients_check(
    world: &dyn align_distributed::Comm,
    nccl: &runner::grad_sum::NcclSum,
    device: Device,
) -> anyhow::Result<serde_json::Value> {
    let (rank, size) = (world.rank(), world.size());
    let mut vs = tch::nn::VarStore::new(device);
    let used = vs.root().zeros("used", &[1 << 20]);
    let unused = vs.root().zeros("unused", &[1 << 10]);
    vs.set_kind(Kind::BFloat16);
    let mut opt = Optimizer::new(align_core::manifest::Optimizer::Adam, &vs, 1e-3)?;
    let v = Tensor::arange(1 << 20, (Kind::Int64, device)).remainder(8); // [N]
    let c = (&v * (rank as i64 + 1)).to_kind(Kind::BFloat16);
    opt.zero_grad();
    (&used * &c).sum(Kind::Float).backward();
    opt.sum_grads(world, Some(nccl))?;
    let want = (v.to_kind(Kind::Double) * (size * (size + 1) / 2) as f64).to_kind(Kind::BFloat16);
    let grad = used.grad();
    anyhow::ensure!(
        grad.kind() == Kind::BFloat16,
        "the gradient became {:?}",
        grad.kind()
    );
    let wrong = grad.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
    anyhow::ensure!(
        wrong == 0,
        "rank {rank}: {wrong} of {} summed bf16 gradients differ from v·{}",
        grad.numel(),
        size * (size + 1) / 2
    );
    anyhow::ensure!(
        !unused.grad().defined(),
        "rank {rank}: a tensor no loss reached got a gradient"
    );
    Ok(json!({ "elements": grad.numel(), "kind": "bfloat16", "wrong": wrong }))
}
