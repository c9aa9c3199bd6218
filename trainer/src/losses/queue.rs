//! A fixed-size queue of feature rows: MoCo's queue of negative keys (He et al. 2020,
//! `builder.py` `_dequeue_and_enqueue`) and NNCLR's support set (lightly `MemoryBankModule`).
//!
//! The queue is a `[capacity, d]` tensor used as a ring, plus the row the next key is
//! written to. [`FeatureQueue::enqueue`] overwrites the oldest rows and moves the pointer on,
//! wrapping around the end (MoCo asserts that the capacity is a multiple of the batch size;
//! here any batch size works, and a batch longer than the queue keeps its newest rows).
//! Rows are stored detached: the queue is not part of any graph. The losses take the whole
//! tensor ([`FeatureQueue::rows`]); the order of rows does not matter to them.
//!
//! It is a burn module (rows and pointer as parameters that are never trained) so that a
//! method's state saves it with the checkpoint and a resumed run sees the same negatives.

use burn::module::{Module, Param, ParamId};
use burn::tensor::{Distribution, ElementConversion, Int, Tensor, TensorData, backend::Backend};

use super::normalize;
use crate::error::{Error, Result};

/// A ring of `capacity` feature rows and the index of the oldest one (the next written).
#[derive(Module, Debug)]
pub struct FeatureQueue<B: Backend> {
    /// `[capacity, d]`.
    rows: Param<Tensor<B, 2>>,
    /// `[1]`: the next row to write.
    pointer: Param<Tensor<B, 1, Int>>,
}

fn pointer_tensor<B: Backend>(pointer: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(vec![pointer as i64], [1]), device)
}

impl<B: Backend> FeatureQueue<B> {
    /// A queue of `capacity` random unit rows of width `dim`, as MoCo starts
    /// (`normalize(randn(dim, K), dim=0)`), the pointer at row 0.
    ///
    /// # Panics
    /// When `capacity` or `dim` is zero.
    pub fn random(capacity: usize, dim: usize, device: &B::Device) -> Self {
        assert!(capacity > 0 && dim > 0, "queue of {capacity} x {dim}");
        let rows = Tensor::random([capacity, dim], Distribution::Normal(0.0, 1.0), device);
        Self {
            rows: Param::from_tensor(normalize(rows, 1)),
            pointer: Param::initialized(ParamId::new(), pointer_tensor(0, device)),
        }
    }

    /// A queue from saved rows and pointer (what [`FeatureQueue::rows`] and
    /// [`FeatureQueue::pointer`] gave).
    ///
    /// # Errors
    /// [`Error::QueuePointer`] when `pointer` is not a row of `rows` (also when `rows` is empty).
    pub fn from_parts(rows: Tensor<B, 2>, pointer: usize) -> Result<Self> {
        let [capacity, _d] = rows.dims();
        if pointer >= capacity {
            return Err(Error::QueuePointer { pointer, capacity });
        }
        let device = rows.device();
        Ok(Self {
            rows: Param::from_tensor(rows.detach()),
            pointer: Param::initialized(ParamId::new(), pointer_tensor(pointer, &device)),
        })
    }

    /// Writes `keys` over the oldest rows, wrapping around the end, and moves the pointer past
    /// them. When `keys` has more rows than the queue, only its last `capacity` rows are kept.
    ///
    /// # Shapes
    /// `keys`: `[n, d]` with `d` the queue's width.
    ///
    /// # Errors
    /// [`Error::Shape`] when `keys` has another width.
    pub fn enqueue(&mut self, keys: Tensor<B, 2>) -> Result<()> {
        let [n, d] = keys.dims();
        let [capacity, dim] = self.rows.dims();
        let mut rows = self.rows.val();
        if d != dim {
            return Err(Error::Shape {
                what: "queue keys",
                expected: vec![n, dim],
                actual: vec![n, d],
            });
        }
        // Keys that would be overwritten within this call are skipped, not written.
        let skip = n.saturating_sub(capacity);
        let mut pointer = (self.pointer() + skip) % capacity;
        let mut written = skip;
        while written < n {
            let len = (capacity - pointer).min(n - written);
            let chunk = keys.clone().slice([written..written + len, 0..d]).detach(); // [len, d]
            rows = rows.slice_assign([pointer..pointer + len, 0..d], chunk);
            written += len;
            pointer = (pointer + len) % capacity;
        }
        let device = rows.device();
        self.rows = Param::initialized(self.rows.id, rows);
        self.pointer = Param::initialized(self.pointer.id, pointer_tensor(pointer, &device));
        Ok(())
    }

    /// The rows (for the losses).
    ///
    /// # Shapes
    /// `[capacity, d]`.
    pub fn rows(&self) -> Tensor<B, 2> {
        self.rows.val()
    }

    /// The index of the oldest row, where the next key goes (read from the device).
    pub fn pointer(&self) -> usize {
        let p: i64 = self.pointer.val().into_scalar().elem();
        p.max(0) as usize
    }

    /// The number of rows.
    pub fn capacity(&self) -> usize {
        self.rows.dims()[0]
    }
}

#[cfg(test)]
mod tests {
    use burn::backend::Flex;
    use burn::tensor::TensorData;

    use super::*;

    type B = Flex;

    /// Rows `[start, start + 1, ...]`, one value each (width 1), as a `[n, 1]` tensor.
    fn keys(start: usize, n: usize) -> Tensor<B, 2> {
        let values: Vec<f32> = (start..start + n).map(|v| v as f32).collect();
        Tensor::from_data(TensorData::new(values, [n, 1]), &Default::default())
    }

    fn contents(queue: &FeatureQueue<B>) -> Vec<f32> {
        queue.rows().into_data().to_vec::<f32>().expect("f32")
    }

    #[test]
    fn wraps_around_like_moco() {
        let zeros = Tensor::<B, 2>::zeros([6, 1], &Default::default());
        let mut queue = FeatureQueue::from_parts(zeros, 0).expect("pointer in range");
        // MoCo: K = 6, batch 2: ptr 0 -> 2 -> 4 -> 0, the oldest keys replaced first.
        for (step, expected) in [
            vec![1.0, 2.0, 0.0, 0.0, 0.0, 0.0],
            vec![1.0, 2.0, 3.0, 4.0, 0.0, 0.0],
            vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            vec![7.0, 8.0, 3.0, 4.0, 5.0, 6.0],
        ]
        .into_iter()
        .enumerate()
        {
            queue.enqueue(keys(1 + 2 * step, 2)).expect("width 1");
            assert_eq!(contents(&queue), expected, "step {step}");
            assert_eq!(queue.pointer(), (2 * step + 2) % 6);
        }
        // A batch that does not divide the capacity splits across the end.
        queue.enqueue(keys(9, 5)).expect("width 1");
        assert_eq!(contents(&queue), vec![13.0, 8.0, 9.0, 10.0, 11.0, 12.0]);
        assert_eq!(queue.pointer(), 1);
        // A batch longer than the queue keeps its newest rows, oldest at the pointer.
        queue.enqueue(keys(20, 8)).expect("width 1");
        assert_eq!(contents(&queue), vec![25.0, 26.0, 27.0, 22.0, 23.0, 24.0]);
        assert_eq!(queue.pointer(), 3);
    }

    #[test]
    fn round_trips_its_parts_and_rejects_bad_ones() {
        let device = Default::default();
        let mut queue = FeatureQueue::<B>::random(4, 3, &device);
        let norms = queue
            .rows()
            .square()
            .sum_dim(1)
            .into_data()
            .to_vec::<f32>()
            .expect("f32");
        assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-5), "{norms:?}");
        queue
            .enqueue(Tensor::ones([3, 3], &device))
            .expect("width 3");
        let back = FeatureQueue::from_parts(queue.rows(), queue.pointer()).expect("valid parts");
        assert_eq!((back.pointer(), back.capacity()), (3, 4));
        assert_eq!(back.rows().into_data(), queue.rows().into_data());
        assert!(matches!(
            FeatureQueue::from_parts(queue.rows(), 4),
            Err(Error::QueuePointer {
                pointer: 4,
                capacity: 4
            })
        ));
        assert!(matches!(
            queue.enqueue(Tensor::ones([2, 5], &device)),
            Err(Error::Shape { .. })
        ));
    }
}
