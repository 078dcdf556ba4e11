//! The hub: which connections follow which topic, and the one task that hands each topic's
//! events to its followers in sequence order, without gap or duplicate. Events come from this
//! process's publishes and, on PostgreSQL, from other replicas through `LISTEN/NOTIFY`; the
//! same event may arrive both ways (dropped by number), and one that arrives ahead of an
//! earlier number is preceded by the missing ones read from the store. Each follower has a
//! bounded queue: one that fills is kicked (closed with 4008) instead of slowing the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, Notify};

use phoenix_store::{SharedStore, StoreError, TopicEvent, TopicNotice};

use super::protocol::encode_event;

/// Most events read from the store per catch-up query.
const CATCH_UP_PAGE: u32 = 1000;

/// One event, encoded once for all its receivers.
#[derive(Debug)]
pub struct Frame {
    pub topic: Arc<str>,
    pub seq: i64,
    pub text: Utf8Bytes,
}

impl Frame {
    pub fn of(e: &TopicEvent) -> Arc<Self> {
        Arc::new(Self {
            topic: Arc::from(e.topic.as_str()),
            seq: e.seq,
            text: Utf8Bytes::from(encode_event(e)),
        })
    }
}

/// Set when a connection's queue filled; the connection closes with 4008 on seeing it.
#[derive(Debug, Default)]
pub struct Kick {
    kicked: AtomicBool,
    notify: Notify,
}

impl Kick {
    pub fn kick(&self) {
        if !self.kicked.swap(true, Ordering::AcqRel) {
            // A stored permit: the connection sees it even if not waiting right now.
            self.notify.notify_one();
        }
    }

    pub fn is_kicked(&self) -> bool {
        self.kicked.load(Ordering::Acquire)
    }

    pub async fn kicked(&self) {
        if self.is_kicked() {
            return;
        }
        self.notify.notified().await;
    }
}

/// A connection as the hub sees it.
#[derive(Debug, Clone)]
pub struct Follower {
    pub tx: mpsc::Sender<Arc<Frame>>,
    pub kick: Arc<Kick>,
}

#[derive(Debug)]
struct TopicState {
    /// The last event handed to this topic's followers.
    last_seq: i64,
    followers: HashMap<u64, Follower>,
}

/// Counters for `/metrics` and the benchmark.
#[derive(Debug, Default)]
pub struct HubStats {
    pub connections: AtomicI64,
    pub slow_consumers_closed: AtomicU64,
    pub events_sent: AtomicU64,
}

#[derive(Debug)]
struct Shared {
    store: SharedStore,
    topics: Mutex<HashMap<Arc<str>, TopicState>>,
    stats: HubStats,
    next_connection: AtomicU64,
}

/// What the dispatcher is told.
#[derive(Debug)]
enum Incoming {
    Notice(TopicNotice),
}

#[derive(Debug, Clone)]
pub struct Hub {
    shared: Arc<Shared>,
    tx: mpsc::UnboundedSender<Incoming>,
}

impl Hub {
    /// Start the dispatcher; it stops when the last clone of the hub is dropped.
    pub fn new(store: SharedStore) -> Self {
        let shared = Arc::new(Shared {
            store,
            topics: Mutex::new(HashMap::new()),
            stats: HubStats::default(),
            next_connection: AtomicU64::new(1),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(dispatch(shared.clone(), rx));
        Self { shared, tx }
    }

    pub fn stats(&self) -> &HubStats {
        &self.shared.stats
    }

    pub fn connection_id(&self) -> u64 {
        self.shared.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// Events this process appended (already committed).
    pub fn published(&self, events: Vec<TopicEvent>) {
        for e in events {
            let _ = self.tx.send(Incoming::Notice(TopicNotice::Event(e)));
        }
    }

    /// What the cross-replica listener heard.
    pub fn notice(&self, notice: TopicNotice) {
        let _ = self.tx.send(Incoming::Notice(notice));
    }

    /// Start handing `topic`'s events to `follower`: every event numbered after the topic's
    /// last one at the time of this call (or, if the topic already had followers, after the
    /// last one they were handed, which is not later than what the store holds now).
    pub async fn follow(
        &self,
        topic: &str,
        connection: u64,
        follower: Follower,
    ) -> Result<(), StoreError> {
        if let Some(state) = self.shared.topics.lock().get_mut(topic) {
            state.followers.insert(connection, follower);
            return Ok(());
        }
        let last_seq = self.shared.store.topic_last_seq(topic).await?;
        self.shared
            .topics
            .lock()
            .entry(Arc::from(topic))
            .or_insert_with(|| TopicState {
                last_seq,
                followers: HashMap::new(),
            })
            .followers
            .insert(connection, follower);
        Ok(())
    }

    pub fn unfollow(&self, topic: &str, connection: u64) {
        let mut topics = self.shared.topics.lock();
        if let Some(state) = topics.get_mut(topic) {
            state.followers.remove(&connection);
            if state.followers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// Topics followed by at least one connection of this process.
    pub fn topic_count(&self) -> usize {
        self.shared.topics.lock().len()
    }
}

async fn dispatch(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Incoming>) {
    while let Some(Incoming::Notice(notice)) = rx.recv().await {
        match notice {
            TopicNotice::Event(e) => {
                let Some(last) = last_seq(&shared, &e.topic) else {
                    continue;
                };
                if e.seq <= last {
                    continue;
                }
                if e.seq > last + 1 {
                    catch_up(&shared, &e.topic, Some(e.seq - 1)).await;
                }
                fan_out(&shared, &e);
            }
            TopicNotice::Appended { topic, up_to_seq } => {
                catch_up(&shared, &topic, Some(up_to_seq)).await;
            }
            TopicNotice::Resync => {
                let topics: Vec<Arc<str>> = shared.topics.lock().keys().cloned().collect();
                for topic in topics {
                    catch_up(&shared, &topic, None).await;
                }
            }
        }
    }
}

fn last_seq(shared: &Shared, topic: &str) -> Option<i64> {
    shared.topics.lock().get(topic).map(|s| s.last_seq)
}

/// Hand the stored events after the topic's last one (up to `up_to`) to its followers.
async fn catch_up(shared: &Shared, topic: &str, up_to: Option<i64>) {
    loop {
        let Some(last) = last_seq(shared, topic) else {
            return;
        };
        if up_to.is_some_and(|u| last >= u) {
            return;
        }
        let page = match shared
            .store
            .list_topic_events(topic, last, CATCH_UP_PAGE)
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(topic, error = %e, "cannot read missed topic events");
                return;
            }
        };
        let full = page.len() == CATCH_UP_PAGE as usize;
        for e in page {
            if up_to.is_some_and(|u| e.seq > u) {
                return;
            }
            fan_out(shared, &e);
        }
        if !full {
            return;
        }
    }
}

fn fan_out(shared: &Shared, e: &TopicEvent) {
    let mut topics = shared.topics.lock();
    let Some(state) = topics.get_mut(e.topic.as_str()) else {
        return;
    };
    if e.seq <= state.last_seq {
        return;
    }
    if e.seq > state.last_seq + 1 {
        // Not in the store (past retention): connections report the gap to their clients.
        tracing::warn!(topic = %e.topic, from = state.last_seq + 1, to = e.seq - 1,
            "topic events missing from the store");
    }
    state.last_seq = e.seq;
    let frame = Frame::of(e);
    let mut sent = 0u64;
    state
        .followers
        .retain(|_, f| match f.tx.try_send(frame.clone()) {
            Ok(()) => {
                sent += 1;
                true
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                f.kick.kick();
                shared
                    .stats
                    .slow_consumers_closed
                    .fetch_add(1, Ordering::Relaxed);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    shared.stats.events_sent.fetch_add(sent, Ordering::Relaxed);
    if state.followers.is_empty() {
        topics.remove(e.topic.as_str());
    }
}
