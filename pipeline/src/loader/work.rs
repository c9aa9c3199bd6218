//! The CPU workers: decode a sample, take its batch slot, write its views into it.
//!
//! Workers are dedicated std threads (never the async runtime's): decode, view transforms
//! and masks are long CPU work. What a worker does to one sample is a [`SampleWork`], so
//! the graph does not depend on how views are made (the recipe's implementation is
//! [`super::recipe_work::RecipeWork`]; tests plug in simple ones).

use std::sync::Arc;

use tessera_shards::Sample;

use std::collections::VecDeque;

use super::assemble::{Assembly, Grant, Outcome, Ticket};
use super::slot::{SlotGrant, SlotMeta};

/// Decoded samples a worker may hold while their slots wait for earlier samples.
const DECODED_AHEAD: usize = 3;
use super::{BadSamplePolicy, LoaderError};

impl<W: SampleWork> Drop for Worker<W> {
    fn drop(&mut self) {
        if self
            .live_workers
            .fetch_sub(1, std::sync::atomic::Ordering::AcqRel)
            == 1
        {
            let _ = self.output.send_blocking(super::Output::End);
        }
    }
}
use crate::stats::{Activity, StageStats, Stats};

/// Why a sample was rejected: a short reason for the counters and a message for the log.
#[derive(Debug, Clone)]
pub struct Reject {
    /// Stable, short, snake_case: the key of the reject table (`corrupt`, `missing_image`).
    pub reason: &'static str,
    /// What exactly was wrong, for the log and fail-fast errors.
    pub detail: String,
}

/// Per-sample work of a recipe: what the workers run.
///
/// `decode` may fail (the sample is then rejected and counted); `render` may not: once a
/// sample decoded, its views are a pure function of the image and its random stream.
pub trait SampleWork: Send + Sync + 'static {
    /// Per-worker reusable buffers (decoded image, resize scratch): no allocation per sample.
    type Scratch: Send;

    /// Fresh scratch for one worker.
    fn scratch(&self) -> Self::Scratch;

    /// `(height, width)` of each view, in batch order.
    fn view_shapes(&self) -> Vec<(usize, usize)>;

    /// Decode the sample's image into the scratch. `rng` is the sample's random stream,
    /// which continues into [`render`](SampleWork::render): a decode that needs a view's
    /// crop (to decode only that part) draws it here, as the view would have.
    fn decode(
        &self,
        sample: &Sample,
        rng: &mut crate::rng::SampleRng,
        scratch: &mut Self::Scratch,
    ) -> Result<(), Reject>;

    /// Per view: `(num_patches, num_keep, has keep/restore indices)` if it has masks.
    fn mask_shapes(&self) -> Vec<Option<(usize, usize, bool)>>;

    /// Whether each slot carries [`DeviceDraws`](crate::transforms::DeviceDraws) per view
    /// ([`SlotGrant::device_draws`]) for the trainer to apply. Default: no.
    fn device_augment(&self) -> bool {
        false
    }

    /// Write every view of the decoded image into the slot ([`SlotGrant::view`]:
    /// `height * width * 3` bytes each, HWC RGB u8) and its masks ([`SlotGrant::mask`]),
    /// drawing randomness only from `rng` (where `decode` left it).
    fn render(
        &self,
        scratch: &mut Self::Scratch,
        rng: &mut crate::rng::SampleRng,
        slot: &mut SlotGrant,
    );

    /// The sample's class label, `-1` if it has none.
    fn label(&self, sample: &Sample) -> i64;
}

/// A worker's buffers for one sample in flight, reused from sample to sample.
struct Held<S> {
    /// The decoded image and transform scratch.
    scratch: S,
    /// The sample's key (the sample itself goes back to the readers once decoded).
    key: String,
}

/// A decoded sample waiting for its batch slot: its scratch holds the image, its random
/// stream is where the decode left it.
struct Parked<S> {
    ticket: Ticket,
    meta: SlotMeta,
    rng: crate::rng::SampleRng,
    held: Held<S>,
}

/// One sample travelling from the sequencer to a worker.
#[derive(Debug)]
pub(crate) struct WorkItem {
    pub ticket: Ticket,
    pub sample: Sample,
}

/// Everything a worker thread needs.
pub(crate) struct Worker<W: SampleWork> {
    pub work: Arc<W>,
    pub seed: u64,
    pub policy: BadSamplePolicy,
    pub input: async_channel::Receiver<WorkItem>,
    /// Where used samples go back to be refilled by the readers.
    pub recycle: super::SamplePool,
    pub assembly: Arc<Assembly>,
    pub stage: Arc<StageStats>,
    pub stats: Arc<Stats>,
    pub output: async_channel::Sender<super::Output>,
    /// Workers still running; the last one out says the stream has ended.
    pub live_workers: Arc<std::sync::atomic::AtomicUsize>,
}

impl<W: SampleWork> Worker<W> {
    /// Take samples, decode them, and render each into its slot once granted.
    ///
    /// In ordered mode a decoded sample's slot waits for its predecessors. Rather than
    /// idle, the worker parks the decoded image (up to [`DECODED_AHEAD`] of them, each in
    /// its own scratch) and decodes the next sample; it blocks on the oldest grant only
    /// when every scratch is full or there is no input ready.
    pub fn run(self) {
        let mut free: Vec<Held<W::Scratch>> = (0..DECODED_AHEAD)
            .map(|_| Held {
                scratch: self.work.scratch(),
                key: String::with_capacity(64),
            })
            .collect();
        let mut parked: VecDeque<Parked<W::Scratch>> = VecDeque::new();
        let mut clock = self.stage.clock();
        let mut input_done = false;
        loop {
            // Render whatever has its slot; wait for the oldest only when stuck.
            while let Some(Parked { ticket, .. }) = parked.front() {
                let wait = free.is_empty() || input_done || self.input.is_empty();
                clock.switch(Activity::BlockedOnOutput);
                let polled = self.assembly.take_grant(ticket.seq, wait);
                clock.switch(Activity::Busy);
                match polled {
                    Grant::Ready(grant) => {
                        let Some(mut parked) = parked.pop_front() else {
                            break;
                        };
                        self.render(grant, &mut parked);
                        free.push(parked.held);
                    }
                    Grant::NotYet => break,
                    Grant::Stopped => return,
                }
            }
            if input_done {
                if parked.is_empty() {
                    return;
                }
                continue;
            }
            clock.switch(Activity::BlockedOnInput);
            let received = self.input.recv_blocking();
            clock.switch(Activity::Busy);
            let Ok(WorkItem { ticket, sample }) = received else {
                input_done = true;
                continue;
            };
            let Some(mut held) = free.pop() else {
                return;
            };
            let shard_name = sample.url.rsplit('/').next().unwrap_or(&sample.url);
            let meta = SlotMeta {
                label: self.work.label(&sample),
                sample_id: crate::rng::sample_id(shard_name, sample.index_in_shard),
            };
            let mut rng = crate::rng::sample_rng(self.seed, ticket.epoch, meta.sample_id);
            let decoded = self.work.decode(&sample, &mut rng, &mut held.scratch);
            if let Err(reject) = decoded {
                self.stats.reject(reject.reason);
                tracing::debug!("skipping {}:{}: {}", sample.url, sample.key, reject.detail);
                if self.policy == BadSamplePolicy::Fail {
                    let error = LoaderError::BadSample {
                        shard: sample.url.to_string(),
                        key: sample.key.clone(),
                        reason: reject.reason,
                        detail: reject.detail,
                    };
                    let _ = self.output.try_send(super::Output::Error(error));
                }
                self.recycle.give(sample);
                free.push(held);
                self.assembly.submit(ticket, Outcome::Rejected);
                continue;
            }
            held.key.clear();
            held.key.push_str(&sample.key);
            self.recycle.give(sample);
            clock.switch(Activity::BlockedOnOutput);
            self.assembly.submit(ticket, Outcome::Accepted);
            clock.switch(Activity::Busy);
            parked.push_back(Parked {
                ticket,
                meta,
                rng,
                held,
            });
        }
    }

    fn render(&self, mut grant: SlotGrant, parked: &mut Parked<W::Scratch>) {
        self.work
            .render(&mut parked.held.scratch, &mut parked.rng, &mut grant);
        grant.finish(parked.meta, &parked.held.key);
        self.stage.item_done();
    }
}
