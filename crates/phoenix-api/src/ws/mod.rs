//! The real-time hub at `/api/v1/ws`, on the API's own port: clients authenticate, subscribe
//! to topics (`experiments`, `experiments/{id}`, `fleet`, `kpis/{id}`) and receive each
//! topic's events numbered in order; a client that comes back with the last number it saw
//! first gets what it missed from the store. Protocol: `docs/websocket.md`.

pub mod hub;
pub mod protocol;
pub mod publish;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio::time::Instant;
use utoipa::IntoParams;

use phoenix_store::StoreError;

use crate::app::AppState;
use crate::error::{ApiError, ErrorBody};
use crate::extract::ApiQuery;
use hub::{Follower, Frame, Kick};
use protocol::{close, decode_client_message, ClientMessage, ServerMessage, Topic};

pub use hub::Hub;
pub use publish::Publisher;

/// Most topics one connection may follow.
pub const MAX_SUBSCRIPTIONS: usize = 64;
/// Events read from the store per page while replaying what a client missed.
const REPLAY_PAGE: u32 = 500;
/// How long a close frame may take to leave before the connection is simply dropped (a slow
/// consumer must first read what its socket buffers hold).
const CLOSE_TIMEOUT: Duration = Duration::from_secs(10);

/// Who is on the other end of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
}

/// The one place a WebSocket client's token is checked: a user's access token or an API key
/// (any role may read events: the hub only publishes what `viewer` may `GET`), or the
/// configured `ws_token`, a static secret for tools such as `phoenix-load-ws`, compared in
/// constant time. An agent's secret or the enrollment token is not a user credential.
pub async fn authenticate(state: &AppState, token: Option<&str>) -> Result<Principal, ApiError> {
    use subtle::ConstantTimeEq;
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(ApiError::unauthorized(
            "missing token: send `Authorization: Bearer <token>`, `?access_token=<token>`, or a first message {\"type\":\"auth\",\"token\":…}",
        ));
    };
    if let Some(expected) = &state.config.ws_token {
        if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) {
            return Ok(Principal {
                subject: "ws_token".into(),
            });
        }
    }
    match state.auth.authenticate(token).await {
        Ok(p) => Ok(Principal {
            subject: p.username,
        }),
        Err(crate::auth::AuthError::Unauthorized(_)) => {
            Err(ApiError::unauthorized("invalid token"))
        }
        Err(other) => Err(other.into()),
    }
}

#[derive(Debug, Deserialize, IntoParams)]
pub struct WsParams {
    /// The token, for browsers (which cannot set headers on a WebSocket request).
    pub access_token: Option<String>,
}

/// `GET /api/v1/ws`: upgrade to a WebSocket (protocol in `docs/websocket.md`).
#[utoipa::path(get, path = "/api/v1/ws", tag = "realtime",
    params(WsParams),
    responses(
        (status = 101, description = "switching to the WebSocket protocol: JSON text frames, see docs/websocket.md"),
        (status = 400, description = "not a WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "the token given with the request is wrong", body = ErrorBody),
    ),
    security(("token" = [])))]
pub async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(params): ApiQuery<WsParams>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let ws = ws.map_err(|r| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "websocket_upgrade_required",
            format!("{r}: connect with a WebSocket client (GET with Connection: Upgrade, Upgrade: websocket)"),
        )
    })?;
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim);
    let token = bearer.or(params.access_token.as_deref());
    // A token given with the request is checked before upgrading: a wrong one is a plain 401.
    let principal = match token {
        Some(t) => Some(authenticate(&state, Some(t)).await?),
        None => None,
    };
    let max = state.config.ws_max_message_bytes;
    Ok(ws
        // Small buffers: thousands of mostly idle connections. Messages are small.
        .read_buffer_size(4096)
        .write_buffer_size(0)
        // The hard limit is twice ours, so a message between the two is refused with a clean
        // 1009 close by the connection rather than an abrupt error.
        .max_message_size(max * 2)
        .max_frame_size(max * 2)
        .on_upgrade(move |socket| async move {
            Connection::new(state, principal).run(socket).await;
        }))
}

/// How a connection ends.
#[derive(Debug)]
struct Close {
    code: u16,
    reason: String,
}

impl Close {
    fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: protocol::clip(&reason.into(), 120),
        }
    }
}

/// Why sending stopped.
#[derive(Debug)]
enum SendError {
    /// The socket is gone.
    Gone,
    /// Kicked as a slow consumer while waiting for the socket.
    Kicked,
}

struct Connection {
    state: AppState,
    id: u64,
    principal: Option<Principal>,
    /// Followed topics and the last number this client was sent in each.
    subscriptions: HashMap<Arc<str>, i64>,
    tx: mpsc::Sender<Arc<Frame>>,
    rx: mpsc::Receiver<Arc<Frame>>,
    kick: Arc<Kick>,
    last_heard: Instant,
}

impl Connection {
    fn new(state: AppState, principal: Option<Principal>) -> Self {
        let hub = &state.service.events.hub;
        let id = hub.connection_id();
        let (tx, rx) = mpsc::channel(state.config.ws_client_buffer);
        Self {
            id,
            principal,
            subscriptions: HashMap::new(),
            tx,
            rx,
            kick: Arc::new(Kick::default()),
            last_heard: Instant::now(),
            state,
        }
    }

    fn hub(&self) -> &Hub {
        &self.state.service.events.hub
    }

    async fn run(mut self, mut socket: WebSocket) {
        let hub = self.hub().clone();
        let stats = hub.stats();
        stats.connections.inc();
        let outcome = self.serve(&mut socket).await;
        for topic in self.subscriptions.keys() {
            hub.unfollow(topic, self.id);
            if let Ok(t) = Topic::parse(topic) {
                stats.subscribed(t.kind()).dec();
            }
        }
        stats.connections.dec();
        stats.disconnected(match &outcome {
            Ok(()) => "client_closed",
            Err(close) => hub::disconnect_reason(close.code),
        });
        if let Err(close) = outcome {
            tracing::debug!(code = close.code, reason = %close.reason, "websocket closed by the server");
            let frame = Message::Close(Some(CloseFrame {
                code: close.code,
                reason: Utf8Bytes::from(close.reason),
            }));
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, socket.send(frame)).await;
        }
    }

    /// Serve until the client leaves (`Ok`) or the server closes the connection (`Err`).
    async fn serve(&mut self, socket: &mut WebSocket) -> Result<(), Close> {
        let ping_every = self.state.config.ws_ping_interval;
        let mut ping = tokio::time::interval_at(Instant::now() + ping_every, ping_every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let auth_deadline = tokio::time::sleep(self.state.config.ws_auth_timeout);
        tokio::pin!(auth_deadline);
        if let Some(p) = &self.principal {
            let hello = ServerMessage::Authenticated {
                subject: &p.subject,
                protocol: protocol::PROTOCOL_VERSION,
            };
            self.send_text(socket, hello.to_json()).await?;
        }
        let kick = self.kick.clone();
        loop {
            tokio::select! {
                biased;
                _ = kick.kicked() => return Err(self.slow_consumer()),
                msg = socket.recv() => match msg {
                    None => return Ok(()),
                    Some(Err(e)) => return Err(self.read_error(e)),
                    Some(Ok(msg)) => {
                        self.last_heard = Instant::now();
                        self.on_message(socket, msg).await?;
                    }
                },
                Some(frame) = self.rx.recv() => self.deliver(socket, &frame, false).await?,
                _ = ping.tick() => {
                    if self.last_heard.elapsed() > ping_every * 3 {
                        return Err(Close::new(close::KEEPALIVE_TIMEOUT, format!(
                            "nothing heard for {}s: answer pings", ping_every.as_secs() * 3)));
                    }
                    self.send(socket, Message::Ping(Default::default())).await?;
                }
                _ = &mut auth_deadline, if self.principal.is_none() => {
                    return Err(Close::new(close::POLICY_VIOLATION, format!(
                        "not authenticated within {}s",
                        self.state.config.ws_auth_timeout.as_secs_f64())));
                }
            }
        }
    }

    fn slow_consumer(&self) -> Close {
        Close::new(
            close::SLOW_CONSUMER,
            format!(
                "slow consumer: {} events queued unread",
                self.state.config.ws_client_buffer
            ),
        )
    }

    fn read_error(&self, e: axum::Error) -> Close {
        let text = e.to_string();
        if text.contains("too long") || text.contains("too big") || text.contains("Space limit") {
            Close::new(
                close::MESSAGE_TOO_BIG,
                format!(
                    "message larger than {} bytes",
                    self.state.config.ws_max_message_bytes
                ),
            )
        } else {
            let code = if text.contains("UTF-8") || text.contains("utf-8") {
                close::INVALID_PAYLOAD
            } else {
                close::PROTOCOL_ERROR
            };
            Close::new(code, text)
        }
    }

    async fn on_message(&mut self, socket: &mut WebSocket, msg: Message) -> Result<(), Close> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                return Err(Close::new(
                    close::UNSUPPORTED_DATA,
                    "binary frames are not supported: send JSON text",
                ))
            }
            // tungstenite answers pings itself; any frame counts as a sign of life.
            Message::Ping(_) | Message::Pong(_) => return Ok(()),
            Message::Close(_) => return Ok(()),
        };
        let max = self.state.config.ws_max_message_bytes;
        if text.len() > max {
            return Err(Close::new(
                close::MESSAGE_TOO_BIG,
                format!("message of {} bytes exceeds {max}", text.len()),
            ));
        }
        let message = decode_client_message(&text)
            .map_err(|e| Close::new(close::INVALID_PAYLOAD, format!("invalid message: {e}")))?;
        match (&self.principal, message) {
            (None, ClientMessage::Auth { token }) => {
                match authenticate(&self.state, Some(&token)).await {
                    Ok(p) => {
                        let hello = ServerMessage::Authenticated {
                            subject: &p.subject,
                            protocol: protocol::PROTOCOL_VERSION,
                        }
                        .to_json();
                        self.principal = Some(p);
                        self.send_text(socket, hello).await
                    }
                    Err(e) => Err(Close::new(close::POLICY_VIOLATION, e.message)),
                }
            }
            (None, _) => Err(Close::new(
                close::POLICY_VIOLATION,
                "authenticate first: {\"type\":\"auth\",\"token\":…}",
            )),
            (Some(_), ClientMessage::Auth { .. }) => {
                self.error(
                    socket,
                    "already_authenticated",
                    "this connection is authenticated",
                    None,
                )
                .await
            }
            (Some(_), ClientMessage::Subscribe { topic, after_seq }) => {
                self.subscribe(socket, &topic, after_seq).await
            }
            (Some(_), ClientMessage::Unsubscribe { topic }) => {
                match self.subscriptions.remove_entry(topic.as_str()) {
                    Some((key, _)) => {
                        self.hub().unfollow(&key, self.id);
                        if let Ok(t) = Topic::parse(&key) {
                            self.hub().stats().subscribed(t.kind()).dec();
                        }
                        let m = ServerMessage::Unsubscribed { topic: &key }.to_json();
                        self.send_text(socket, m).await
                    }
                    None => {
                        self.error(
                            socket,
                            "not_subscribed",
                            &format!("not subscribed to `{}`", protocol::clip(&topic, 200)),
                            Some(&topic),
                        )
                        .await
                    }
                }
            }
            (Some(_), ClientMessage::Ping { id }) => {
                let m = ServerMessage::Pong { id: id.as_ref() }.to_json();
                self.send_text(socket, m).await
            }
        }
    }

    async fn subscribe(
        &mut self,
        socket: &mut WebSocket,
        name: &str,
        after_seq: Option<i64>,
    ) -> Result<(), Close> {
        let topic = match Topic::parse(name) {
            Ok(t) => t,
            Err(e) => {
                return self
                    .error(socket, "unknown_topic", &e.to_string(), Some(&e.topic))
                    .await
            }
        };
        let key = topic.to_string();
        if self.subscriptions.contains_key(key.as_str()) {
            let m = format!("already subscribed to `{key}`; unsubscribe first to start over");
            return self
                .error(socket, "already_subscribed", &m, Some(&key))
                .await;
        }
        if self.subscriptions.len() >= MAX_SUBSCRIPTIONS {
            let m = format!("at most {MAX_SUBSCRIPTIONS} topics per connection");
            return self
                .error(socket, "too_many_subscriptions", &m, Some(&key))
                .await;
        }
        if let Some(after) = after_seq.filter(|s| *s < 0) {
            let m = format!("after_seq must be 0 or more, got {after}");
            return self
                .error(socket, "invalid_after_seq", &m, Some(&key))
                .await;
        }
        let store = self.state.service.store.clone();
        if let Some(id) = topic.experiment() {
            match store.get_experiment(id).await {
                Ok(_) => {}
                Err(StoreError::NotFound { .. }) => {
                    let m = format!("unknown topic `{key}`: no experiment {id}");
                    return self.error(socket, "unknown_topic", &m, Some(&key)).await;
                }
                Err(e) => return Err(store_failure(e)),
            }
        }
        let follower = Follower {
            tx: self.tx.clone(),
            kick: self.kick.clone(),
        };
        let hub = self.hub().clone();
        hub.follow(&key, self.id, follower)
            .await
            .map_err(store_failure)?;
        let key: Arc<str> = Arc::from(key.as_str());
        // Followed first, then read: whatever commits from here on arrives live, whatever
        // committed before is in the store; the overlap is dropped by number.
        let current = match store.topic_last_seq(&key).await {
            Ok(c) => c,
            Err(e) => {
                // Not in `subscriptions` yet: the connection's end would not unfollow it.
                hub.unfollow(&key, self.id);
                return Err(store_failure(e));
            }
        };
        let mut start = after_seq.unwrap_or(current);
        if start > current {
            let m = format!("after_seq {start} is ahead of the topic's last event {current}: following from {current}");
            self.error(socket, "invalid_after_seq", &m, Some(&key))
                .await?;
            start = current;
        }
        self.subscriptions.insert(key.clone(), start);
        hub.stats().subscribed(topic.kind()).inc();
        if after_seq.is_some() {
            hub.stats().resumes.inc();
        }
        let m = ServerMessage::Subscribed {
            topic: &key,
            seq: start,
        }
        .to_json();
        self.send_text(socket, m).await?;
        // Replay what was missed, holding live events (any topic) aside meanwhile so the
        // queue does not fill, then hand those over in order.
        let mut held: VecDeque<Arc<Frame>> = VecDeque::new();
        let hold_max = self.state.config.ws_client_buffer * 4;
        let mut delivered = start;
        while delivered < current {
            let page = store
                .list_topic_events(&key, delivered, REPLAY_PAGE)
                .await
                .map_err(store_failure)?;
            let Some(first) = page.first() else { break };
            if first.seq > delivered + 1 {
                let m = format!(
                    "events {}..{} of `{key}` are past retention; the REST API has the current state",
                    delivered + 1,
                    first.seq - 1
                );
                self.error(socket, "events_expired", &m, Some(&key)).await?;
            }
            let full = page.len() == REPLAY_PAGE as usize;
            for e in &page {
                self.deliver(socket, &Frame::of(e), true).await?;
                delivered = e.seq;
            }
            while let Ok(frame) = self.rx.try_recv() {
                held.push_back(frame);
            }
            if held.len() > hold_max {
                return Err(self.slow_consumer());
            }
            if !full {
                break;
            }
        }
        while let Some(frame) = held.pop_front() {
            self.deliver(socket, &frame, false).await?;
        }
        Ok(())
    }

    /// Send an event if its topic is followed and it is the next one (numbers already sent
    /// are dropped). `from_store`: replayed on a resume, not live.
    async fn deliver(
        &mut self,
        socket: &mut WebSocket,
        frame: &Frame,
        from_store: bool,
    ) -> Result<(), Close> {
        let Some(sent) = self.subscriptions.get_mut(&frame.topic) else {
            return Ok(());
        };
        if frame.seq <= *sent {
            return Ok(());
        }
        *sent = frame.seq;
        // Counted before the write, so a client that has read it sees it counted.
        let stats = self.state.service.events.hub.stats();
        if from_store {
            stats.delivered_store.inc();
        } else {
            stats.delivered_live.inc();
        }
        self.send(socket, Message::Text(frame.text.clone())).await
    }

    async fn error(
        &mut self,
        socket: &mut WebSocket,
        code: &str,
        message: &str,
        topic: Option<&str>,
    ) -> Result<(), Close> {
        let m = ServerMessage::Error {
            code,
            message,
            topic,
        }
        .to_json();
        self.send_text(socket, m).await
    }

    async fn send_text(&mut self, socket: &mut WebSocket, text: String) -> Result<(), Close> {
        self.send(socket, Message::Text(Utf8Bytes::from(text)))
            .await
    }

    /// Send, unless the client is kicked as a slow consumer while the socket is full.
    async fn send(&mut self, socket: &mut WebSocket, msg: Message) -> Result<(), Close> {
        let kick = self.kick.clone();
        let outcome = tokio::select! {
            biased;
            _ = kick.kicked() => Err(SendError::Kicked),
            r = socket.send(msg) => r.map_err(|_| SendError::Gone),
        };
        match outcome {
            Ok(()) => Ok(()),
            Err(SendError::Kicked) => Err(self.slow_consumer()),
            Err(SendError::Gone) => Err(Close::new(close::GOING_AWAY, "connection lost")),
        }
    }
}

fn store_failure(e: StoreError) -> Close {
    tracing::warn!(error = %e, "websocket: store failure");
    Close::new(
        close::INTERNAL_ERROR,
        "the server cannot reach its database; reconnect and resume",
    )
}
