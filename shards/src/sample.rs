//! One WebDataset sample: a key and its fields, with buffers that are reused.

use std::sync::Arc;

/// A reused buffer counts as holding slack (see [`has_slack`]) when its capacity is over
/// this many times its content...
pub const SLACK_FACTOR: usize = 4;
/// ... plus this many bytes (so small buffers are always kept).
pub const SLACK_BYTES: usize = 256 << 10;

/// Whether a reused buffer of `capacity` bytes now holding `len` is worth freeing: far
/// larger than what it holds. Buffers reused from item to item only ever grow, so without
/// this each would end up the size of the largest item it ever held (web images have a
/// long tail); freeing only past [`SLACK_FACTOR`] x content + [`SLACK_BYTES`] means items
/// of similar sizes never reallocate.
pub fn has_slack(capacity: usize, len: usize) -> bool {
    capacity > len.saturating_mul(SLACK_FACTOR).saturating_add(SLACK_BYTES)
}

/// A sample as read from a shard: `__key__`, `__url__` and named fields.
///
/// The reader fills a `Sample` in place ([`crate::reader::ShardReader::read_into`]) so the
/// field buffers are reused from one sample to the next: no allocation in steady state.
#[derive(Debug, Default, Clone)]
pub struct Sample {
    /// Everything up to the first dot of the last path component (directories included).
    pub key: String,
    /// The shard this sample came from.
    pub url: Arc<str>,
    /// Index of the sample inside its shard (0-based).
    pub index_in_shard: u64,
    /// Fields in the order they appear in the shard. Only the first `len` are live;
    /// the rest are spare buffers kept for reuse.
    fields: Vec<Field>,
    len: usize,
}

/// One field of a sample: extension (lower-cased, e.g. `jpg`, `seg.png`) and its bytes.
#[derive(Debug, Default, Clone)]
pub struct Field {
    /// The field name: the member's extension, lower-cased (`jpg`, `seg.png`).
    pub name: String,
    /// The member's bytes, exactly as stored in the tar (nothing decoded).
    pub data: Vec<u8>,
}

impl Sample {
    /// Live fields in shard order.
    pub fn fields(&self) -> &[Field] {
        &self.fields[..self.len]
    }

    /// Number of live fields.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the sample has no fields (e.g. after [`Sample::clear`]).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The bytes of field `name`, if present.
    pub fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields()
            .iter()
            .find(|f| f.name == name)
            .map(|f| f.data.as_slice())
    }

    /// Forget the live fields but keep their buffers for reuse.
    pub fn clear(&mut self) {
        self.key.clear();
        self.len = 0;
    }

    /// A cleared buffer for a new field called `name`, reusing a spare one if there is.
    pub fn push_field(&mut self, name: &str) -> &mut Vec<u8> {
        if self.len == self.fields.len() {
            self.fields.push(Field::default());
        }
        let field = &mut self.fields[self.len];
        self.len += 1;
        field.name.clear();
        field.name.push_str(name);
        field.data.clear();
        &mut field.data
    }

    /// Give back field buffers far larger than what they last held ([`has_slack`]),
    /// content and all: call it when the sample goes back to its pool, never on one still
    /// in use. Reused samples keep their buffers so that steady state allocates nothing;
    /// this keeps one huge member from pinning its size in a pool of thousands of samples.
    pub fn release_slack(&mut self) {
        for field in &mut self.fields {
            if has_slack(field.data.capacity(), field.data.len()) {
                field.data = Vec::new();
            }
        }
    }

    /// Drop the most recently pushed field (used when a member turns out to be bad).
    pub fn pop_field(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_slack_frees_only_buffers_far_larger_than_their_content() {
        let mut sample = Sample::default();
        sample.push_field("jpg").resize(8 << 20, 1);
        sample.push_field("cls").extend_from_slice(b"7");
        sample.clear();
        // The big buffer now holds a small member; the small one a similar one.
        sample.push_field("jpg").resize(100 << 10, 2);
        sample.push_field("cls").extend_from_slice(b"3");
        sample.release_slack();
        assert!(
            sample.fields[0].data.capacity() < 8 << 20,
            "an 8 MiB buffer holding 100 KiB is freed"
        );
        assert_eq!(
            sample.fields[1].data.capacity(),
            8,
            "a small buffer is kept"
        );

        let mut similar = Sample::default();
        similar.push_field("jpg").resize(3 << 20, 1);
        similar.clear();
        similar.push_field("jpg").resize(1 << 20, 2);
        let before = similar.fields[0].data.as_ptr();
        similar.release_slack();
        assert_eq!(
            similar.fields[0].data.as_ptr(),
            before,
            "3 MiB holding 1 MiB is kept"
        );
        assert_eq!(similar.field("jpg").map(<[u8]>::len), Some(1 << 20));
    }
}
