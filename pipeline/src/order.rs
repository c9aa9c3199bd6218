//! The order of shards and samples: pure functions of (seed, epoch, rank, world size).
//!
//! Three steps, each deterministic and cheap enough to recompute on resume:
//!
//! 1. [`shuffled_shards`]: the epoch's permutation of the whole shard list, the same on
//!    every rank (it depends only on `(seed, epoch)`).
//! 2. [`split_shards`]: rank `r` takes every `world_size`-th shard of that permutation
//!    starting at `r`, then deals its shards to its reader tasks the same way. Every shard
//!    goes to exactly one (rank, reader) per epoch; ranks differ by at most one shard.
//!    Fewer shards than ranks is an [`OrderError::TooFewShards`]: a rank with nothing to
//!    read would silently starve its trainer. Fewer shards than `ranks * readers` is not an
//!    error: [`split_shards`] uses fewer readers (a reader with no shard does nothing).
//! 3. [`RoundRobin`] merges the readers' sample streams one sample at a time, then
//!    [`ShuffleBuffer`] (bounded, seeded from `(seed, epoch, rank)`) mixes samples across
//!    shards. Both are driven by counts only, so [`ShuffleBuffer`] can be replayed on
//!    stream positions (plain integers) to find out exactly what was in the buffer at any
//!    point: that is how [`crate::loader`] resumes without re-reading the epoch.

use rand::Rng;
use rand_chacha::ChaCha8Rng;

/// Why shards cannot be dealt to ranks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    /// Some rank would receive no shard.
    #[error(
        "{shards} shard(s) cannot be split over {world_size} ranks: every rank needs at least one \
         shard (re-shard into at least {world_size} smaller shards, e.g. `tessera shard --shard-size`)"
    )]
    TooFewShards { shards: usize, world_size: u32 },
    /// `rank` is not below `world_size`, or `world_size` is zero.
    #[error("rank {rank} is not in 0..{world_size}")]
    BadRank { rank: u32, world_size: u32 },
}

/// Stream tags keep the order's random streams apart from the per-sample augmentation
/// streams, which use the same generator keyed by hashed sample ids.
const SHARD_STREAM: u64 = 0x5348_4152_4453_0000; // "SHARDS"
const SHUFFLE_STREAM: u64 = 0x5348_5546_464c_0000; // "SHUFFL"

/// A ChaCha8 generator for one named stream of `(seed, epoch, extra)`: the per-sample
/// generator of [`crate::rng`] under a tag no sample id will hit in practice.
fn stream_rng(tag: u64, seed: u64, epoch: u64, extra: u64) -> ChaCha8Rng {
    crate::rng::sample_rng(seed, epoch, tag ^ extra.rotate_left(17))
}

/// The epoch's permutation of `0..num_shards` (Fisher-Yates), identical on every rank.
pub fn shuffled_shards(num_shards: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..num_shards).collect();
    let mut rng = stream_rng(SHARD_STREAM, seed, epoch, 0);
    for i in (1..order.len()).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    order
}

/// The shards (indexes into the full list) each of this rank's readers reads this epoch,
/// in reading order. Returns at most `readers` lists, none empty.
pub fn split_shards(
    num_shards: usize,
    seed: u64,
    epoch: u64,
    rank: u32,
    world_size: u32,
    readers: usize,
) -> Result<Vec<Vec<usize>>, OrderError> {
    if world_size == 0 || rank >= world_size {
        return Err(OrderError::BadRank { rank, world_size });
    }
    if num_shards < world_size as usize {
        return Err(OrderError::TooFewShards {
            shards: num_shards,
            world_size,
        });
    }
    let mine: Vec<usize> = shuffled_shards(num_shards, seed, epoch)
        .into_iter()
        .skip(rank as usize)
        .step_by(world_size as usize)
        .collect();
    let readers = readers.clamp(1, mine.len());
    let mut lists = vec![Vec::new(); readers];
    for (i, shard) in mine.into_iter().enumerate() {
        lists[i % readers].push(shard);
    }
    Ok(lists)
}

/// Merges reader streams one sample at a time, in reader order, skipping finished readers.
///
/// Which reader the next sample comes from depends only on which readers are finished, so
/// the merged order never depends on timing.
#[derive(Debug, Clone)]
pub struct RoundRobin {
    live: Vec<bool>,
    cursor: usize,
}

impl RoundRobin {
    /// A merge over `readers` streams, all live.
    pub fn new(readers: usize) -> Self {
        RoundRobin {
            live: vec![true; readers],
            cursor: 0,
        }
    }

    /// The reader to take the next sample from, or `None` when all are finished.
    pub fn current(&mut self) -> Option<usize> {
        let n = self.live.len();
        (0..n)
            .map(|k| (self.cursor + k) % n)
            .find(|&r| self.live[r])
            .inspect(|&r| self.cursor = r)
    }

    /// The current reader delivered a sample: move on to the next one.
    pub fn advance(&mut self) {
        if !self.live.is_empty() {
            self.cursor = (self.cursor + 1) % self.live.len();
        }
    }

    /// The current reader has no more samples.
    pub fn finish(&mut self, reader: usize) {
        self.live[reader] = false;
    }

    /// Where each reader stands after the first `position` samples of the merge, given how
    /// many samples each reader has in total: returns (per-reader local index, merge state).
    pub fn replay(lengths: &[u64], position: u64) -> (Vec<u64>, RoundRobin) {
        let mut rr = RoundRobin::new(lengths.len());
        let mut taken = vec![0u64; lengths.len()];
        for (r, _) in lengths.iter().enumerate().filter(|(_, len)| **len == 0) {
            rr.finish(r);
        }
        for _ in 0..position {
            let Some(r) = rr.current() else { break };
            taken[r] += 1;
            rr.advance();
            if taken[r] == lengths[r] {
                rr.finish(r);
            }
        }
        (taken, rr)
    }
}

/// A bounded shuffle buffer: once full, each new item replaces a uniformly chosen one,
/// which is emitted. At the end the rest drains in random order.
///
/// The random choices depend only on how many items went in, so replaying the buffer on
/// stream positions reproduces exactly which items it held at any point.
#[derive(Debug, Clone)]
pub struct ShuffleBuffer<T> {
    items: Vec<T>,
    capacity: usize,
    rng: ChaCha8Rng,
}

impl<T> ShuffleBuffer<T> {
    /// A buffer of `capacity` items (1 = no shuffling) seeded from `(seed, epoch, rank)`.
    pub fn new(capacity: usize, seed: u64, epoch: u64, rank: u32) -> Self {
        let capacity = capacity.max(1);
        ShuffleBuffer {
            items: Vec::with_capacity(capacity),
            capacity,
            rng: stream_rng(SHUFFLE_STREAM, seed, epoch, rank as u64),
        }
    }

    /// Add an item; returns the one that leaves, once the buffer is full.
    pub fn push(&mut self, item: T) -> Option<T> {
        self.items.push(item);
        if self.items.len() < self.capacity {
            return None;
        }
        // Full: one leaves at random, so between pushes the buffer holds `capacity - 1`.
        let i = self.rng.random_range(0..self.items.len());
        Some(self.items.swap_remove(i))
    }

    /// Take one item during the final drain.
    pub fn drain_one(&mut self) -> Option<T> {
        if self.items.is_empty() {
            return None;
        }
        let i = self.rng.random_range(0..self.items.len());
        Some(self.items.swap_remove(i))
    }

    /// Items now held, in slot order.
    pub fn items(&self) -> &[T] {
        &self.items
    }

    /// Number of items held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the buffer holds nothing.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Swap the items for others in the same slots (used on resume to put real samples
    /// where the replay put their positions), keeping the random state.
    pub fn map_items<U>(self, f: impl FnMut(T) -> U) -> ShuffleBuffer<U> {
        ShuffleBuffer {
            items: self.items.into_iter().map(f).collect(),
            capacity: self.capacity,
            rng: self.rng,
        }
    }
}

/// Replays the shuffle on positions `0..total` (`total` = samples this rank reads this epoch)
/// until `consumed` have left it. Returns the buffer (holding positions) and the next
/// position to read, from which the live stream continues exactly.
pub fn replay_shuffle(
    capacity: usize,
    seed: u64,
    epoch: u64,
    rank: u32,
    total: u64,
    consumed: u64,
) -> (ShuffleBuffer<u64>, u64) {
    let mut buffer = ShuffleBuffer::new(capacity, seed, epoch, rank);
    let mut emitted = 0u64;
    let mut next = 0u64;
    while emitted < consumed && next < total {
        if buffer.push(next).is_some() {
            emitted += 1;
        }
        next += 1;
    }
    while emitted < consumed && buffer.drain_one().is_some() {
        emitted += 1;
    }
    (buffer, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn every_shard_once_per_epoch_across_ranks_and_readers() {
        for seed in 0..20u64 {
            for num_shards in [1usize, 2, 3, 7, 16, 33] {
                for world in 1..=4u32 {
                    for readers in 1..=3usize {
                        let mut seen = Vec::new();
                        for rank in 0..world {
                            match split_shards(num_shards, seed, 3, rank, world, readers) {
                                Ok(lists) => {
                                    assert!(lists.len() <= readers);
                                    assert!(lists.iter().all(|l| !l.is_empty()));
                                    seen.extend(lists.into_iter().flatten());
                                }
                                Err(OrderError::TooFewShards { .. }) => {
                                    assert!(num_shards < world as usize)
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        if num_shards >= world as usize {
                            seen.sort();
                            assert_eq!(seen, (0..num_shards).collect::<Vec<_>>());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn ranks_differ_by_at_most_one_shard() {
        for world in 1..6u32 {
            let counts: Vec<usize> = (0..world)
                .map(|r| split_shards(23, 1, 0, r, world, 1).unwrap().concat().len())
                .collect();
            let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
            assert!(max - min <= 1, "{counts:?}");
        }
    }

    #[test]
    fn order_is_deterministic_and_changes_with_epoch_and_seed() {
        assert_eq!(shuffled_shards(50, 7, 2), shuffled_shards(50, 7, 2));
        assert_ne!(shuffled_shards(50, 7, 2), shuffled_shards(50, 7, 3));
        assert_ne!(shuffled_shards(50, 7, 2), shuffled_shards(50, 8, 2));
    }

    #[test]
    fn bad_rank_is_an_error() {
        assert_eq!(
            split_shards(4, 0, 0, 2, 2, 1),
            Err(OrderError::BadRank {
                rank: 2,
                world_size: 2
            })
        );
        assert!(split_shards(4, 0, 0, 0, 0, 1).is_err());
        assert!(
            split_shards(1, 0, 0, 0, 2, 1)
                .unwrap_err()
                .to_string()
                .contains("1 shard")
        );
    }

    fn run_shuffle(capacity: usize, total: u64, seed: u64) -> Vec<u64> {
        let mut buffer = ShuffleBuffer::new(capacity, seed, 0, 0);
        let mut out = Vec::new();
        for p in 0..total {
            out.extend(buffer.push(p));
        }
        while let Some(p) = buffer.drain_one() {
            out.push(p);
        }
        out
    }

    #[test]
    fn shuffle_emits_every_item_once_and_stays_bounded() {
        for capacity in [1usize, 2, 5, 64] {
            for total in [0u64, 1, 4, 100] {
                let out = run_shuffle(capacity, total, 9);
                let set: HashSet<_> = out.iter().copied().collect();
                assert_eq!(out.len() as u64, total);
                assert_eq!(set.len() as u64, total);
                // An item can leave at most `capacity - 1` places before it came in.
                for (k, &p) in out.iter().enumerate() {
                    assert!(
                        k as u64 + capacity as u64 > p,
                        "capacity {capacity}: {p} at {k}"
                    );
                }
            }
        }
        assert_eq!(run_shuffle(1, 10, 0), (0..10).collect::<Vec<_>>());
        assert_ne!(run_shuffle(16, 100, 0), (0..100).collect::<Vec<_>>());
    }

    #[test]
    fn replay_reproduces_the_rest_of_the_stream() {
        for consumed in [0u64, 1, 10, 57, 95, 100] {
            let full = run_shuffle(16, 100, 4);
            let (mut buffer, mut next) = replay_shuffle(16, 4, 0, 0, 100, consumed);
            let mut rest = Vec::new();
            while next < 100 {
                rest.extend(buffer.push(next));
                next += 1;
            }
            while let Some(p) = buffer.drain_one() {
                rest.push(p);
            }
            assert_eq!(rest, full[consumed as usize..], "consumed {consumed}");
        }
    }

    #[test]
    fn round_robin_replay_matches_the_merge() {
        let lengths = [5u64, 2, 0, 7];
        let mut rr = RoundRobin::new(4);
        let mut taken = [0u64; 4];
        rr.finish(2);
        let mut merged = Vec::new();
        while let Some(r) = rr.current() {
            if taken[r] == lengths[r] {
                rr.finish(r);
                continue;
            }
            merged.push(r);
            taken[r] += 1;
            rr.advance();
        }
        assert_eq!(merged.len(), 14);
        for pos in 0..=14u64 {
            let (counts, _) = RoundRobin::replay(&lengths, pos);
            for (r, &count) in counts.iter().enumerate() {
                let expect = merged[..pos as usize].iter().filter(|&&m| m == r).count() as u64;
                assert_eq!(count, expect);
            }
        }
    }
}
