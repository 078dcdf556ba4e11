//! Ships the agent's own warnings and errors to `POST /api/v1/agent/logs`: a `tracing`
//! layer copies every event at warn and above into a bounded in-memory queue (the oldest
//! entry is dropped and counted when it is full) and a task sends them in batches.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde_json::{Map, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::Layer;

use crate::client::{ApiClient, Backoff, LogEntry};

/// Entries per `POST /logs` at most.
const ENTRIES_PER_REQUEST: usize = 200;
/// Longest message shipped (the API refuses longer ones).
const MAX_MESSAGE_BYTES: usize = 4096;

/// The bounded queue between the layer and the shipper.
#[derive(Debug)]
pub struct LogQueue {
    entries: Mutex<VecDeque<LogEntry>>,
    capacity: Mutex<usize>,
    notify: Notify,
    /// Entries dropped because the queue was full.
    pub dropped_total: AtomicU64,
    /// Entries shipped.
    pub shipped_total: AtomicU64,
}

impl LogQueue {
    /// A queue of at most `capacity` entries.
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Self {
            entries: Mutex::new(VecDeque::new()),
            capacity: Mutex::new(capacity.max(1)),
            notify: Notify::new(),
            dropped_total: AtomicU64::new(0),
            shipped_total: AtomicU64::new(0),
        })
    }

    /// Changes the bound (the settings are read after logging starts).
    pub fn set_capacity(&self, capacity: usize) {
        *self.capacity.lock() = capacity.max(1);
    }

    /// Adds an entry, dropping the oldest when full.
    pub fn push(&self, entry: LogEntry) {
        let capacity = *self.capacity.lock();
        let mut entries = self.entries.lock();
        while entries.len() >= capacity {
            entries.pop_front();
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
        }
        entries.push_back(entry);
        drop(entries);
        self.notify.notify_one();
    }

    /// Entries waiting.
    pub fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, n: usize) -> Vec<LogEntry> {
        let mut entries = self.entries.lock();
        let n = n.min(entries.len());
        entries.drain(..n).collect()
    }

    fn put_back(&self, batch: Vec<LogEntry>) {
        let capacity = *self.capacity.lock();
        let mut entries = self.entries.lock();
        for entry in batch.into_iter().rev() {
            if entries.len() >= capacity {
                self.dropped_total.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            entries.push_front(entry);
        }
    }
}

/// The `tracing` layer feeding a [`LogQueue`].
#[derive(Debug, Clone)]
pub struct ShipLayer(pub Arc<LogQueue>);

#[derive(Default)]
struct Fields {
    message: String,
    fields: Map<String, Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.fields.insert(field.name().into(), Value::String(text));
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.fields
                .insert(field.name().into(), Value::String(value.into()));
        }
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.fields.insert(field.name().into(), Value::from(value));
    }
}

impl<S: Subscriber> Layer<S> for ShipLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let level = *event.metadata().level();
        if level > Level::WARN {
            return;
        }
        // reqwest/hyper warnings about the API itself would loop back here.
        if !event.metadata().target().starts_with("phoenix") {
            return;
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut message = fields.message;
        if message.len() > MAX_MESSAGE_BYTES {
            let mut cut = MAX_MESSAGE_BYTES;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
        }
        fields.fields.insert(
            "target".into(),
            Value::String(event.metadata().target().into()),
        );
        self.0.push(LogEntry {
            at: chrono::Utc::now(),
            level: if level == Level::ERROR {
                "error"
            } else {
                "warn"
            }
            .into(),
            message,
            fields: Value::Object(fields.fields),
        });
    }
}

/// Sends queued entries until `cancel` fires.
pub async fn run_shipper(
    queue: Arc<LogQueue>,
    client: Arc<ApiClient>,
    mut backoff: Backoff,
    cancel: CancellationToken,
) {
    loop {
        let batch = queue.take(ENTRIES_PER_REQUEST);
        if batch.is_empty() {
            tokio::select! {
                _ = queue.notify.notified() => continue,
                _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                _ = cancel.cancelled() => return,
            }
        }
        let n = batch.len() as u64;
        match client.send_logs(&batch).await {
            Ok(()) => {
                queue.shipped_total.fetch_add(n, Ordering::Relaxed);
                backoff.reset();
            }
            Err(e) if e.is_outage() => {
                queue.put_back(batch);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                    _ = cancel.cancelled() => return,
                }
            }
            Err(_) => {
                // Refused (e.g. too long): drop rather than retry forever.
                queue.dropped_total.fetch_add(n, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(i: usize) -> LogEntry {
        LogEntry {
            at: chrono::Utc::now(),
            level: "warn".into(),
            message: format!("m{i}"),
            fields: Value::Null,
        }
    }

    #[test]
    fn a_full_queue_drops_the_oldest_and_counts_it() {
        let q = LogQueue::new(3);
        for i in 0..5 {
            q.push(entry(i));
        }
        assert_eq!(q.dropped_total.load(Ordering::Relaxed), 2);
        let got: Vec<_> = q.take(10).into_iter().map(|e| e.message).collect();
        assert_eq!(got, ["m2", "m3", "m4"]);
    }

    #[test]
    fn warnings_are_captured_and_info_is_not() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let q = LogQueue::new(10);
        let subscriber = tracing_subscriber::registry().with(ShipLayer(q.clone()));
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("not shipped");
            tracing::warn!(pending = 3u64, "buffering");
            tracing::error!("broken");
        });
        let got = q.take(10);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].message, "buffering");
        assert_eq!(got[0].fields["pending"], 3);
        assert_eq!(got[1].level, "error");
    }
}
