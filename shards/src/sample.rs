//! One WebDataset sample: a key and its fields, with buffers that are reused.

use std::sync::Arc;

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

    /// Drop the most recently pushed field (used when a member turns out to be bad).
    pub fn pop_field(&mut self) {
        self.len = self.len.saturating_sub(1);
    }
}
