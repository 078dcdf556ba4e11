//! A typed async client for the Phoenix control-plane API: one method per endpoint, the
//! domain types of `phoenix-core` where the API serves them as they are, and response structs
//! here for the views the API builds (fleet status, KPIs, results, cost analysis, pages).
//! Errors keep the API's `{ "error": { "code", "message", "details" } }` apart from failures
//! to reach the server, so a caller can tell "the server said no" from "no server".

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use phoenix_core::cost::PricingPreset;
pub use phoenix_core::{
    Experiment, ExperimentEvent, ExperimentId, ExperimentPatch, ExperimentPhase, NewExperiment,
    Task, TaskId, TaskStatus,
};

mod recommendations;
mod types;
pub use recommendations::BreakdownQuery;
pub use types::*;
mod tls;
mod ws;
pub use ws::{EventStream, StreamError, TopicEvent};

/// What can go wrong talking to the API.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error status and (usually) its error body.
    #[error("{code}: {message}")]
    Api {
        status: u16,
        code: String,
        message: String,
        details: serde_json::Value,
    },
    /// No answer: connection refused, DNS, TLS, timeout.
    #[error("cannot reach {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server's TLS certificate was refused: not signed by a trusted CA (give the CA
    /// file of a private PKI), not for this host name, or expired.
    #[error("cannot trust {url}: {reason}")]
    Untrusted { url: String, reason: String },
    /// The extra CA file cannot be used: missing, not PEM, or without a certificate.
    #[error("CA file {path}: {reason}")]
    CaFile { path: String, reason: String },
    /// The TLS settings could not be built.
    #[error("tls: {0}")]
    Tls(String),
    /// An answer that is not what the API serves (a proxy page, a version mismatch).
    #[error("unexpected response from {url}: {reason}")]
    Decode { url: String, reason: String },
    /// The server URL given is not usable.
    #[error("invalid server url `{url}`: {reason}")]
    InvalidUrl { url: String, reason: String },
}

impl ClientError {
    /// The HTTP status when the server answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

pub type ClientResult<T> = Result<T, ClientError>;

/// Connection to one API server, with an optional bearer token (an access token or an API
/// key) and, after a login, a refresh token: a request answered 401 is retried once after
/// exchanging the refresh token for new tokens ([`Client::tokens`] has them).
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    tokens: Arc<Mutex<Tokens>>,
    /// One refresh at a time: a refresh token is single use, and presenting it twice revokes
    /// the session.
    refreshing: Arc<tokio::sync::Mutex<()>>,
    http: reqwest::Client,
    /// What HTTPS and `wss://` trust (the web roots, plus the CA file when given).
    tls: Arc<rustls::ClientConfig>,
}

/// The credentials a [`Client`] holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens {
    pub access: Option<String>,
    pub refresh: Option<String>,
}

/// Query of `GET /api/v1/experiments`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ExperimentListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phase: Option<ExperimentPhase>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// Query of `GET /api/v1/tasks`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TaskListQuery {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<TaskStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experiment_id: Option<ExperimentId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

#[derive(Debug, Serialize)]
struct ActionBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<&'a str>,
}

#[derive(Debug, Deserialize)]
struct ErrorEnvelope {
    error: ErrorPayload,
}

#[derive(Debug, Deserialize)]
struct ErrorPayload {
    code: String,
    message: String,
    #[serde(default)]
    details: serde_json::Value,
}

impl Client {
    /// A client for `base` (`http://host:port`, no trailing path). `timeout` bounds each request.
    pub fn new(base: &str, token: Option<String>, timeout: Duration) -> ClientResult<Self> {
        Self::with_ca_file(base, token, timeout, None)
    }

    /// Like [`Client::new`], also trusting the CA certificates of the PEM file `ca_file` (a
    /// private PKI) for HTTPS and for the hub over `wss://`. A file that is missing, not PEM,
    /// or holds no certificate is a [`ClientError::CaFile`] naming it.
    pub fn with_ca_file(
        base: &str,
        token: Option<String>,
        timeout: Duration,
        ca_file: Option<&Path>,
    ) -> ClientResult<Self> {
        let trimmed = base.trim_end_matches('/').to_string();
        let parsed = reqwest::Url::parse(&trimmed).map_err(|e| ClientError::InvalidUrl {
            url: base.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(ClientError::InvalidUrl {
                url: base.to_string(),
                reason: "the scheme must be http or https".into(),
            });
        }
        let tls = tls::client_config(ca_file)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls.clone())
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(5).min(timeout))
            .user_agent(concat!("phoenix-client/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::InvalidUrl {
                url: base.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Self {
            base: trimmed,
            tokens: Arc::new(Mutex::new(Tokens {
                access: token.filter(|t| !t.is_empty()),
                refresh: None,
            })),
            refreshing: Arc::new(tokio::sync::Mutex::new(())),
            http,
            tls: Arc::new(tls),
        })
    }

    /// Also hold a refresh token (from an earlier login), used when a request gets 401.
    pub fn with_refresh_token(self, refresh: Option<String>) -> Self {
        self.lock_tokens().refresh = refresh.filter(|t| !t.is_empty());
        self
    }

    /// The credentials now held: after a refresh, not the ones the client started with.
    pub fn tokens(&self) -> Tokens {
        self.lock_tokens().clone()
    }

    fn lock_tokens(&self) -> std::sync::MutexGuard<'_, Tokens> {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Exchange the refresh token for new tokens, unless another request already did since
    /// `failed_with` was refused. Whether there are new credentials to retry with.
    async fn refresh_after_401(&self, failed_with: Option<&str>) -> bool {
        let _one_at_a_time = self.refreshing.lock().await;
        let current = self.tokens();
        if current.access.as_deref() != failed_with {
            return current.access.is_some();
        }
        let Some(refresh) = current.refresh else {
            return false;
        };
        let path = "/api/v1/auth/refresh";
        let sent = self
            .http
            .post(self.url(path))
            .json(&serde_json::json!({ "refresh_token": refresh }))
            .send()
            .await;
        let Ok(resp) = sent else { return false };
        if !resp.status().is_success() {
            // Spent or revoked: forget it, the user must log in again.
            self.lock_tokens().refresh = None;
            return false;
        }
        match resp.json::<LoginResponse>().await {
            Ok(l) => {
                *self.lock_tokens() = Tokens {
                    access: Some(l.access_token),
                    refresh: Some(l.refresh_token),
                };
                true
            }
            Err(_) => false,
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The current access token (or API key), if any.
    pub fn token(&self) -> Option<String> {
        self.tokens().access
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let rb = self.http.request(method, self.url(path));
        match self.tokens().access {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// Send, map transport failures and error statuses, and return the successful response.
    /// A 401 with a refresh token in hand is retried once with refreshed credentials.
    async fn send(&self, rb: RequestBuilder, path: &str) -> ClientResult<reqwest::Response> {
        let url = self.url(path);
        let used = self.tokens().access;
        let retry = rb.try_clone();
        let unreachable = |e: reqwest::Error| transport_error(&url, &e);
        let mut resp = rb.send().await.map_err(unreachable)?;
        if resp.status() == StatusCode::UNAUTHORIZED
            && path != "/api/v1/auth/login"
            && path != "/api/v1/auth/refresh"
        {
            if let Some(retry) = retry {
                if self.refresh_after_401(used.as_deref()).await {
                    let mut req = retry.build().map_err(unreachable)?;
                    if let Some(t) = self.tokens().access {
                        if let Ok(v) =
                            reqwest::header::HeaderValue::from_str(&format!("Bearer {t}"))
                        {
                            req.headers_mut().insert(reqwest::header::AUTHORIZATION, v);
                        }
                    }
                    resp = self.http.execute(req).await.map_err(unreachable)?;
                }
            }
        }
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.unwrap_or_default();
        Err(api_error(status, &body))
    }

    async fn json<T: DeserializeOwned>(&self, rb: RequestBuilder, path: &str) -> ClientResult<T> {
        let resp = self.send(rb, path).await?;
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| transport_error(&self.url(path), &e))?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Decode {
            url: self.url(path),
            reason: e.to_string(),
        })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> ClientResult<T> {
        self.json(self.request(Method::GET, path), path).await
    }

    // --- authentication ----------------------------------------------------------------------

    /// Log in; the client then holds the new tokens ([`Client::tokens`]).
    pub async fn login(&self, username: &str, password: &str) -> ClientResult<LoginResponse> {
        let path = "/api/v1/auth/login";
        let body = serde_json::json!({ "username": username, "password": password });
        let l: LoginResponse = self
            .json(self.http.post(self.url(path)).json(&body), path)
            .await?;
        *self.lock_tokens() = Tokens {
            access: Some(l.access_token.clone()),
            refresh: Some(l.refresh_token.clone()),
        };
        Ok(l)
    }

    /// End the session on the server (its access and refresh tokens stop working).
    pub async fn logout(&self) -> ClientResult<()> {
        let path = "/api/v1/auth/logout";
        self.send(self.request(Method::POST, path), path).await?;
        *self.lock_tokens() = Tokens::default();
        Ok(())
    }

    /// Who the server takes the caller for.
    pub async fn me(&self) -> ClientResult<Me> {
        self.get("/api/v1/auth/me").await
    }

    // --- experiments -----------------------------------------------------------------------

    pub async fn create_experiment(&self, new: &NewExperiment) -> ClientResult<Experiment> {
        let path = "/api/v1/experiments";
        self.json(self.request(Method::POST, path).json(new), path)
            .await
    }

    /// Create from any JSON body (a spec file read as it is, so the server names bad fields).
    pub async fn create_experiment_raw(
        &self,
        spec: &serde_json::Value,
    ) -> ClientResult<Experiment> {
        let path = "/api/v1/experiments";
        self.json(self.request(Method::POST, path).json(spec), path)
            .await
    }

    pub async fn list_experiments(
        &self,
        q: &ExperimentListQuery,
    ) -> ClientResult<ListPage<Experiment>> {
        let path = "/api/v1/experiments";
        self.json(self.request(Method::GET, path).query(q), path)
            .await
    }

    pub async fn get_experiment(&self, id: &str) -> ClientResult<Experiment> {
        self.get(&format!("/api/v1/experiments/{}", seg(id))).await
    }

    pub async fn patch_experiment(
        &self,
        id: &str,
        patch: &ExperimentPatch,
    ) -> ClientResult<Experiment> {
        let path = format!("/api/v1/experiments/{}", seg(id));
        self.json(self.request(Method::PATCH, &path).json(patch), &path)
            .await
    }

    pub async fn delete_experiment(&self, id: &str) -> ClientResult<()> {
        let path = format!("/api/v1/experiments/{}", seg(id));
        self.send(self.request(Method::DELETE, &path), &path)
            .await
            .map(|_| ())
    }

    pub async fn start_experiment(&self, id: &str) -> ClientResult<TransitionResponse> {
        let path = format!("/api/v1/experiments/{}/start", seg(id));
        self.json(self.request(Method::POST, &path), &path).await
    }

    pub async fn stop_experiment(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> ClientResult<TransitionResponse> {
        self.action(id, "stop", reason).await
    }

    pub async fn rollback_experiment(
        &self,
        id: &str,
        reason: Option<&str>,
    ) -> ClientResult<TransitionResponse> {
        self.action(id, "rollback", reason).await
    }

    async fn action(
        &self,
        id: &str,
        action: &str,
        reason: Option<&str>,
    ) -> ClientResult<TransitionResponse> {
        let path = format!("/api/v1/experiments/{}/{action}", seg(id));
        let rb = self
            .request(Method::POST, &path)
            .json(&ActionBody { reason });
        self.json(rb, &path).await
    }

    /// Events with `seq` greater than `after_seq`, oldest first, at most `limit` (1–500).
    pub async fn experiment_events(
        &self,
        id: &str,
        after_seq: i64,
        limit: Option<u32>,
    ) -> ClientResult<Vec<ExperimentEvent>> {
        let path = format!("/api/v1/experiments/{}/events", seg(id));
        let mut q: Vec<(&str, String)> = vec![("after_seq", after_seq.to_string())];
        if let Some(l) = limit {
            q.push(("limit", l.to_string()));
        }
        self.json(self.request(Method::GET, &path).query(&q), &path)
            .await
    }

    /// Every event after `after_seq`, following pages of 500.
    pub async fn all_experiment_events(
        &self,
        id: &str,
        mut after_seq: i64,
    ) -> ClientResult<Vec<ExperimentEvent>> {
        let mut out = Vec::new();
        loop {
            let page = self.experiment_events(id, after_seq, Some(500)).await?;
            let n = page.len();
            if let Some(last) = page.last() {
                after_seq = last.seq;
            }
            out.extend(page);
            if n < 500 {
                return Ok(out);
            }
        }
    }

    pub async fn experiment_kpis(&self, id: &str) -> ClientResult<KpiReport> {
        self.get(&format!("/api/v1/experiments/{}/kpis", seg(id)))
            .await
    }

    pub async fn experiment_results(&self, id: &str) -> ClientResult<ResultsResponse> {
        self.get(&format!("/api/v1/experiments/{}/results", seg(id)))
            .await
    }

    pub async fn cost_analysis(
        &self,
        id: &str,
        preset: Option<&str>,
    ) -> ClientResult<CostAnalysis> {
        let path = format!("/api/v1/experiments/{}/cost-analysis", seg(id));
        let mut rb = self.request(Method::GET, &path);
        if let Some(p) = preset {
            rb = rb.query(&[("preset", p)]);
        }
        self.json(rb, &path).await
    }

    // --- cost presets ----------------------------------------------------------------------

    pub async fn cost_presets(&self) -> ClientResult<CostPresets> {
        self.get("/api/v1/cost/presets").await
    }

    pub async fn put_cost_presets(&self, presets: &CostPresets) -> ClientResult<CostPresets> {
        let path = "/api/v1/cost/presets";
        self.json(self.request(Method::PUT, path).json(presets), path)
            .await
    }

    /// Replace the presets with any JSON body (a file read as it is, checked by the server).
    pub async fn put_cost_presets_raw(
        &self,
        body: &serde_json::Value,
    ) -> ClientResult<CostPresets> {
        let path = "/api/v1/cost/presets";
        self.json(self.request(Method::PUT, path).json(body), path)
            .await
    }

    // --- tasks, fleet, operations ----------------------------------------------------------

    pub async fn list_tasks(&self, q: &TaskListQuery) -> ClientResult<ListPage<Task>> {
        let path = "/api/v1/tasks";
        self.json(self.request(Method::GET, path).query(q), path)
            .await
    }

    pub async fn get_task(&self, id: &str) -> ClientResult<Task> {
        self.get(&format!("/api/v1/tasks/{}", seg(id))).await
    }

    // --- pipelines ------------------------------------------------------------------------

    /// `GET /api/v1/pipelines/templates`.
    pub async fn templates(&self) -> ClientResult<serde_json::Value> {
        self.get("/api/v1/pipelines/templates").await
    }

    /// `GET /api/v1/pipelines/templates/{name}[?version=N]`.
    pub async fn template(
        &self,
        name: &str,
        version: Option<u32>,
    ) -> ClientResult<serde_json::Value> {
        let mut path = format!("/api/v1/pipelines/templates/{}", seg(name));
        if let Some(v) = version {
            path.push_str(&format!("?version={v}"));
        }
        self.get(&path).await
    }

    /// `POST /api/v1/pipelines/render` with any body (`template`, `parameters`, `format`).
    pub async fn render(&self, body: &serde_json::Value) -> ClientResult<serde_json::Value> {
        let path = "/api/v1/pipelines/render";
        self.json(self.request(Method::POST, path).json(body), path)
            .await
    }

    /// `POST /api/v1/pipelines/validate` (`pipeline`, `parameters`).
    pub async fn validate(&self, body: &serde_json::Value) -> ClientResult<serde_json::Value> {
        let path = "/api/v1/pipelines/validate";
        self.json(self.request(Method::POST, path).json(body), path)
            .await
    }

    /// `POST /api/v1/pipeline-deployments`.
    pub async fn deploy(&self, body: &serde_json::Value) -> ClientResult<serde_json::Value> {
        let path = "/api/v1/pipeline-deployments";
        self.json(self.request(Method::POST, path).json(body), path)
            .await
    }

    /// `GET /api/v1/pipeline-deployments`.
    pub async fn deployments(&self) -> ClientResult<serde_json::Value> {
        self.get("/api/v1/pipeline-deployments?limit=500").await
    }

    /// `GET /api/v1/pipeline-deployments/{id}`.
    pub async fn deployment(&self, id: &str) -> ClientResult<serde_json::Value> {
        self.get(&format!("/api/v1/pipeline-deployments/{}", seg(id)))
            .await
    }

    /// `DELETE /api/v1/pipeline-deployments/{id}`: back to the baseline on every host.
    pub async fn withdraw(&self, id: &str) -> ClientResult<serde_json::Value> {
        let path = format!("/api/v1/pipeline-deployments/{}", seg(id));
        self.json(self.request(Method::DELETE, &path), &path).await
    }

    pub async fn fleet_status(&self) -> ClientResult<FleetStatus> {
        self.get("/api/v1/fleet/status").await
    }

    pub async fn health(&self) -> ClientResult<Health> {
        self.get("/health").await
    }

    pub async fn ready(&self) -> ClientResult<Ready> {
        self.get("/ready").await
    }

    pub async fn openapi(&self) -> ClientResult<serde_json::Value> {
        self.get("/api/v1/openapi.json").await
    }
}

/// Percent-encode one path segment (ids come from the command line).
fn seg(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request that got no answer: [`ClientError::Untrusted`] when TLS refused the server's
/// certificate, else [`ClientError::Unreachable`].
fn transport_error(url: &str, e: &reqwest::Error) -> ClientError {
    match tls::rustls_cause(e).filter(|r| tls::is_untrusted(r)) {
        Some(r) => ClientError::Untrusted {
            url: url.to_string(),
            reason: r.to_string(),
        },
        None => ClientError::Unreachable {
            url: url.to_string(),
            reason: transport_reason(e),
        },
    }
}

/// The innermost cause of a transport error, which says what happened ("Connection refused").
fn transport_reason(e: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = e;
    while let Some(next) = source.source() {
        source = next;
    }
    let inner = source.to_string();
    if e.is_timeout() {
        format!("timed out ({inner})")
    } else {
        inner
    }
}

/// The API's error body as a [`ClientError::Api`]; a body that is not one keeps the status.
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorEnvelope>(body) {
        Ok(env) => ClientError::Api {
            status: status.as_u16(),
            code: env.error.code,
            message: env.error.message,
            details: env.error.details,
        },
        Err(_) => {
            let text: String = String::from_utf8_lossy(body)
                .chars()
                .take(200)
                .collect::<String>()
                .trim()
                .to_string();
            ClientError::Api {
                status: status.as_u16(),
                code: format!("http_{}", status.as_u16()),
                message: if text.is_empty() {
                    status
                        .canonical_reason()
                        .unwrap_or("error status")
                        .to_lowercase()
                } else {
                    text
                },
                details: serde_json::Value::Null,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_error_body_is_parsed_into_code_message_and_details() {
        let body = br#"{"error":{"code":"not_found","message":"experiment x not found","details":{"id":"x"}}}"#;
        match api_error(StatusCode::NOT_FOUND, body) {
            ClientError::Api {
                status,
                code,
                message,
                details,
            } => {
                assert_eq!(status, 404);
                assert_eq!(code, "not_found");
                assert_eq!(message, "experiment x not found");
                assert_eq!(details["id"], "x");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn non_json_error_body_keeps_the_status() {
        let e = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(e.status(), Some(502));
        assert!(e.to_string().starts_with("http_502: "));
    }

    #[test]
    fn path_segments_are_percent_encoded() {
        assert_eq!(seg("abc-1"), "abc-1");
        assert_eq!(seg("a/b c"), "a%2Fb%20c");
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Client::new("ftp://x", None, Duration::from_secs(1)).is_err());
        assert!(Client::new("not a url", None, Duration::from_secs(1)).is_err());
        let c = Client::new("http://127.0.0.1:8080/", None, Duration::from_secs(1));
        assert_eq!(
            c.map(|c| c.base_url().to_string()).ok().as_deref(),
            Some("http://127.0.0.1:8080")
        );
    }

    /// Answers one request with a health body and hands back what it received.
    fn one_shot_server() -> (String, std::thread::JoinHandle<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let base = format!("http://{}", listener.local_addr().expect("addr"));
        let handle = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut buf = vec![0u8; 8192];
            let n = conn.read(&mut buf).expect("read");
            let body = r#"{"status":"ok","version":"test"}"#;
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        (base, handle)
    }

    #[tokio::test]
    async fn the_token_is_sent_as_a_bearer_authorization() {
        let (base, server) = one_shot_server();
        let c = Client::new(&base, Some("tok-123".into()), Duration::from_secs(5)).expect("client");
        assert_eq!(c.health().await.expect("health").version, "test");
        let request = server.join().expect("server").to_lowercase();
        assert!(
            request.contains("authorization: bearer tok-123"),
            "{request}"
        );
    }

    #[tokio::test]
    async fn no_token_no_authorization_header() {
        let (base, server) = one_shot_server();
        let c = Client::new(&base, Some(String::new()), Duration::from_secs(5)).expect("client");
        c.health().await.expect("health");
        let request = server.join().expect("server").to_lowercase();
        assert!(!request.contains("authorization"), "{request}");
    }

    #[tokio::test]
    async fn a_closed_port_is_unreachable_not_an_api_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        drop(listener);
        let c = Client::new(
            &format!("http://127.0.0.1:{port}"),
            None,
            Duration::from_secs(2),
        )
        .expect("client");
        match c.health().await {
            Err(ClientError::Unreachable { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}
