use std::{
    marker::PhantomData,
    sync::{Arc, Mutex},
    vec,
};

use burn_communication::{CommunicationChannel, Message, Protocol, ProtocolClient};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, RwLock};

use crate::{NodeId, node::base::NodeState};

/// Handles the status of sync requests from other nodes
pub(crate) struct SyncService<P: Protocol> {
    /// Current node's state, shared with the thread that does aggregations
    node_state: Arc<RwLock<Option<NodeState>>>,
    /// The number of peers that have requested to sync with us since the last successful sync.
    syncing_peers: Mutex<Vec<NodeId>>,
    /// Notification on each incoming sync request
    sync_notif: Notify,

    _p: PhantomData<P>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SyncRequest(NodeId);

impl<P: Protocol> SyncService<P> {
    pub fn new(node_state: Arc<RwLock<Option<NodeState>>>) -> Self {
        Self {
            node_state,
            syncing_peers: Mutex::new(vec![]),
            sync_notif: Notify::new(),
            _p: PhantomData,
        }
    }

    fn add_syncing_peer(&self, peer: NodeId) {
        let mut syncing_peers = self.syncing_peers.lock().unwrap();
        syncing_peers.push(peer);
    }

    /// Sync with all peers.
    ///
    /// Returns once every node, this one included, has announced that it reached this sync.
    /// Announcements are counted per node: one of each is consumed by this round, and any
    /// that a faster peer already sent for the next round are kept for it.
    pub async fn sync(&self) {
        // we can't sync while we register
        let node_state = self.node_state.read().await;
        let node_state = node_state
            .as_ref()
            .expect("Trying to sync a node before having registered to the orchestrator");

        // this peer is syncing
        self.add_syncing_peer(node_state.node_id);
        for (id, addr) in &node_state.nodes {
            if *id == node_state.node_id {
                continue;
            }

            let mut connection = P::Client::connect(addr.clone(), "sync")
                .await
                .expect("Couldn't connect to peer for sync");
            let msg = SyncRequest(node_state.node_id);
            let sync_bytes = rmp_serde::to_vec(&msg).unwrap();
            connection
                .send(Message::new(sync_bytes.into()))
                .await
                .expect("Peer closed connection unexpectedly");
        }
        let all_node_ids = node_state.nodes.keys().cloned().collect::<Vec<_>>();
        loop {
            // Listen before looking, so that an announcement arriving between the look and
            // the wait still wakes this task (`notify_waiters` stores no permit).
            let notified = self.sync_notif.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut syncing_peers = self.syncing_peers.lock().unwrap();
                if take_round(&mut syncing_peers, &all_node_ids) {
                    return;
                }
            }
            // Wait for the next sync to come in
            notified.await
        }
    }

    pub async fn handle_sync_connection<C: CommunicationChannel>(&self, mut channel: C) {
        let msg = channel.recv().await.unwrap();
        let Some(msg) = msg else {
            return;
        };

        let msg = rmp_serde::from_slice::<SyncRequest>(&msg.data).unwrap();

        self.add_syncing_peer(msg.0);

        self.sync_notif.notify_waiters();
    }
}

/// Consumes one announcement of every node in `nodes` from `announced` if all of them are
/// there, and says whether it did. Announcements beyond one per node (a peer that already
/// reached the next sync) stay for the next round.
fn take_round(announced: &mut Vec<NodeId>, nodes: &[NodeId]) -> bool {
    if !nodes.iter().all(|id| announced.contains(id)) {
        return false;
    }
    for id in nodes {
        if let Some(at) = announced.iter().position(|a| a == id) {
            announced.swap_remove(at);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::take_round;
    use crate::NodeId;

    fn ids(raw: &[u32]) -> Vec<NodeId> {
        raw.iter().map(|&i| NodeId::from(i)).collect()
    }

    #[test]
    fn a_round_completes_only_when_every_node_announced() {
        let nodes = ids(&[0, 1, 2]);
        let mut announced = ids(&[0, 2]);
        assert!(!take_round(&mut announced, &nodes));
        assert_eq!(announced, ids(&[0, 2]), "an incomplete round consumes nothing");
        announced.push(NodeId::from(1));
        assert!(take_round(&mut announced, &nodes));
        assert!(announced.is_empty());
    }

    #[test]
    fn consecutive_rounds_each_need_fresh_announcements() {
        // Before the fix the list was never emptied, so the second round saw every node
        // twice and waited for ever.
        let nodes = ids(&[0, 1]);
        let mut announced = ids(&[1, 0]);
        assert!(take_round(&mut announced, &nodes));
        announced.push(NodeId::from(0));
        assert!(!take_round(&mut announced, &nodes), "node 1 has not reached round 2");
        announced.push(NodeId::from(1));
        assert!(take_round(&mut announced, &nodes));
        assert!(announced.is_empty());
    }

    #[test]
    fn an_early_announcement_for_the_next_round_is_kept() {
        let nodes = ids(&[0, 1]);
        // Node 1 finished round 1 and already announced round 2 before node 0 looked.
        let mut announced = ids(&[1, 0, 1]);
        assert!(take_round(&mut announced, &nodes));
        assert_eq!(announced, ids(&[1]));
        announced.push(NodeId::from(0));
        assert!(take_round(&mut announced, &nodes));
        assert!(announced.is_empty());
    }
}
