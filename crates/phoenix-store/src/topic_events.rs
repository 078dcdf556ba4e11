//! Real-time events as stored for the WebSocket hub: each topic numbers its events 1, 2, 3, …
//! with a counter row bumped in the appending transaction (gap-free and unique, also across
//! API replicas on one PostgreSQL database), so a client that reconnects with the last number
//! it saw reads exactly what it missed. On PostgreSQL the append also sends `NOTIFY
//! phoenix_topic_events` in its transaction (delivered only if it commits, in commit order):
//! small events ride in the payload, larger ones as a reference the listener fetches.

use std::collections::BTreeMap;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgConnectOptions, PgPool, PgRow};
use sqlx::sqlite::{SqliteConnection, SqliteRow};
use sqlx::{Connection, Row};
use tokio::sync::mpsc;

use phoenix_core::HostId;

use crate::common::{corrupt, from_json_text, host};
use crate::postgres::connect_listener;
use crate::Result;

/// The PostgreSQL channel appended events are announced on.
pub(crate) const TOPIC_EVENT_CHANNEL: &str = "phoenix_topic_events";
/// An event whose JSON is longer than this is announced by reference (NOTIFY payloads must
/// stay under 8000 bytes).
const INLINE_EVENT_MAX: usize = 7_000;
/// More events than this for one topic in one append are announced as one range.
const INLINE_EVENTS_PER_TOPIC_MAX: usize = 16;
/// Most events one listing returns.
const LIST_MAX: u32 = 10_000;
/// Notices buffered for a slow consumer before the listener waits for it.
const NOTICE_BUFFER: usize = 4096;

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTopicEvent {
    pub topic: String,
    /// What happened, e.g. `transition`, `agent_online`, `kpi_summary`.
    pub kind: String,
    pub data: serde_json::Value,
}

impl NewTopicEvent {
    pub fn new(topic: impl Into<String>, kind: impl Into<String>, data: serde_json::Value) -> Self {
        Self {
            topic: topic.into(),
            kind: kind.into(),
            data,
        }
    }
}

/// An event as stored, with its number in its topic.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopicEvent {
    pub topic: String,
    pub seq: i64,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub data: serde_json::Value,
}

/// What the cross-replica listener reports.
#[derive(Debug, Clone, PartialEq)]
pub enum TopicNotice {
    /// An event appended by some API process, carried whole.
    Event(TopicEvent),
    /// Events of `topic` up to `up_to_seq` were appended; too large to carry: read them.
    Appended { topic: String, up_to_seq: i64 },
    /// Notices may have been missed (the listener reconnected): read what is new.
    Resync,
}

pub type TopicNoticeStream = Pin<Box<dyn Stream<Item = TopicNotice> + Send>>;

/// Timestamps are stored to the microsecond; events handed out live and replayed later must
/// be equal.
fn to_micros(now: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(now.timestamp_micros()).unwrap_or(now)
}

/// Per topic, how many events the append holds, in topic order (the order counter rows are
/// locked in, so two appenders never deadlock).
fn counts(events: &[NewTopicEvent]) -> BTreeMap<&str, i64> {
    let mut counts = BTreeMap::new();
    for e in events {
        *counts.entry(e.topic.as_str()).or_insert(0) += 1;
    }
    counts
}

/// Number the events given the last number each topic now holds.
fn number(
    events: &[NewTopicEvent],
    last: &BTreeMap<String, i64>,
    counts: &BTreeMap<&str, i64>,
    at: DateTime<Utc>,
) -> Result<Vec<TopicEvent>> {
    let mut next: BTreeMap<&str, i64> = BTreeMap::new();
    for (topic, n) in counts {
        let last = last
            .get(*topic)
            .ok_or_else(|| corrupt("topic_seqs.topic", topic, "counter row not returned"))?;
        next.insert(topic, last - n + 1);
    }
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        let seq = next
            .get_mut(e.topic.as_str())
            .ok_or_else(|| corrupt("topic_seqs.topic", &e.topic, "counter row not returned"))?;
        out.push(TopicEvent {
            topic: e.topic.clone(),
            seq: *seq,
            kind: e.kind.clone(),
            at,
            data: e.data.clone(),
        });
        *seq += 1;
    }
    Ok(out)
}

// ---- SQLite ----

pub(crate) async fn sqlite_append(
    conn: &mut SqliteConnection,
    events: &[NewTopicEvent],
    now: DateTime<Utc>,
) -> Result<Vec<TopicEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let at = to_micros(now);
    let counts = counts(events);
    let mut tx = conn.begin().await?;
    let mut last = BTreeMap::new();
    for (topic, n) in &counts {
        let seq: i64 = sqlx::query_scalar(
            "INSERT INTO topic_seqs (topic, last_seq) VALUES (?1, ?2)
             ON CONFLICT (topic) DO UPDATE SET last_seq = topic_seqs.last_seq + excluded.last_seq
             RETURNING last_seq",
        )
        .bind(*topic)
        .bind(*n)
        .fetch_one(&mut *tx)
        .await?;
        last.insert(topic.to_string(), seq);
    }
    let numbered = number(events, &last, &counts, at)?;
    for e in &numbered {
        sqlx::query(
            "INSERT INTO topic_events (topic, seq, kind, at, data) VALUES (?1, ?2, ?3, ?4, ?5)",
        )
        .bind(&e.topic)
        .bind(e.seq)
        .bind(&e.kind)
        .bind(e.at.timestamp_micros())
        .bind(e.data.to_string())
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(numbered)
}

fn sqlite_event(row: &SqliteRow) -> Result<TopicEvent> {
    let at: i64 = row.try_get("at")?;
    let data: String = row.try_get("data")?;
    Ok(TopicEvent {
        topic: row.try_get("topic")?,
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        at: DateTime::from_timestamp_micros(at)
            .ok_or_else(|| corrupt("topic_events.at", at, "timestamp out of range"))?,
        data: from_json_text("topic_events.data", &data)?,
    })
}

pub(crate) async fn sqlite_list(
    conn: &mut SqliteConnection,
    topic: &str,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<TopicEvent>> {
    let rows = sqlx::query(
        "SELECT topic, seq, kind, at, data FROM topic_events
         WHERE topic = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
    )
    .bind(topic)
    .bind(after_seq)
    .bind(i64::from(limit.clamp(1, LIST_MAX)))
    .fetch_all(conn)
    .await?;
    rows.iter().map(sqlite_event).collect()
}

pub(crate) async fn sqlite_last_seq(conn: &mut SqliteConnection, topic: &str) -> Result<i64> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM topic_seqs WHERE topic = ?1")
        .bind(topic)
        .fetch_optional(conn)
        .await?;
    Ok(seq.unwrap_or(0))
}

pub(crate) async fn sqlite_sweep(
    conn: &mut SqliteConnection,
    before: DateTime<Utc>,
) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM topic_events WHERE at < ?1")
        .bind(before.timestamp_micros())
        .execute(conn)
        .await?
        .rows_affected())
}

pub(crate) async fn sqlite_presence(
    conn: &mut SqliteConnection,
    online_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<(HostId, bool)>> {
    // An agent never announced is only announced once it is online.
    let rows = sqlx::query(
        "INSERT INTO agent_presence (host_id, online, changed_at)
         SELECT host_id, CASE WHEN revoked = 0 AND last_seen_at >= ?1 THEN 1 ELSE 0 END, ?2
         FROM agents
         WHERE last_seen_at IS NOT NULL
           AND ((revoked = 0 AND last_seen_at >= ?1)
                OR host_id IN (SELECT host_id FROM agent_presence))
         ON CONFLICT (host_id) DO UPDATE
             SET online = excluded.online, changed_at = excluded.changed_at
             WHERE agent_presence.online <> excluded.online
         RETURNING host_id, online",
    )
    .bind(online_since.timestamp_micros())
    .bind(now.timestamp_micros())
    .fetch_all(conn)
    .await?;
    let mut flips = Vec::with_capacity(rows.len());
    for row in &rows {
        let h: String = row.try_get("host_id")?;
        let online: i64 = row.try_get("online")?;
        flips.push((host("agent_presence.host_id", &h)?, online != 0));
    }
    flips.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(flips)
}

// ---- PostgreSQL ----

pub(crate) async fn pg_append(
    pool: &PgPool,
    events: &[NewTopicEvent],
    now: DateTime<Utc>,
) -> Result<Vec<TopicEvent>> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let at = to_micros(now);
    let counts = counts(events);
    let topics: Vec<&str> = counts.keys().copied().collect();
    let ns: Vec<i64> = counts.values().copied().collect();
    let mut tx = pool.begin().await?;
    // Bumping a topic's counter locks its row until commit: a concurrent append to the same
    // topic (any replica) waits, takes the following numbers and commits after this one.
    let rows = sqlx::query(
        "INSERT INTO topic_seqs (topic, last_seq)
         SELECT topic, n FROM unnest($1::text[], $2::bigint[]) AS u(topic, n) ORDER BY topic
         ON CONFLICT (topic) DO UPDATE SET last_seq = topic_seqs.last_seq + excluded.last_seq
         RETURNING topic, last_seq",
    )
    .bind(&topics)
    .bind(&ns)
    .fetch_all(&mut *tx)
    .await?;
    let mut last = BTreeMap::new();
    for row in &rows {
        last.insert(
            row.try_get::<String, _>("topic")?,
            row.try_get::<i64, _>("last_seq")?,
        );
    }
    let numbered = number(events, &last, &counts, at)?;
    let mut t = Vec::with_capacity(numbered.len());
    let mut s = Vec::with_capacity(numbered.len());
    let mut k = Vec::with_capacity(numbered.len());
    let mut d = Vec::with_capacity(numbered.len());
    for e in &numbered {
        t.push(e.topic.as_str());
        s.push(e.seq);
        k.push(e.kind.as_str());
        d.push(e.data.to_string());
    }
    sqlx::query(
        "INSERT INTO topic_events (topic, seq, kind, at, data)
         SELECT t, s, k, $4, d::jsonb
         FROM unnest($1::text[], $2::bigint[], $3::text[], $5::text[]) AS u(t, s, k, d)",
    )
    .bind(&t)
    .bind(&s)
    .bind(&k)
    .bind(at)
    .bind(&d)
    .execute(&mut *tx)
    .await?;
    let payloads = notice_payloads(&numbered, &counts);
    sqlx::query("SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p")
        .bind(TOPIC_EVENT_CHANNEL)
        .bind(&payloads)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(numbered)
}

/// `E{event json}` for a small event, `R["topic", up_to_seq]` for a topic whose events are
/// too large or too many to carry.
fn notice_payloads(events: &[TopicEvent], counts: &BTreeMap<&str, i64>) -> Vec<String> {
    let mut payloads = Vec::new();
    let mut by_reference: BTreeMap<&str, i64> = BTreeMap::new();
    for e in events {
        let many =
            counts.get(e.topic.as_str()).copied().unwrap_or(0) > INLINE_EVENTS_PER_TOPIC_MAX as i64;
        let inline = if many {
            None
        } else {
            serde_json::to_string(e)
                .ok()
                .filter(|j| j.len() <= INLINE_EVENT_MAX)
        };
        match inline {
            Some(json) => payloads.push(format!("E{json}")),
            None => {
                let up_to = by_reference.entry(e.topic.as_str()).or_insert(e.seq);
                *up_to = (*up_to).max(e.seq);
            }
        }
    }
    for (topic, up_to) in by_reference {
        payloads.push(format!("R{}", serde_json::json!([topic, up_to])));
    }
    payloads
}

fn parse_notice(payload: &str) -> TopicNotice {
    if let Some(json) = payload.strip_prefix('E') {
        if let Ok(e) = serde_json::from_str::<TopicEvent>(json) {
            return TopicNotice::Event(e);
        }
    } else if let Some(json) = payload.strip_prefix('R') {
        if let Ok((topic, up_to_seq)) = serde_json::from_str::<(String, i64)>(json) {
            return TopicNotice::Appended { topic, up_to_seq };
        }
    }
    // Not ours to interpret: have the hub look at the table.
    TopicNotice::Resync
}

fn pg_event(row: &PgRow) -> Result<TopicEvent> {
    Ok(TopicEvent {
        topic: row.try_get("topic")?,
        seq: row.try_get("seq")?,
        kind: row.try_get("kind")?,
        at: row.try_get("at")?,
        data: row.try_get("data")?,
    })
}

pub(crate) async fn pg_list(
    pool: &PgPool,
    topic: &str,
    after_seq: i64,
    limit: u32,
) -> Result<Vec<TopicEvent>> {
    let rows = sqlx::query(
        "SELECT topic, seq, kind, at, data FROM topic_events
         WHERE topic = $1 AND seq > $2 ORDER BY seq LIMIT $3",
    )
    .bind(topic)
    .bind(after_seq)
    .bind(i64::from(limit.clamp(1, LIST_MAX)))
    .fetch_all(pool)
    .await?;
    rows.iter().map(pg_event).collect()
}

pub(crate) async fn pg_last_seq(pool: &PgPool, topic: &str) -> Result<i64> {
    let seq: Option<i64> = sqlx::query_scalar("SELECT last_seq FROM topic_seqs WHERE topic = $1")
        .bind(topic)
        .fetch_optional(pool)
        .await?;
    Ok(seq.unwrap_or(0))
}

pub(crate) async fn pg_sweep(pool: &PgPool, before: DateTime<Utc>) -> Result<u64> {
    Ok(sqlx::query("DELETE FROM topic_events WHERE at < $1")
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected())
}

pub(crate) async fn pg_presence(
    pool: &PgPool,
    online_since: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<Vec<(HostId, bool)>> {
    // The row lock of the upsert makes one replica (the first to commit) see each flip.
    let rows = sqlx::query(
        "INSERT INTO agent_presence (host_id, online, changed_at)
         SELECT host_id, (NOT revoked AND last_seen_at >= $1), $2
         FROM agents
         WHERE last_seen_at IS NOT NULL
           AND ((NOT revoked AND last_seen_at >= $1)
                OR host_id IN (SELECT host_id FROM agent_presence))
         ORDER BY host_id
         ON CONFLICT (host_id) DO UPDATE
             SET online = excluded.online, changed_at = excluded.changed_at
             WHERE agent_presence.online <> excluded.online
         RETURNING host_id, online",
    )
    .bind(online_since)
    .bind(now)
    .fetch_all(pool)
    .await?;
    let mut flips = Vec::with_capacity(rows.len());
    for row in &rows {
        let h: String = row.try_get("host_id")?;
        flips.push((
            host("agent_presence.host_id", &h)?,
            row.try_get::<bool, _>("online")?,
        ));
    }
    flips.sort_by(|a, b| a.0.as_str().cmp(b.0.as_str()));
    Ok(flips)
}

/// Listen on [`TOPIC_EVENT_CHANNEL`] before returning (an event appended right after is
/// heard); the stream survives database restarts, yielding `Resync` once listening again.
pub(crate) async fn pg_notices(options: PgConnectOptions) -> TopicNoticeStream {
    let listener = match connect_listener(&options, TOPIC_EVENT_CHANNEL).await {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "topic event listener cannot connect yet; retrying");
            None
        }
    };
    let (tx, rx) = mpsc::channel(NOTICE_BUFFER);
    tokio::spawn(crate::postgres::run_listener(
        options,
        listener,
        tx,
        TOPIC_EVENT_CHANNEL,
        "topic event",
        || TopicNotice::Resync,
        |payload| vec![parse_notice(payload)],
    ));
    Box::pin(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|n| (n, rx))
    }))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ev(topic: &str, seq: i64, data: serde_json::Value) -> TopicEvent {
        TopicEvent {
            topic: topic.into(),
            seq,
            kind: "k".into(),
            at: DateTime::from_timestamp(1_900_000_000, 0).unwrap(),
            data,
        }
    }

    #[test]
    fn small_events_ride_in_the_notice_and_large_ones_by_reference() {
        let small = ev("fleet", 4, serde_json::json!({"host_id": "a"}));
        let large = ev("kpis/x", 9, serde_json::json!({"blob": "x".repeat(8000)}));
        let counts = BTreeMap::from([("fleet", 1), ("kpis/x", 1)]);
        let payloads = notice_payloads(&[small.clone(), large], &counts);
        assert_eq!(payloads.len(), 2);
        assert!(payloads.iter().all(|p| p.len() < 7_900));
        assert_eq!(parse_notice(&payloads[0]), TopicNotice::Event(small));
        assert_eq!(
            parse_notice(&payloads[1]),
            TopicNotice::Appended {
                topic: "kpis/x".into(),
                up_to_seq: 9
            }
        );
        assert_eq!(parse_notice("Xgarbage"), TopicNotice::Resync);
    }

    #[test]
    fn many_events_of_one_topic_are_announced_as_one_range() {
        let events: Vec<TopicEvent> = (1..=20)
            .map(|s| ev("fleet", s, serde_json::json!({})))
            .collect();
        let counts = BTreeMap::from([("fleet", 20)]);
        assert_eq!(
            notice_payloads(&events, &counts),
            vec![r#"R["fleet",20]"#.to_string()]
        );
    }
}
