//! The real-time hub (`/api/v1/ws`): open a WebSocket with the client's token, subscribe to
//! topics (`experiments`, `experiments/{id}`, `fleet`, `kpis/{id}`), read numbered events.
//! [`EventStream`] remembers the last number seen per topic, so
//! [`EventStream::resubscribe_all`] on a new stream resumes without gap or duplicate.

use std::collections::{BTreeMap, VecDeque};

use chrono::{DateTime, Utc};
use futures::{SinkExt, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::{Client, ClientError, ClientResult};

/// One event of a topic.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TopicEvent {
    pub topic: String,
    /// 1, 2, 3, … within the topic.
    pub seq: i64,
    /// What happened: `created`, `updated`, `transition`, `deleted`, `analysis`, `decision`,
    /// `agent_enrolled`, `agent_online`, `agent_offline`, `agent_revoked`, `kpi_summary`.
    pub kind: String,
    pub time: DateTime<Utc>,
    pub data: Value,
}

/// How a stream ended or failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// The server closed the connection, with its close code and reason (1008: the token was
    /// refused, 4008: too slow a reader; see docs/websocket.md).
    #[error("the server closed the event stream ({code}: {reason})")]
    Closed { code: u16, reason: String },
    /// The server answered a request with an error message.
    #[error("{code}: {message}")]
    Refused { code: String, message: String },
    /// The connection broke or sent something that is not the protocol.
    #[error("event stream failed: {0}")]
    Broken(String),
}

impl From<StreamError> for ClientError {
    fn from(e: StreamError) -> Self {
        ClientError::Decode {
            url: "/api/v1/ws".into(),
            reason: e.to_string(),
        }
    }
}

type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// An open connection to the hub.
#[derive(Debug)]
pub struct EventStream {
    socket: Socket,
    /// Per followed topic, the last event number received.
    last_seq: BTreeMap<String, i64>,
    /// Events that arrived while waiting for a reply.
    queued: VecDeque<TopicEvent>,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ServerMessage {
    Authenticated {},
    Subscribed { topic: String, seq: i64 },
    Unsubscribed {},
    Pong {},
    Error { code: String, message: String },
    Event(TopicEvent),
}

impl Client {
    /// `ws://…/api/v1/ws` (`wss://` for an https server) for this client's server.
    pub fn ws_url(&self) -> String {
        let base = self.base_url();
        match base.split_once("://") {
            Some(("https", rest)) => format!("wss://{rest}/api/v1/ws"),
            Some((_, rest)) => format!("ws://{rest}/api/v1/ws"),
            None => format!("ws://{base}/api/v1/ws"),
        }
    }

    /// Connect to the hub with this client's token (sent as `Authorization: Bearer`). Over
    /// `wss://`, the server is trusted as for HTTPS (the web roots, plus the CA file).
    pub async fn event_stream(&self) -> ClientResult<EventStream> {
        let url = self.ws_url();
        let mut req = url
            .as_str()
            .into_client_request()
            .map_err(|e| ClientError::InvalidUrl {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let Some(token) = self.token() else {
            return Err(ClientError::Api {
                status: 401,
                code: "unauthorized".into(),
                message: "the event stream needs a token: run `phoenix login`".into(),
                details: Value::Null,
            });
        };
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| ClientError::InvalidUrl {
                url: url.clone(),
                reason: "the token is not a valid header value".into(),
            })?;
        req.headers_mut().insert("authorization", value);
        // Few, small messages: small buffers.
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let connector = Connector::Rustls(self.tls.clone());
        let connect = tokio_tungstenite::connect_async_tls_with_config(
            req,
            Some(config),
            false,
            Some(connector),
        );
        let (socket, _) = tokio::time::timeout(std::time::Duration::from_secs(10), connect)
            .await
            .map_err(|_| ClientError::Unreachable {
                url: url.clone(),
                reason: "no WebSocket handshake within 10s".into(),
            })?
            .map_err(|e| handshake_error(&url, e))?;
        let mut stream = EventStream {
            socket,
            last_seq: BTreeMap::new(),
            queued: VecDeque::new(),
        };
        match stream.read().await? {
            ServerMessage::Authenticated {} => Ok(stream),
            other => {
                Err(StreamError::Broken(format!("expected authenticated, got {other:?}")).into())
            }
        }
    }
}

fn handshake_error(url: &str, e: tungstenite::Error) -> ClientError {
    match e {
        tungstenite::Error::Http(res) => {
            // The API's error body when it came with the head; else the status alone (a
            // proxy's page, or a body that arrived after the head was read).
            let status = reqwest::StatusCode::from_u16(res.status().as_u16())
                .unwrap_or(reqwest::StatusCode::BAD_GATEWAY);
            crate::api_error(status, res.body().as_deref().unwrap_or_default())
        }
        other => {
            let tls = match &other {
                tungstenite::Error::Tls(tungstenite::error::TlsError::Rustls(r)) => Some(&**r),
                _ => crate::tls::rustls_cause(&other),
            };
            match tls.filter(|r| crate::tls::is_untrusted(r)) {
                Some(r) => ClientError::Untrusted {
                    url: url.to_string(),
                    reason: r.to_string(),
                },
                None => ClientError::Unreachable {
                    url: url.to_string(),
                    reason: other.to_string(),
                },
            }
        }
    }
}

impl EventStream {
    /// Follow `topic`. With `after_seq`, the stored events after it come first (what was
    /// missed), then the live ones. Returns the number events will follow from.
    pub async fn subscribe(
        &mut self,
        topic: &str,
        after_seq: Option<i64>,
    ) -> Result<i64, StreamError> {
        let mut m = json!({ "type": "subscribe", "topic": topic });
        if let Some(a) = after_seq {
            m["after_seq"] = json!(a);
        }
        self.send(m).await?;
        loop {
            match self.read().await? {
                ServerMessage::Subscribed { topic: t, seq } if t == topic => {
                    self.last_seq.insert(t, seq);
                    return Ok(seq);
                }
                ServerMessage::Error { code, message } => {
                    return Err(StreamError::Refused { code, message })
                }
                ServerMessage::Event(e) => self.queued.push_back(e),
                _ => {}
            }
        }
    }

    /// Subscribe again, after what was last received, to every topic `previous` followed:
    /// resuming on a new connection without gap or duplicate.
    pub async fn resubscribe_all(&mut self, previous: &EventStream) -> Result<(), StreamError> {
        for (topic, seq) in &previous.last_seq {
            self.subscribe(topic, Some(*seq)).await?;
        }
        Ok(())
    }

    /// The last event number received in `topic`.
    pub fn last_seq(&self, topic: &str) -> Option<i64> {
        self.last_seq.get(topic).copied()
    }

    /// The next event of any followed topic.
    pub async fn next_event(&mut self) -> Result<TopicEvent, StreamError> {
        if let Some(e) = self.queued.pop_front() {
            return Ok(self.seen(e));
        }
        loop {
            match self.read().await? {
                ServerMessage::Event(e) => return Ok(self.seen(e)),
                ServerMessage::Error { code, message } => {
                    return Err(StreamError::Refused { code, message })
                }
                _ => {}
            }
        }
    }

    fn seen(&mut self, e: TopicEvent) -> TopicEvent {
        let last = self.last_seq.entry(e.topic.clone()).or_insert(0);
        *last = (*last).max(e.seq);
        e
    }

    async fn send(&mut self, v: Value) -> Result<(), StreamError> {
        self.socket
            .send(Message::Text(v.to_string().into()))
            .await
            .map_err(|e| StreamError::Broken(e.to_string()))
    }

    async fn read(&mut self) -> Result<ServerMessage, StreamError> {
        loop {
            let msg = match self.socket.next().await {
                Some(Ok(m)) => m,
                Some(Err(e)) => return Err(StreamError::Broken(e.to_string())),
                None => return Err(StreamError::Broken("connection ended".into())),
            };
            match msg {
                Message::Text(t) => {
                    return serde_json::from_str(&t)
                        .map_err(|e| StreamError::Broken(format!("unexpected message: {e}")))
                }
                Message::Close(frame) => {
                    let (code, reason) = frame
                        .map(|f| (u16::from(f.code), f.reason.to_string()))
                        .unwrap_or((1005, String::new()));
                    return Err(StreamError::Closed { code, reason });
                }
                // Pings are answered by tungstenite.
                _ => continue,
            }
        }
    }

    /// Close the connection politely.
    pub async fn close(mut self) {
        let _ = self.socket.close(None).await;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn refused(status: u16, body: Option<&str>) -> ClientError {
        let res = tungstenite::http::Response::builder()
            .status(status)
            .body(body.map(|b| b.as_bytes().to_vec()))
            .unwrap();
        handshake_error("ws://x/api/v1/ws", tungstenite::Error::Http(Box::new(res)))
    }

    #[test]
    fn a_refused_upgrade_keeps_the_api_error_or_at_least_its_status() {
        let body =
            r#"{"error":{"code":"websocket_upgrade_required","message":"use a WebSocket client"}}"#;
        let e = refused(400, Some(body));
        assert_eq!(e.status(), Some(400));
        assert_eq!(
            e.to_string(),
            "websocket_upgrade_required: use a WebSocket client"
        );
        // No body read with the head (or a proxy's page): the status still says what it was.
        assert_eq!(refused(400, None).to_string(), "http_400: bad request");
        assert!(refused(502, Some("<html>bad gateway</html>"))
            .to_string()
            .starts_with("http_502: "));
    }
}
