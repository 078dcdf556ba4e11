//! Wiring: the shared state, the router with its middleware, and the background loops
//! (lease expiry, delayed-task wake-ups, retention, cross-replica wake-ups).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderName, Request, Response, StatusCode};
use axum::Router;
use futures::StreamExt;
use tokio::task::JoinHandle;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use tracing::Span;

use phoenix_core::Clock;
use phoenix_store::{SharedStore, Wakeup};

use crate::config::Config;
use crate::error::ApiError;
use crate::service::{Service, Timings};
use crate::telemetry::Metrics;
use crate::waiters::Waiters;

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const ENROLLMENT_TOKEN_SETTING: &str = "enrollment_token";

#[derive(Debug, Clone)]
pub struct AppState {
    pub service: Arc<Service>,
    pub metrics: Arc<Metrics>,
    pub scrape_lock: Arc<tokio::sync::Mutex<()>>,
    pub config: Arc<Config>,
    /// Users, tokens, API keys, enrollment tokens (crate::auth).
    pub auth: Arc<crate::auth::AuthService>,
    pub limiter: Arc<crate::auth::RateLimiter>,
}

impl AppState {
    /// Build the state over a connected store. Resolves the enrollment token: the configured
    /// one, else the one stored by an earlier start, else a new random one (stored, logged).
    pub async fn new(
        config: Config,
        store: SharedStore,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, phoenix_store::StoreError> {
        let token = match &config.enrollment_token {
            Some(t) => t.clone(),
            None => match store.get_setting(ENROLLMENT_TOKEN_SETTING).await? {
                Some(serde_json::Value::String(t)) => t,
                _ => {
                    use rand::RngCore;
                    let mut bytes = [0u8; 24];
                    rand::thread_rng().fill_bytes(&mut bytes);
                    let t = hex::encode(bytes);
                    store
                        .put_setting(ENROLLMENT_TOKEN_SETTING, &serde_json::json!(t), clock.now())
                        .await?;
                    tracing::warn!(
                        enrollment_token = %t,
                        "no enrollment_token configured: generated one and stored it; agents enroll with it"
                    );
                    t
                }
            },
        };
        let timings = Timings {
            long_poll_max: config.long_poll_max,
            task_lease: config.task_lease,
            heartbeat_interval: config.agent_heartbeat_interval,
            offline_after: config.agent_offline_after,
            claim_batch_max: config.claim_batch_max,
            experiment_start_timeout: config.experiment_start_timeout,
        };
        let auth = crate::auth::AuthService::new(
            store.clone(),
            clock.clone(),
            crate::auth::AuthSettings {
                jwt_secret: config.jwt_secret.clone(),
                access_ttl: config.access_token_ttl,
                refresh_ttl: config.refresh_token_ttl,
            },
        )
        .await?;
        bootstrap_admin(&auth, &config).await?;
        let limiter = crate::auth::RateLimiter::new(config.rate_limits());
        let service = Service::new(store, clock, Arc::new(Waiters::default()), timings, token);
        let mut metrics = Metrics::new();
        metrics.register_hub(service.events.hub.stats());
        Ok(Self {
            service: Arc::new(service),
            metrics: Arc::new(metrics),
            scrape_lock: Arc::new(tokio::sync::Mutex::new(())),
            config: Arc::new(config),
            auth: Arc::new(auth),
            limiter: Arc::new(limiter),
        })
    }
}

pub fn router(state: AppState) -> Router {
    // Every route comes from the one table, wrapped in the guard its access level names.
    let mut api = Router::new();
    for spec in crate::route_table::ROUTES {
        let guard =
            axum::middleware::from_fn_with_state((state.clone(), spec.access), crate::auth::guard);
        api = api.route(spec.path, (spec.handler)(&state).layer(guard));
    }
    // `route_layer` below counts matched routes only; the fallback counts itself (as
    // `route="unmatched"`), so a scanner's 404s show on `/metrics` too.
    let unmatched = axum::handler::Handler::layer(
        not_found,
        axum::middleware::from_fn_with_state(state.metrics.clone(), crate::telemetry::track_http),
    );
    let api = api
        .fallback(unmatched)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.config.body_limit_bytes))
        .route_layer(axum::middleware::from_fn_with_state(
            state.metrics.clone(),
            crate::telemetry::track_http,
        ));

    api.with_state(state)
        .layer(CatchPanicLayer::custom(panic_response))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(|req: &Request<_>| {
                    let request_id = req
                        .headers()
                        .get(REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        method = %req.method(),
                        path = %req.uri().path(),
                        request_id = %request_id,
                    )
                })
                .on_request(())
                .on_response(|res: &Response<_>, latency: Duration, _span: &Span| {
                    let status = res.status().as_u16();
                    let ms = latency.as_secs_f64() * 1000.0;
                    if status >= 500 {
                        tracing::error!(status, latency_ms = ms, "request failed");
                    } else if status >= 400 {
                        tracing::info!(status, latency_ms = ms, "request refused");
                    } else {
                        tracing::debug!(status, latency_ms = ms, "request served");
                    }
                })
                .on_failure(()),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no route for {}", uri.path()),
    )
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

fn panic_response(_err: Box<dyn std::any::Any + Send + 'static>) -> axum::response::Response {
    tracing::error!("handler panicked");
    axum::response::IntoResponse::into_response(ApiError::internal(
        "internal error; the request id in x-request-id finds it in the server logs",
    ))
}

/// The loops that keep the queue moving. They stop when `shutdown` is cancelled.
pub fn spawn_background(
    state: &AppState,
    shutdown: tokio_util::sync::CancellationToken,
) -> Vec<JoinHandle<()>> {
    let mut handles = Vec::new();

    // Lapsed leases back to the queue; delayed tasks announced when due.
    let svc = state.service.clone();
    let every = state.config.lease_check_interval;
    let stop = shutdown.clone();
    handles.push(tokio::spawn(async move {
        let mut last = svc.clock.now();
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            match svc.tick_queue(last).await {
                Ok(now) => last = now,
                Err(e) => tracing::warn!(error = %e, "queue tick failed; retrying"),
            }
        }
    }));

    // Experiments: analyses, ends of runs, starts that time out.
    let svc = state.service.clone();
    let every = state.config.analysis_tick_interval;
    let stop = shutdown.clone();
    let runner = format!(
        "{}:{}:{}",
        hostname(),
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    handles.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            if let Err(e) = svc.analysis_tick(&runner).await {
                tracing::warn!(error = %e, "analysis tick failed; retrying");
            }
        }
    }));

    // Retention.
    let svc = state.service.clone();
    let task_retention = state.config.task_retention;
    let telemetry_retention = state.config.telemetry_retention;
    let stop = shutdown.clone();
    handles.push(tokio::spawn(async move {
        let mut ticker = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let now = svc.clock.now();
            let tasks_before = now - chrono::Duration::from_std(task_retention).unwrap_or_default();
            let tel_before =
                now - chrono::Duration::from_std(telemetry_retention).unwrap_or_default();
            match svc.store.sweep_finished_tasks(tasks_before).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "swept finished tasks"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "task retention sweep failed"),
            }
            match svc.store.sweep_telemetry(tel_before).await {
                Ok(n) if n > 0 => tracing::info!(deleted = n, "swept old telemetry"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "telemetry retention sweep failed"),
            }
        }
    }));

    // The real-time hub: other replicas' events, KPI summaries, fleet presence, retention.
    handles.extend(crate::ws::publish::spawn_background(
        state,
        shutdown.clone(),
    ));

    // Wake-ups from other replicas (PostgreSQL LISTEN/NOTIFY).
    let svc = state.service.clone();
    let stop = shutdown;
    handles.push(tokio::spawn(async move {
        let stream = match svc.store.wakeups().await {
            Ok(Some(s)) => s,
            Ok(None) => return,
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for cross-replica wake-ups");
                return;
            }
        };
        tokio::pin!(stream);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                next = stream.next() => match next {
                    Some(Wakeup::AgentChanged(host)) => {
                        svc.forget_agent_credentials(Some(&host));
                    }
                    Some(w) => {
                        if w == Wakeup::Resync {
                            svc.forget_agent_credentials(None);
                        }
                        svc.waiters.wake(&w);
                    }
                    None => {
                        tracing::error!("wake-up stream ended");
                        break;
                    }
                },
            }
        }
    }));
    handles
}

/// The first admin, when the database has no user: `admin_password` from the configuration,
/// else a random one printed once (stderr and the log).
async fn bootstrap_admin(
    auth: &crate::auth::AuthService,
    config: &Config,
) -> Result<(), phoenix_store::StoreError> {
    use crate::auth::{AuthError, Bootstrap};
    let outcome = auth
        .bootstrap_admin(&config.admin_username, config.admin_password.as_deref())
        .await
        .map_err(|e| match e {
            AuthError::Store(s) => s,
            other => phoenix_store::StoreError::Unavailable(format!(
                "cannot create the first admin: {other}"
            )),
        })?;
    if let Bootstrap::Created {
        username,
        generated_password,
    } = outcome
    {
        match generated_password {
            Some(password) => {
                tracing::warn!(
                    username = %username,
                    password = %password,
                    "no user existed and no admin_password is configured: created the first admin with this one-time password; change it (PATCH /api/v1/users/{{id}})"
                );
                eprintln!(
                    "phoenix-api: created the first admin `{username}` with password `{password}` (shown once)"
                );
            }
            None => {
                tracing::info!(username = %username, "created the first admin from admin_password")
            }
        }
    }
    Ok(())
}

/// Create the sample experiment the README's first command promises, unless one exists.
pub async fn seed_demo(
    state: &AppState,
) -> Result<Option<phoenix_core::Experiment>, crate::service::ServiceError> {
    let existing = state
        .service
        .list_experiments(&phoenix_store::ExperimentQuery {
            limit: 1,
            ..Default::default()
        })
        .await?;
    if existing.total > 0 {
        return Ok(None);
    }
    let new: phoenix_core::NewExperiment = serde_json::from_value(serde_json::json!({
        "name": "demo: baseline vs adaptive",
        "description": "Sample experiment created by --seed-demo: the adaptive template against the unreduced baseline on three local agents.",
        "baseline_pipeline": "baseline",
        "candidate_pipeline": "adaptive",
        "target_hosts": ["demo-agent-1", "demo-agent-2", "demo-agent-3"],
        "duration_seconds": 600,
        "parameters": { "series_budget": 20000 },
        "owner": "demo"
    }))
    .map_err(|e| {
        let mut f = phoenix_core::FieldErrors::default();
        f.push("demo", e.to_string());
        f
    })?;
    Ok(Some(state.service.create_experiment(new).await?))
}

/// This machine's name, for telling API replicas apart in analysis records.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "phoenix-api".into())
}
