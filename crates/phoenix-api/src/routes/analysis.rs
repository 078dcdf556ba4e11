//! Experiment KPIs, results and cost; the pricing presets.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use phoenix_core::ExperimentId;

use crate::analysis::{CostAnalysis, CostPresets, KpiReport, ResultsResponse};
use crate::app::AppState;
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{parse_path_id, ApiJson, ApiPath, ApiQuery};

#[utoipa::path(get, path = "/api/v1/experiments/{id}/kpis", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    responses(
        (status = 200, description = "KPIs per variant per analysis interval, summed across hosts, and their summary", body = KpiReport),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn kpis(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<KpiReport>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    Ok(Json(s.service.experiment_kpis(id).await?))
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}/results", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    responses(
        (status = 200, description = "the latest analysis: decision, reasons, effects with confidence intervals, rank test, guardrail table", body = ResultsResponse),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn results(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<ResultsResponse>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    Ok(Json(s.service.experiment_results(id).await?))
}

/// The same as `/results`, under the name seed 004 uses.
#[utoipa::path(get, path = "/api/v1/experiments/{id}/analysis", tag = "experiments",
    params(("id" = String, Path, description = "experiment id (UUID)")),
    responses(
        (status = 200, body = ResultsResponse),
        (status = 400, description = "malformed id", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn analysis(
    state: State<AppState>,
    path: ApiPath<String>,
) -> ApiResult<Json<ResultsResponse>> {
    results(state, path).await
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct CostParams {
    /// Pricing preset name (default: the first preset).
    pub preset: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/experiments/{id}/cost-analysis", tag = "cost",
    params(("id" = String, Path, description = "experiment id (UUID)"), CostParams),
    responses(
        (status = 200, description = "monthly and yearly cost before (baseline) and after (candidate), savings, under every preset", body = CostAnalysis),
        (status = 400, description = "malformed id or unknown preset", body = ErrorBody),
        (status = 404, body = ErrorBody),
    ))]
pub async fn cost_analysis(
    State(s): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(p): ApiQuery<CostParams>,
) -> ApiResult<Json<CostAnalysis>> {
    let id: ExperimentId = parse_path_id("id", &id)?;
    Ok(Json(
        s.service.cost_analysis(id, p.preset.as_deref()).await?,
    ))
}

#[utoipa::path(get, path = "/api/v1/cost/presets", tag = "cost",
    responses((status = 200, body = CostPresets)))]
pub async fn get_presets(State(s): State<AppState>) -> ApiResult<Json<CostPresets>> {
    Ok(Json(CostPresets {
        presets: s.service.cost_presets().await?,
    }))
}

#[utoipa::path(put, path = "/api/v1/cost/presets", tag = "cost",
    request_body = CostPresets,
    responses(
        (status = 200, description = "the presets, replaced as a whole", body = CostPresets),
        (status = 400, description = "invalid preset, named by its path", body = ErrorBody),
        (status = 415, description = "not JSON", body = ErrorBody),
    ))]
pub async fn put_presets(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<CostPresets>,
) -> ApiResult<Json<CostPresets>> {
    Ok(Json(CostPresets {
        presets: s.service.put_cost_presets(body.presets).await?,
    }))
}

#[utoipa::path(post, path = "/api/v1/usage/queries", tag = "usage",
    request_body = crate::usage::UsageUpload,
    responses(
        (status = 200, description = "parsed and stored; replaces an earlier upload of the same source", body = crate::usage::UsageSource),
        (status = 400, description = "unparsable PromQL or rule file, each query named by its path, with the parser's message", body = ErrorBody),
        (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody),
    ))]
pub async fn upload_usage(
    State(s): State<AppState>,
    ApiJson(body): ApiJson<crate::usage::UsageUpload>,
) -> ApiResult<Json<crate::usage::UsageSource>> {
    Ok(Json(s.service.upload_usage(body).await?))
}

#[utoipa::path(get, path = "/api/v1/usage/queries", tag = "usage",
    responses((status = 200, description = "every source and the labels its queries use", body = crate::usage::UsageView)))]
pub async fn usage(State(s): State<AppState>) -> ApiResult<Json<crate::usage::UsageView>> {
    Ok(Json(s.service.usage().await?))
}
