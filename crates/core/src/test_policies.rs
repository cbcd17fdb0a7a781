//! Small policies the crate's tests share.

use tch::{Device, Kind, Tensor};

use crate::Policy;

/// A bigram model that counts the forward passes made through it.
pub(crate) struct Counting {
    vs: tch::nn::VarStore,
    table: Tensor,
    forwards: std::sync::atomic::AtomicUsize,
}

impl Counting {
    pub(crate) fn new() -> Counting {
        tch::manual_seed(5);
        Counting {
            vs: tch::nn::VarStore::new(Device::Cpu),
            table: Tensor::randn([4, 4], (Kind::Float, Device::Cpu)),
            forwards: Default::default(),
        }
    }

    /// A fixed `[4, 4]` table (no global generator: threads build it too).
    pub(crate) fn with_table(table: Tensor) -> Counting {
        Counting {
            vs: tch::nn::VarStore::new(Device::Cpu),
            table: table.view([4, 4]),
            forwards: Default::default(),
        }
    }

    pub(crate) fn forwards(&self) -> usize {
        self.forwards.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Policy for Counting {
    fn forward(&self, ids: &Tensor, _mask: &Tensor) -> Tensor {
        self.forwards
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (b, t) = ids.size2().unwrap();
        self.table.index_select(0, &ids.view([-1])).view([b, t, 4])
    }
    fn vocab_size(&self) -> i64 {
        4
    }
    fn var_store(&self) -> &tch::nn::VarStore {
        &self.vs
    }
    fn var_store_mut(&mut self) -> &mut tch::nn::VarStore {
        &mut self.vs
    }
}
