//! The hub: which connections follow which topic, and the one task that hands each topic's
//! events to its followers in sequence order, without gap or duplicate. Events come from this
//! process's publishes and, on PostgreSQL, from other replicas through `LISTEN/NOTIFY`; the
//! same event may arrive both ways (dropped by number), and one that arrives ahead of an
//! earlier number is preceded by the missing ones read from the store. Each follower has a
//! bounded queue: one that fills is kicked (closed with 4008) instead of slowing the others.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::ws::Utf8Bytes;
use parking_lot::Mutex;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
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

/// Topic kinds, the values of the `topic` label of `phoenix_ws_subscriptions`.
pub const TOPIC_KINDS: [&str; 4] = ["experiments", "experiments/{id}", "fleet", "kpis/{id}"];

/// Why connections end, the values of the `reason` label of `phoenix_ws_disconnects_total`
/// (see [`disconnect_reason`]).
pub const DISCONNECT_REASONS: [&str; 10] = [
    "client_closed",
    "connection_lost",
    "protocol_error",
    "binary_frame",
    "malformed_message",
    "auth",
    "message_too_big",
    "store_unavailable",
    "keepalive_timeout",
    "slow_consumer",
];

/// The `reason` label for a connection the server closed with `code`.
pub fn disconnect_reason(code: u16) -> &'static str {
    use super::protocol::close;
    match code {
        close::NORMAL => "client_closed",
        close::PROTOCOL_ERROR => "protocol_error",
        close::UNSUPPORTED_DATA => "binary_frame",
        close::INVALID_PAYLOAD => "malformed_message",
        close::POLICY_VIOLATION => "auth",
        close::MESSAGE_TOO_BIG => "message_too_big",
        close::INTERNAL_ERROR => "store_unavailable",
        close::KEEPALIVE_TIMEOUT => "keepalive_timeout",
        close::SLOW_CONSUMER => "slow_consumer",
        _ => "connection_lost",
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TopicKindLabel {
    pub topic: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SourceLabel {
    pub source: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// The hub's series on `/metrics` (registered by [`crate::telemetry::Metrics::register_hub`]).
/// The handles share their values with the registry's copies; the hot paths (one delivery
/// per follower per event) use handles made once, not a label lookup.
#[derive(Debug, Clone)]
pub struct HubStats {
    /// Open WebSocket connections, authenticated or not.
    pub connections: Gauge,
    pub subscriptions: Family<TopicKindLabel, Gauge>,
    /// Events this process stored and handed to its hub.
    pub events_published: Counter,
    pub events_delivered: Family<SourceLabel, Counter>,
    /// Event frames written to clients as they were published.
    pub delivered_live: Counter,
    /// Event frames written to clients from the store, replaying what they missed.
    pub delivered_store: Counter,
    pub disconnects: Family<ReasonLabel, Counter>,
    /// Subscriptions with `after_seq`: resumes served from the store.
    pub resumes: Counter,
}

impl Default for HubStats {
    fn default() -> Self {
        let subscriptions = Family::<TopicKindLabel, Gauge>::default();
        // Every label present from the start, at 0.
        for topic in TOPIC_KINDS {
            drop(subscriptions.get_or_create(&TopicKindLabel { topic }));
        }
        let events_delivered = Family::<SourceLabel, Counter>::default();
        let delivered_live = events_delivered
            .get_or_create(&SourceLabel { source: "live" })
            .clone();
        let delivered_store = events_delivered
            .get_or_create(&SourceLabel { source: "store" })
            .clone();
        let disconnects = Family::<ReasonLabel, Counter>::default();
        for reason in DISCONNECT_REASONS {
            drop(disconnects.get_or_create(&ReasonLabel { reason }));
        }
        Self {
            connections: Gauge::default(),
            subscriptions,
            events_published: Counter::default(),
            events_delivered,
            delivered_live,
            delivered_store,
            disconnects,
            resumes: Counter::default(),
        }
    }
}

impl HubStats {
    /// The subscriptions gauge of a topic kind (one of [`TOPIC_KINDS`]).
    pub fn subscribed(&self, topic: &'static str) -> Gauge {
        self.subscriptions
            .get_or_create(&TopicKindLabel { topic })
            .clone()
    }

    /// Count a connection ending for `reason` (one of [`DISCONNECT_REASONS`]).
    pub fn disconnected(&self, reason: &'static str) {
        self.disconnects
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    /// Connections ended for `reason` so far.
    pub fn disconnects(&self, reason: &'static str) -> u64 {
        self.disconnects
            .get_or_create(&ReasonLabel { reason })
            .get()
    }
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
        self.shared
            .stats
            .events_published
            .inc_by(events.len() as u64);
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
    state
        .followers
        .retain(|_, f| match f.tx.try_send(frame.clone()) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Counted as a disconnect when the connection closes (reason slow_consumer).
                f.kick.kick();
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        });
    if state.followers.is_empty() {
        topics.remove(e.topic.as_str());
    }
}
