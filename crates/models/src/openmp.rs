//! Runs our CPU kernels on LibTorch's own OpenMP team.
//!
//! LibTorch parallelises its operators with OpenMP; its worker threads spin
//! for a while after each operator, waiting for the next. A second pool (say
//! rayon's) for our kernels would fight them for the cores: on 2 cores, a
//! first version on a rayon pool sampled SmolLM2 at 87 tokens/s where this
//! one reaches 199 (`runner bench`, batch 16, 2 threads; the rayon version
//! is not kept). So the tasks go to the team
//! through `GOMP_parallel`, the entry point GCC emits for `#pragma omp
//! parallel`, looked up at run time in the OpenMP runtime LibTorch loaded
//! (libgomp; LLVM's libomp exports it too). Where it is missing, the tasks
//! run on rayon's pool instead.

use std::any::Any;
use std::ffi::{c_uint, c_void};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

/// `void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads, unsigned flags)`.
type GompParallel = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);

fn gomp_parallel() -> Option<GompParallel> {
    static ENTRY: OnceLock<Option<GompParallel>> = OnceLock::new();
    *ENTRY.get_or_init(|| {
        #[cfg(unix)]
        {
            // SAFETY: dlsym with a NUL-terminated name; a non-null result is
            // the C function of the signature above (libgomp's ABI).
            unsafe {
                let symbol = libc::dlsym(libc::RTLD_DEFAULT, c"GOMP_parallel".as_ptr());
                (!symbol.is_null())
                    .then(|| std::mem::transmute::<*mut c_void, GompParallel>(symbol))
            }
        }
        #[cfg(not(unix))]
        {
            None
        }
    })
}

/// Work shared by the team: each thread claims task indices until none is left.
struct Job<'a> {
    task: &'a (dyn Fn(usize) + Sync),
    next: AtomicUsize,
    tasks: usize,
    /// A task's panic, carried past the C frames and resumed by the caller.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

extern "C" fn run_job(data: *mut c_void) {
    // SAFETY: `data` is the `Job` that `for_each_task` keeps alive until
    // `GOMP_parallel` returns (after every thread of the team has finished).
    let job = unsafe { &*(data as *const Job) };
    let claimed = std::panic::catch_unwind(AssertUnwindSafe(|| loop {
        let i = job.next.fetch_add(1, Ordering::Relaxed);
        if i >= job.tasks {
            break;
        }
        (job.task)(i);
    }));
    if let Err(payload) = claimed {
        // Stop the other threads claiming more, keep the first panic.
        job.next.store(job.tasks, Ordering::Relaxed);
        let mut slot = job.panic.lock().unwrap_or_else(|e| e.into_inner());
        slot.get_or_insert(payload);
    }
}

/// Calls `task(i)` once for every `i < tasks`, on up to `threads` threads.
pub fn for_each_task(threads: usize, tasks: usize, task: &(dyn Fn(usize) + Sync)) {
    if threads <= 1 || tasks <= 1 {
        (0..tasks).for_each(task);
        return;
    }
    match gomp_parallel() {
        Some(parallel) => {
            let job = Job {
                task,
                next: AtomicUsize::new(0),
                tasks,
                panic: Mutex::new(None),
            };
            let team = threads.min(tasks) as c_uint;
            // SAFETY: `run_job` matches the callback ABI and `job` outlives
            // the call, which returns once the whole team is done.
            unsafe { parallel(run_job, &job as *const Job as *mut c_void, team, 0) };
            let panic = job.panic.into_inner().unwrap_or_else(|e| e.into_inner());
            if let Some(payload) = panic {
                std::panic::resume_unwind(payload);
            }
        }
        None => (0..tasks).into_par_iter().for_each(task),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once() {
        for threads in [1, 2, 4] {
            let counts: Vec<AtomicUsize> = (0..37).map(|_| AtomicUsize::new(0)).collect();
            for_each_task(threads, counts.len(), &|i| {
                counts[i].fetch_add(1, Ordering::Relaxed);
            });
            assert!(
                counts.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "{threads} threads"
            );
        }
    }

    /// A panicking task unwinds out of `for_each_task` (not an abort in the
    /// C frames of the OpenMP runtime).
    #[test]
    fn a_task_panic_reaches_the_caller() {
        let caught = std::panic::catch_unwind(|| {
            for_each_task(2, 8, &|i| assert!(i != 5, "task 5 fails"));
        });
        let payload = caught.expect_err("the panic propagates");
        let message = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()));
        assert_eq!(message.as_deref(), Some("task 5 fails"));
    }
}
