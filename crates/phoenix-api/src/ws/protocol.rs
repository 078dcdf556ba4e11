//! The WebSocket protocol's vocabulary: topics, the messages a client sends, the messages
//! the server sends, and the close codes. JSON text frames; see `docs/websocket.md`.

use std::fmt;

use serde::{Deserialize, Serialize};

use phoenix_core::ExperimentId;

/// Protocol version announced in `authenticated`.
pub const PROTOCOL_VERSION: u32 = 1;

/// Close codes the server uses (1000–1015 are RFC 6455's, 4000–4999 are ours).
pub mod close {
    /// Normal closure (the client closed, or the server is shutting down: 1001).
    pub const NORMAL: u16 = 1000;
    pub const GOING_AWAY: u16 = 1001;
    /// A frame that breaks RFC 6455.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A binary frame: this protocol speaks JSON text only.
    pub const UNSUPPORTED_DATA: u16 = 1003;
    /// A text frame that is not a valid client message (bad JSON, unknown type, bad field).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Authentication failed, was missing when required, or came too late.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A message larger than `ws_max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The server failed (its database is unreachable).
    pub const INTERNAL_ERROR: u16 = 1011;
    /// No pong (nor any other frame) for three ping intervals.
    pub const KEEPALIVE_TIMEOUT: u16 = 4000;
    /// The client did not read its events fast enough: its queue filled.
    pub const SLOW_CONSUMER: u16 = 4008;
}

/// What a client may subscribe to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Every experiment's lifecycle: created, updated, deleted, transitions.
    Experiments,
    /// One experiment: the same, plus its analyses and decision.
    Experiment(ExperimentId),
    /// Agents enrolled, online, offline, revoked.
    Fleet,
    /// One experiment's KPIs as they arrive: per variant per interval sums.
    Kpis(ExperimentId),
}

/// Why a topic name is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown topic `{topic}`: {reason}")]
pub struct TopicError {
    pub topic: String,
    pub reason: String,
}

impl Topic {
    pub fn parse(s: &str) -> Result<Self, TopicError> {
        let err = |reason: &str| TopicError {
            topic: s.chars().take(200).collect(),
            reason: reason.to_string(),
        };
        let id = |rest: &str| {
            rest.parse::<ExperimentId>()
                .map_err(|_| err("the part after the slash must be an experiment id (a UUID)"))
        };
        match s.split_once('/') {
            None => match s {
                "experiments" => Ok(Self::Experiments),
                "fleet" => Ok(Self::Fleet),
                _ => Err(err(
                    "topics are experiments, experiments/{id}, fleet and kpis/{id}",
                )),
            },
            Some(("experiments", rest)) => Ok(Self::Experiment(id(rest)?)),
            Some(("kpis", rest)) => Ok(Self::Kpis(id(rest)?)),
            Some(_) => Err(err(
                "topics are experiments, experiments/{id}, fleet and kpis/{id}",
            )),
        }
    }

    /// The experiment a topic is about, if any (it must exist to be subscribed to).
    pub fn experiment(&self) -> Option<ExperimentId> {
        match self {
            Self::Experiment(id) | Self::Kpis(id) => Some(*id),
            Self::Experiments | Self::Fleet => None,
        }
    }

    /// The topic's kind, as `/metrics` labels it: `experiments`, `experiments/{id}`, `fleet`
    /// or `kpis/{id}` (the id left out, so experiments do not become series).
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Experiments => "experiments",
            Self::Experiment(_) => "experiments/{id}",
            Self::Fleet => "fleet",
            Self::Kpis(_) => "kpis/{id}",
        }
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Experiments => f.write_str("experiments"),
            Self::Experiment(id) => write!(f, "experiments/{id}"),
            Self::Fleet => f.write_str("fleet"),
            Self::Kpis(id) => write!(f, "kpis/{id}"),
        }
    }
}

/// A message from the client.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Authenticate (when no token came with the upgrade request).
    Auth {
        token: String,
    },
    /// Follow a topic. With `after_seq`, first receive the stored events numbered after it
    /// (what was missed since that one), then the live ones, without gap or duplicate.
    Subscribe {
        topic: String,
        #[serde(default)]
        after_seq: Option<i64>,
    },
    Unsubscribe {
        topic: String,
    },
    /// Application-level ping (browsers cannot send WebSocket pings): answered with `pong`.
    Ping {
        #[serde(default)]
        id: Option<serde_json::Value>,
    },
}

/// A message from the server (events are encoded separately, once for all their receivers).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage<'a> {
    Authenticated {
        subject: &'a str,
        protocol: u32,
    },
    /// Subscribed; `seq` is the last event of the topic the client has been sent (or would
    /// have, without `after_seq`): events after it follow.
    Subscribed {
        topic: &'a str,
        seq: i64,
    },
    Unsubscribed {
        topic: &'a str,
    },
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        id: Option<&'a serde_json::Value>,
    },
    Error {
        code: &'a str,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        topic: Option<&'a str>,
    },
}

impl ServerMessage<'_> {
    pub fn to_json(&self) -> String {
        // Serialising these plain structs cannot fail.
        serde_json::to_string(self).unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
    }
}

/// An event as sent: `{"type":"event","topic","seq","kind","time","data"}`.
#[derive(Debug, Serialize)]
struct EventFrame<'a> {
    #[serde(rename = "type")]
    kind_of_message: &'static str,
    topic: &'a str,
    seq: i64,
    kind: &'a str,
    time: chrono::DateTime<chrono::Utc>,
    data: &'a serde_json::Value,
}

pub fn encode_event(e: &phoenix_store::TopicEvent) -> String {
    serde_json::to_string(&EventFrame {
        kind_of_message: "event",
        topic: &e.topic,
        seq: e.seq,
        kind: &e.kind,
        time: e.at,
        data: &e.data,
    })
    .unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
}

/// Why a client message was refused, with the close code it earns.
pub fn decode_client_message(text: &str) -> Result<ClientMessage, String> {
    // A close reason must fit in a control frame (123 bytes).
    serde_json::from_str::<ClientMessage>(text).map_err(|e| clip(&e.to_string(), 100))
}

/// At most `max` bytes of `s`, cut at a character boundary.
pub fn clip(s: &str, max: usize) -> String {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn topics_round_trip_and_unknown_ones_are_named() {
        let id = ExperimentId::new();
        for t in [
            Topic::Experiments,
            Topic::Experiment(id),
            Topic::Fleet,
            Topic::Kpis(id),
        ] {
            assert_eq!(Topic::parse(&t.to_string()).unwrap(), t);
        }
        let e = Topic::parse("weather").unwrap_err();
        assert_eq!(e.topic, "weather");
        assert!(e.to_string().contains("`weather`"), "{e}");
        assert!(Topic::parse("experiments/not-a-uuid")
            .unwrap_err()
            .reason
            .contains("UUID"));
        assert!(Topic::parse("kpis/").is_err());
        assert!(Topic::parse("fleet/x").is_err());
    }

    #[test]
    fn client_messages_decode_and_bad_ones_say_why() {
        assert_eq!(
            decode_client_message(r#"{"type":"subscribe","topic":"fleet","after_seq":3}"#).unwrap(),
            ClientMessage::Subscribe {
                topic: "fleet".into(),
                after_seq: Some(3)
            }
        );
        assert!(decode_client_message(r#"{"type":"dance"}"#)
            .unwrap_err()
            .contains("dance"));
        assert!(decode_client_message("{not json").is_err());
        assert!(
            decode_client_message(r#"{"type":"subscribe","topic":"fleet","extra":1}"#).is_err()
        );
        let long = format!(r#"{{"type":"{}"}}"#, "x".repeat(500));
        assert!(decode_client_message(&long).unwrap_err().len() <= 100);
    }
}
