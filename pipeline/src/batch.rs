//! What the pipeline hands to the trainer.

use crate::pool::PooledBuffer;
use crate::state::PipelineState;
use crate::transforms::DeviceDraws;

/// One batch: a u8 tensor per view, optional masks, labels and keys.
///
/// Pixel data stay u8 (N, H, W, C=3); normalisation happens on the trainer's device.
/// Buffers come from a pool and go back to it when the batch is dropped.
#[derive(Debug)]
pub struct Batch {
    /// One entry per view of the recipe, in recipe order.
    pub views: Vec<ViewBatch>,
    /// Masks for the views that have them (same order as `views`; `None` where a view has none).
    pub masks: Vec<Option<MaskBatch>>,
    /// Class label per sample, `-1` where the sample has none.
    pub labels: Vec<i64>,
    /// `__key__` of each sample.
    pub keys: Keys,
    /// The pipeline's state just after the last sample of this batch.
    pub state: PipelineState,
    /// With device augmentation (`[augment] on_device = true`): per view, per sample, the
    /// transforms the CPU drew but left for the training device to apply
    /// ([`crate::transforms::device`]). `None` when the views are final.
    pub augment: Option<Vec<Vec<DeviceDraws>>>,
}

/// The pixels of one view for a whole batch: `len` samples of `height x width x 3` u8.
#[derive(Debug)]
pub struct ViewBatch {
    pub data: PooledBuffer,
    pub len: usize,
    pub height: usize,
    pub width: usize,
}

/// Patch masks for one view, `len` samples of `num_patches` each (row-major patch grid).
#[derive(Debug, Clone)]
pub struct MaskBatch {
    pub len: usize,
    pub num_patches: usize,
    /// 1 = masked (hidden from the encoder / to be predicted), 0 = visible. `len * num_patches`.
    pub mask: Vec<u8>,
    /// MAE only: indices of the visible patches, `len * num_keep`, ascending within a sample.
    pub ids_keep: Vec<u32>,
    /// MAE only: `len * num_patches`; position of each patch in the (keep ++ masked) order,
    /// as in the official MAE code (`ids_restore = argsort(ids_shuffle)`).
    pub ids_restore: Vec<u32>,
    /// MAE only: number of visible patches per sample (0 for other mask kinds).
    pub num_keep: usize,
}

/// The `__key__`s of a batch's samples, in one string: workers fill slots in any order,
/// and a batch of keys costs two allocations instead of one per sample.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    text: String,
    /// Per slot, the key's byte range in `text`.
    spans: Vec<(usize, usize)>,
}

impl Keys {
    /// Room for `slots` keys, all empty until [`set`](Self::set).
    pub fn with_slots(slots: usize) -> Self {
        Keys {
            text: String::with_capacity(slots * 24),
            spans: vec![(0, 0); slots],
        }
    }

    /// Set slot `index`'s key (each slot is set once; a second set leaves the old text
    /// behind, unreachable).
    ///
    /// # Panics
    /// If `index` is not below [`len`](Self::len).
    pub fn set(&mut self, index: usize, key: &str) {
        let start = self.text.len();
        self.text.push_str(key);
        self.spans[index] = (start, self.text.len());
    }

    /// Keep the first `len` slots.
    pub fn truncate(&mut self, len: usize) {
        self.spans.truncate(len);
    }

    /// Number of slots.
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether there are no slots.
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Slot `index`'s key, if there is such a slot.
    pub fn get(&self, index: usize) -> Option<&str> {
        self.spans.get(index).map(|&(a, b)| &self.text[a..b])
    }

    /// The keys in slot order.
    pub fn iter(&self) -> KeysIter<'_> {
        KeysIter {
            text: &self.text,
            spans: self.spans.iter(),
        }
    }
}

/// Iterator over [`Keys`] in slot order.
#[derive(Debug, Clone)]
pub struct KeysIter<'a> {
    text: &'a str,
    spans: std::slice::Iter<'a, (usize, usize)>,
}

impl<'a> Iterator for KeysIter<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        self.spans.next().map(|&(a, b)| &self.text[a..b])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.spans.size_hint()
    }
}

impl ExactSizeIterator for KeysIter<'_> {}

impl<'a> IntoIterator for &'a Keys {
    type Item = &'a str;
    type IntoIter = KeysIter<'a>;

    fn into_iter(self) -> KeysIter<'a> {
        self.iter()
    }
}

impl<S: AsRef<str>> FromIterator<S> for Keys {
    fn from_iter<I: IntoIterator<Item = S>>(iter: I) -> Self {
        let mut keys = Keys::default();
        for key in iter {
            keys.spans.push((0, 0));
            keys.set(keys.spans.len() - 1, key.as_ref());
        }
        keys
    }
}

#[cfg(test)]
mod tests {
    use super::Keys;

    #[test]
    fn keys_set_in_any_order_read_in_slot_order() {
        let mut keys = Keys::with_slots(3);
        keys.set(2, "c");
        keys.set(0, "a/0001");
        keys.set(1, "");
        assert_eq!(keys.iter().collect::<Vec<_>>(), ["a/0001", "", "c"]);
        keys.truncate(2);
        assert_eq!(keys.len(), 2);
        assert_eq!(keys.get(1), Some(""));
        assert_eq!(keys.get(2), None);
        let collected: Keys = ["x", "y"].into_iter().collect();
        assert_eq!((&collected).into_iter().collect::<Vec<_>>(), ["x", "y"]);
    }
}
