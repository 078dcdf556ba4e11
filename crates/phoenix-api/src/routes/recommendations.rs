//! `/api/v1/metrics/cardinality`, `/api/v1/metrics/cost-flow` (also `/api/v1/cost-flow`),
//! `/api/v1/recommendations` and `/api/v1/recommendations/{id}/experiment`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use phoenix_core::{Experiment, ExperimentId, HostId};

use crate::app::AppState;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::{ApiPath, ApiQuery, OptionalJson};
use crate::recommendations::{
    CardinalityReport, CostFlow, Filter, RecommendationExperimentRequest, RecommendationList,
};
use crate::routes::page_limit;

/// Longest filter value accepted.
const MAX_FILTER_LEN: usize = 256;

fn filter_value(name: &str, v: Option<String>) -> Result<Option<String>, ApiError> {
    match v {
        Some(v) if v.len() > MAX_FILTER_LEN => Err(ApiError::invalid_field(
            format!("query.{name}"),
            format!("must be at most {MAX_FILTER_LEN} bytes"),
        )),
        Some(v) if v.is_empty() && name == "metric" => {
            Err(ApiError::invalid_field("query.metric", "must not be empty"))
        }
        v => Ok(v),
    }
}

fn host_filter(v: Option<String>) -> Result<Option<HostId>, ApiError> {
    v.map(|h| HostId::parse(&h).map_err(|e| ApiError::invalid_field("query.host", e.to_string())))
        .transpose()
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CardinalityParams {
    /// Only series of this namespace (`""`: series without one).
    pub namespace: Option<String>,
    /// Only series of this service.
    pub service: Option<String>,
    /// Only this metric.
    pub metric: Option<String>,
    /// Only this host's report.
    pub host: Option<String>,
    /// Metrics (and namespace/service rows) listed, 1–500 (default 50).
    pub limit: Option<u32>,
}

impl CardinalityParams {
    fn filter(self) -> Result<(Filter, u32), ApiError> {
        Ok((
            Filter {
                namespace: filter_value("namespace", self.namespace)?,
                service: filter_value("service", self.service)?,
                metric: filter_value("metric", self.metric)?,
                host: host_filter(self.host)?,
            },
            page_limit(self.limit)?,
        ))
    }
}

#[utoipa::path(get, path = "/api/v1/metrics/cardinality", tag = "recommendations",
    params(CardinalityParams),
    responses(
        (status = 200, description = "series by namespace, service, metric and label from every host's latest label statistics (HyperLogLog sketches merged across hosts, series summed), largest first", body = CardinalityReport),
        (status = 400, description = "bad query parameter (named)", body = ErrorBody),
    ))]
pub async fn cardinality(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<CardinalityParams>,
) -> ApiResult<Json<CardinalityReport>> {
    let (filter, limit) = p.filter()?;
    Ok(Json(s.service.cardinality(&filter, limit).await?))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CostFlowParams {
    /// Pricing preset (default: the first one; see `/api/v1/cost/presets`).
    pub preset: Option<String>,
    /// Price the reduction of this experiment's candidate instead of the live pipelines.
    pub experiment_id: Option<String>,
    pub namespace: Option<String>,
    pub service: Option<String>,
    pub metric: Option<String>,
    pub host: Option<String>,
    /// Metric nodes drawn, 1–500 (default 50); smaller metrics flow through `metric:(other)`.
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/metrics/cost-flow", tag = "recommendations",
    params(CostFlowParams),
    responses(
        (status = 200, description = "Sankey nodes and links: namespace → service → metric → kept/reduced, in series and monthly cost", body = CostFlow),
        (status = 400, description = "bad query parameter (named), unknown preset", body = ErrorBody),
        (status = 404, description = "unknown experiment", body = ErrorBody),
    ))]
pub async fn cost_flow(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<CostFlowParams>,
) -> ApiResult<Json<CostFlow>> {
    let experiment_id: Option<ExperimentId> = p
        .experiment_id
        .as_deref()
        .map(|id| {
            id.parse::<ExperimentId>()
                .map_err(|e| ApiError::invalid_field("query.experiment_id", e.to_string()))
        })
        .transpose()?;
    let filter = Filter {
        namespace: filter_value("namespace", p.namespace)?,
        service: filter_value("service", p.service)?,
        metric: filter_value("metric", p.metric)?,
        host: host_filter(p.host)?,
    };
    let limit = page_limit(p.limit)?;
    let preset = filter_value("preset", p.preset)?;
    Ok(Json(
        s.service
            .cost_flow(&filter, preset.as_deref(), experiment_id, limit)
            .await?,
    ))
}

/// The same as `/api/v1/metrics/cost-flow`.
#[utoipa::path(get, path = "/api/v1/cost-flow", tag = "recommendations",
    params(CostFlowParams),
    responses(
        (status = 200, body = CostFlow),
        (status = 400, description = "bad query parameter (named), unknown preset", body = ErrorBody),
        (status = 404, description = "unknown experiment", body = ErrorBody),
    ))]
pub async fn cost_flow_alias(
    state: State<AppState>,
    query: ApiQuery<CostFlowParams>,
) -> ApiResult<Json<CostFlow>> {
    cost_flow(state, query).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecommendationParams {
    /// Only recommendations for this metric.
    pub metric: Option<String>,
    /// Pricing preset of the savings (default: the first one).
    pub preset: Option<String>,
    /// 1–500 (default 50).
    pub limit: Option<u32>,
}

#[utoipa::path(get, path = "/api/v1/recommendations", tag = "recommendations",
    params(RecommendationParams),
    responses(
        (status = 200, description = "aggregations and drops ranked by estimated series saved, then monthly savings; never a label an uploaded query uses or a protected series", body = RecommendationList),
        (status = 400, description = "bad query parameter (named), unknown preset", body = ErrorBody),
    ))]
pub async fn list(
    State(s): State<AppState>,
    ApiQuery(p): ApiQuery<RecommendationParams>,
) -> ApiResult<Json<RecommendationList>> {
    let limit = page_limit(p.limit)?;
    let metric = filter_value("metric", p.metric)?;
    let preset = filter_value("preset", p.preset)?;
    Ok(Json(
        s.service
            .recommendations(metric.as_deref(), preset.as_deref(), limit)
            .await?,
    ))
}

#[utoipa::path(post, path = "/api/v1/recommendations/{id}/experiment", tag = "recommendations",
    params(("id" = String, Path, description = "recommendation id, e.g. `rec-0123456789abcdef`")),
    request_body(content = Option<RecommendationExperimentRequest>, description = "optional: name, duration_seconds, owner"),
    responses(
        (status = 201, description = "the experiment testing it, created (pending, not started): baseline template vs a candidate applying the recommendation, on the hosts that reported the metric", body = Experiment),
        (status = 400, description = "malformed id or invalid field", body = ErrorBody),
        (status = 404, description = "no such recommendation (now)", body = ErrorBody),
    ))]
pub async fn experiment(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    OptionalJson(body): OptionalJson<RecommendationExperimentRequest>,
) -> ApiResult<impl IntoResponse> {
    let well_formed =
        id.len() == 20 && id.starts_with("rec-") && id[4..].bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed {
        return Err(ApiError::invalid_field(
            "path.id",
            "must look like rec-0123456789abcdef",
        ));
    }
    let exp = s
        .service
        .recommendation_experiment(&id, body.unwrap_or_default())
        .await?;
    Ok((StatusCode::CREATED, Json(exp)))
}
