//! A world of ranks that are threads of one process, for tests of the
//! distributed code paths without MPI: [`group`]`(n)` gives one
//! communicator per rank, each to be moved into its own thread.
//!
//! Sums add the ranks' values in rank order, the same order on every rank,
//! so every rank holds the same bits, as the MPI communicator promises.

use std::sync::{Arc, Barrier, Mutex};

use crate::Comm;

struct Shared {
    barrier: Barrier,
    /// Each rank's contribution to the collective under way.
    slots: Mutex<Vec<Vec<u8>>>,
}

/// One rank of a [`group`].
pub struct Local {
    rank: usize,
    size: usize,
    shared: Arc<Shared>,
}

/// `size` communicators, rank `r` at index `r`.
pub fn group(size: usize) -> Vec<Local> {
    assert!(size > 0);
    let shared = Arc::new(Shared {
        barrier: Barrier::new(size),
        slots: Mutex::new(vec![Vec::new(); size]),
    });
    (0..size)
        .map(|rank| Local {
            rank,
            size,
            shared: shared.clone(),
        })
        .collect()
}

impl Local {
    /// Every rank's `bytes`, in rank order (a collective: all must call it).
    fn exchange(&self, bytes: Vec<u8>) -> Vec<Vec<u8>> {
        self.shared.slots.lock().unwrap()[self.rank] = bytes;
        self.shared.barrier.wait();
        let all = self.shared.slots.lock().unwrap().clone();
        // Nobody overwrites a slot before every rank has read them all.
        self.shared.barrier.wait();
        all
    }
}

fn to_bytes<T: Copy>(values: &[T], bytes: fn(T) -> Vec<u8>) -> Vec<u8> {
    values.iter().flat_map(|&v| bytes(v)).collect()
}

impl Comm for Local {
    fn rank(&self) -> usize {
        self.rank
    }
    fn size(&self) -> usize {
        self.size
    }
    fn barrier(&self) {
        self.shared.barrier.wait();
    }
    fn broadcast(&self, buf: &mut [u8]) {
        let all = self.exchange(buf.to_vec());
        buf.copy_from_slice(&all[0]);
    }
    fn sum_f32(&self, buf: &mut [f32]) {
        let all = self.exchange(to_bytes(buf, |v| v.to_le_bytes().to_vec()));
        for (i, x) in buf.iter_mut().enumerate() {
            *x = all
                .iter()
                .map(|b| f32::from_le_bytes(b[4 * i..4 * i + 4].try_into().unwrap()))
                .reduce(|a, b| a + b)
                .unwrap();
        }
    }
    fn sum_f64(&self, buf: &mut [f64]) {
        let all = self.exchange(to_bytes(buf, |v| v.to_le_bytes().to_vec()));
        for (i, x) in buf.iter_mut().enumerate() {
            *x = all
                .iter()
                .map(|b| f64::from_le_bytes(b[8 * i..8 * i + 8].try_into().unwrap()))
                .reduce(|a, b| a + b)
                .unwrap();
        }
    }
    fn gather_f64(&self, local: &[f64], counts: &[usize]) -> Vec<f64> {
        assert_eq!(counts.len(), self.size);
        assert_eq!(counts[self.rank], local.len(), "rank {}'s count", self.rank);
        let all = self.exchange(to_bytes(local, |v| v.to_le_bytes().to_vec()));
        all.iter()
            .flat_map(|b| {
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
            })
            .collect()
    }
    fn abort(&self, code: i32) -> ! {
        panic!("rank {} aborted the group with code {code}", self.rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collectives_over_threads() {
        let results: Vec<(Vec<f32>, Vec<u8>, Vec<f64>)> = std::thread::scope(|s| {
            let handles: Vec<_> = group(3)
                .into_iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank();
                        let mut x = vec![r as f32, 0.5 * r as f32];
                        c.sum_f32(&mut x);
                        let mut b = vec![r as u8 + 7; 2];
                        c.broadcast(&mut b);
                        let local = vec![r as f64; r];
                        let g = c.gather_f64(&local, &[0, 1, 2]);
                        c.barrier();
                        (x, b, g)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (x, b, g) in results {
            assert_eq!(x, [3.0, 1.5]);
            assert_eq!(b, [7, 7]);
            assert_eq!(g, [1.0, 2.0, 2.0]);
        }
    }
}
