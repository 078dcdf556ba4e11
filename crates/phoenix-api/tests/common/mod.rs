//! A real API server per test, in-process, on an ephemeral port, over a real store: a fresh
//! SQLite file, or a fresh PostgreSQL database (never skipped: an unreachable PostgreSQL
//! fails the test).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use phoenix_api::{AppState, Config};
use phoenix_core::{Clock, SystemClock};
use reqwest::{Client, Response};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

/// One test per name on each backend: `mod sqlite { async fn name() }` and
/// `mod postgres { async fn name() }`, each calling `name(&server)` from the including file
/// (which must also bring `start_sqlite`, `start_pg` and `drop_pg_database` into scope).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = super::start_sqlite().await;
                    super::$name(&s).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let s = super::start_pg().await;
                    super::$name(&s).await;
                    if let Some(db) = s.pg_db.clone() {
                        drop(s);
                        super::drop_pg_database(&db).await;
                    }
                }
            )*
        }
    };
}

pub const ENROLL_TOKEN: &str = "test-enrollment-token-0123456789";
pub const ADMIN_USER: &str = "admin";
pub const ADMIN_PASSWORD: &str = "test-admin-password";
/// The HS256 key of the test servers (so tests can forge tokens with it and without it).
pub const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123456789";

pub struct TestServer {
    pub base: String,
    /// Sends the first admin's access token on every request (a default header): what
    /// every test not about authorization uses.
    pub client: Client,
    /// No credentials.
    pub anon: Client,
    /// The admin's tokens as login answered them.
    pub admin_login: Value,
    pub state: AppState,
    shutdown: CancellationToken,
    _dir: Option<tempfile::TempDir>,
    pub pg_db: Option<String>,
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn test_config() -> Config {
    Config {
        enrollment_token: Some(ENROLL_TOKEN.to_string()),
        listen: "127.0.0.1:0".parse().unwrap(),
        analysis_tick_interval: std::time::Duration::from_millis(200),
        admin_password: Some(ADMIN_PASSWORD.to_string()),
        jwt_secret: Some(JWT_SECRET.to_string()),
        // Tests fire requests faster than any person: no limits unless a test sets them.
        rate_limit_per_second: 0.0,
        anonymous_rate_limit_per_second: 0.0,
        agent_rate_limit_per_second: 0.0,
        ..Config::default()
    }
}

pub async fn start_sqlite() -> TestServer {
    start_sqlite_with(test_config(), Arc::new(SystemClock)).await
}

pub async fn start_sqlite_with(mut config: Config, clock: Arc<dyn Clock>) -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    config.data_dir = dir.path().to_path_buf();
    let url = format!("sqlite://{}", dir.path().join("phoenix.db").display());
    config.database_url = Some(url.clone());
    let store = phoenix_store::connect(&url).await.unwrap();
    serve(config, store, clock, Some(dir), None).await
}

pub fn pg_admin_url() -> String {
    std::env::var("PHOENIX_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A new, empty PostgreSQL database; its URL.
pub async fn create_pg_database() -> (String, String) {
    use sqlx::Connection;
    let admin = pg_admin_url();
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for these tests and is unreachable at {admin}: {e}. \
             Start it with `pg_ctlcluster --skip-systemctl-redirect 15 main start`."
            )
        });
    let name = format!("phoenix_api_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let base = admin.rsplit_once('/').map(|(b, _)| b.to_string()).unwrap();
    (format!("{base}/{name}"), name)
}

pub async fn drop_pg_database(name: &str) {
    use sqlx::Connection;
    if let Ok(mut conn) = sqlx::PgConnection::connect(&pg_admin_url()).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&mut conn)
            .await;
    }
}

pub async fn start_pg() -> TestServer {
    let (url, name) = create_pg_database().await;
    start_pg_at(&url, Some(name)).await
}

pub async fn start_pg_at(url: &str, db_name: Option<String>) -> TestServer {
    start_pg_with(test_config(), url, db_name).await
}

pub async fn start_pg_with(mut config: Config, url: &str, db_name: Option<String>) -> TestServer {
    config.database_url = Some(url.to_string());
    let store = phoenix_store::connect(url).await.unwrap();
    serve(config, store, Arc::new(SystemClock), None, db_name).await
}

async fn serve(
    config: Config,
    store: phoenix_store::SharedStore,
    clock: Arc<dyn Clock>,
    dir: Option<tempfile::TempDir>,
    pg_db: Option<String>,
) -> TestServer {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let state = AppState::new(config, store, clock).await.unwrap();
    let shutdown = CancellationToken::new();
    phoenix_api::spawn_background(&state, shutdown.clone());
    let router = phoenix_api::router(state.clone());
    let stop = shutdown.clone();
    tokio::spawn(async move {
        axum::serve(
            listener,
            router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
        )
        .with_graceful_shutdown(async move { stop.cancelled().await })
        .await
        .unwrap();
    });
    let base = format!("http://{addr}");
    let anon = Client::builder().build().unwrap();
    let admin_login = login(&anon, &base, ADMIN_USER, ADMIN_PASSWORD).await;
    let token = admin_login["access_token"].as_str().unwrap();
    TestServer {
        base,
        client: bearer_client(token),
        anon,
        admin_login,
        state,
        shutdown,
        _dir: dir,
        pg_db,
    }
}

/// Log in; the tokens as the API answered them.
pub async fn login(client: &Client, base: &str, username: &str, password: &str) -> Value {
    let res = client
        .post(format!("{base}/api/v1/auth/login"))
        .json(&json!({ "username": username, "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200, "login as {username}");
    res.json().await.unwrap()
}

/// A client that sends `Authorization: Bearer <token>` on every request.
pub fn bearer_client(token: &str) -> Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    Client::builder().default_headers(headers).build().unwrap()
}

impl TestServer {
    /// Create a user with `role` (as the admin) and log it in: a client sending its token.
    pub async fn user_client(&self, username: &str, role: &str) -> Client {
        let password = format!("{username}-password");
        let res = self
            .post(
                "/api/v1/users",
                json!({ "username": username, "password": password, "role": role }),
            )
            .await;
        assert_eq!(res.status(), 201, "create user {username}");
        let tokens = login(&self.anon, &self.base, username, &password).await;
        bearer_client(tokens["access_token"].as_str().unwrap())
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn get(&self, path: &str) -> Response {
        self.client.get(self.url(path)).send().await.unwrap()
    }

    pub async fn patch(&self, path: &str, body: Value) -> Response {
        self.client
            .patch(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn create_experiment(&self, hosts: &[&str]) -> Value {
        let res = self
            .post(
                "/api/v1/experiments",
                json!({
                    "name": "cut k8s series",
                    "baseline_pipeline": "baseline",
                    "candidate_pipeline": "adaptive",
                    "target_hosts": hosts,
                }),
            )
            .await;
        assert_eq!(res.status(), 201);
        res.json().await.unwrap()
    }

    /// Enroll an agent; returns its secret.
    pub async fn enroll(&self, host: &str) -> String {
        let res = self
            .post(
                "/api/v1/agent/enroll",
                json!({ "host_id": host, "enrollment_token": ENROLL_TOKEN }),
            )
            .await;
        assert_eq!(res.status(), 200);
        let body: Value = res.json().await.unwrap();
        body["agent_secret"].as_str().unwrap().to_string()
    }

    pub fn agent(&self, host: &str, secret: &str) -> AgentClient<'_> {
        AgentClient {
            server: self,
            host: host.to_string(),
            secret: secret.to_string(),
        }
    }
}

pub struct AgentClient<'a> {
    server: &'a TestServer,
    pub host: String,
    secret: String,
}

impl AgentClient<'_> {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.server
            .client
            .request(method, self.server.url(path))
            .header("x-agent-host-id", &self.host)
            .bearer_auth(&self.secret)
    }

    pub async fn poll(&self, wait: &str) -> Response {
        self.req(
            reqwest::Method::GET,
            &format!("/api/v1/agent/tasks?wait={wait}"),
        )
        .send()
        .await
        .unwrap()
    }

    pub async fn post(&self, path: &str, body: Value) -> Response {
        self.req(reqwest::Method::POST, path)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    pub async fn status(&self, task_id: &str, status: &str) -> Response {
        self.post(
            &format!("/api/v1/agent/tasks/{task_id}/status"),
            json!({ "status": status }),
        )
        .await
    }
}

/// Assert the error body shape and return it.
pub async fn error_body(res: Response, status: u16) -> Value {
    assert_eq!(res.status().as_u16(), status, "unexpected status");
    let ct = res
        .headers()
        .get("content-type")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert!(ct.starts_with("application/json"), "content-type {ct}");
    let body: Value = res.json().await.unwrap();
    assert!(body["error"]["code"].is_string(), "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body["error"].get("details").is_some(), "{body}");
    body
}
