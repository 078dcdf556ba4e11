//! Pipeline deployments: a template (or literal pipeline) made live on hosts outside any
//! experiment, each host's progress read from its `deployment` task; withdrawing sends the
//! hosts the `baseline` pipeline back.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use phoenix_core::{
    DeploymentId, DeploymentStatus, HostId, NewPipelineDeployment, NewTask, PipelineDeployment,
    TaskId, TaskType,
};
use phoenix_store::{Page, StoreError};

use crate::service::{priority, Service, ServiceError, ServiceResult};

/// Where one host is with a deployment.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct HostProgress {
    pub host_id: HostId,
    pub task_id: TaskId,
    /// The task's status (`pending`, `assigned`, `running`, `completed`, `failed`), or
    /// `unknown` when the task is gone (swept after its retention).
    pub status: String,
    pub error: Option<String>,
}

/// A deployment with its hosts' progress.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DeploymentView {
    #[serde(flatten)]
    pub deployment: PipelineDeployment,
    /// Per host, the task of the current state: the deployment's, or the withdrawal's.
    pub hosts: Vec<HostProgress>,
    /// Hosts per task status.
    pub by_status: BTreeMap<String, u64>,
}

impl Service {
    /// Enrolled, unrevoked agents whose labels hold every pair of `selector`, except those
    /// in `exclude`.
    pub(crate) async fn agents_matching(
        &self,
        selector: &BTreeMap<String, String>,
        exclude: &[HostId],
    ) -> ServiceResult<Vec<HostId>> {
        if selector.is_empty() {
            return Ok(Vec::new());
        }
        let excluded: HashSet<&HostId> = exclude.iter().collect();
        Ok(self
            .store
            .list_agents()
            .await?
            .into_iter()
            .filter(|a| {
                !a.revoked
                    && !excluded.contains(&a.host_id)
                    && selector.iter().all(|(k, v)| a.labels.get(k) == Some(v))
            })
            .map(|a| a.host_id)
            .collect())
    }

    pub async fn create_deployment(
        &self,
        new: NewPipelineDeployment,
    ) -> ServiceResult<DeploymentView> {
        new.validate()?;
        // The very text the agents will run must render and validate here first.
        let user = self.latest_user_templates().await?;
        if let Err(e) =
            phoenix_pipeline::templates::resolve_in(&new.pipeline, &new.parameters, &user)
        {
            return Err(crate::templates::template_field_errors("pipeline", &e).into());
        }
        let mut hosts = new.target_hosts.clone();
        hosts.extend(
            self.agents_matching(&new.target_selector, &new.target_hosts)
                .await?,
        );
        if hosts.is_empty() {
            return Err(ServiceError::Conflict {
                code: "no_targets",
                message: "target_selector matches no enrolled agent and target_hosts is empty: nothing to deploy to".into(),
            });
        }
        let now = self.clock.now();
        let mut d = PipelineDeployment {
            id: DeploymentId::new(),
            name: new.name,
            pipeline: new.pipeline,
            parameters: new.parameters,
            target_hosts: hosts,
            target_selector: new.target_selector,
            status: DeploymentStatus::Active,
            tasks: BTreeMap::new(),
            withdraw_tasks: BTreeMap::new(),
            created_at: now,
            updated_at: now,
        };
        // Recorded before its tasks, so no task is ever sent for a deployment nobody can see.
        self.store.save_pipeline_deployment(&d).await?;
        let pipeline = self
            .materialize_pipeline(&d.pipeline, &d.parameters)
            .await?;
        d.tasks = self
            .send_pipeline(&d, &pipeline, &d.parameters, "deploy")
            .await?;
        self.store.save_pipeline_deployment(&d).await?;
        self.deployment_view(d).await
    }

    /// One `deployment` task per host making `pipeline` live; the ids by host.
    async fn send_pipeline(
        &self,
        d: &PipelineDeployment,
        pipeline: &str,
        parameters: &serde_json::Value,
        step: &str,
    ) -> ServiceResult<BTreeMap<HostId, TaskId>> {
        let tasks: Vec<NewTask> = d
            .target_hosts
            .iter()
            .map(|host| {
                let mut t = NewTask::new(
                    TaskType::Deployment,
                    json!({ "pipeline": pipeline, "parameters": parameters, "deployment_id": d.id }),
                )
                .for_host(host.clone());
                t.priority = priority::START + 1;
                t.idempotency_key = Some(format!("pipeline-deployment:{}:{step}:{host}", d.id));
                t
            })
            .collect();
        let outcomes = self.store.enqueue_tasks(&tasks, self.clock.now()).await?;
        let mut ids = BTreeMap::new();
        for (host, outcome) in d.target_hosts.iter().zip(outcomes) {
            let enqueued = outcome?;
            if enqueued.created {
                self.waiters.wake_for(Some(host));
            }
            ids.insert(host.clone(), enqueued.task.id);
        }
        Ok(ids)
    }

    pub async fn get_deployment(&self, id: DeploymentId) -> ServiceResult<DeploymentView> {
        let d = self.store.get_pipeline_deployment(id).await?;
        self.deployment_view(d).await
    }

    pub async fn list_deployments(
        &self,
        limit: u32,
        offset: u64,
    ) -> ServiceResult<Page<PipelineDeployment>> {
        Ok(self.store.list_pipeline_deployments(limit, offset).await?)
    }

    /// Sends every host the `baseline` pipeline (no reduction) back. Withdrawing twice
    /// changes nothing.
    pub async fn withdraw_deployment(&self, id: DeploymentId) -> ServiceResult<DeploymentView> {
        let mut d = self.store.get_pipeline_deployment(id).await?;
        if d.status == DeploymentStatus::Active {
            d.withdraw_tasks = self
                .send_pipeline(&d, "baseline", &json!({}), "withdraw")
                .await?;
            d.status = DeploymentStatus::Withdrawn;
            d.updated_at = self.clock.now();
            self.store.save_pipeline_deployment(&d).await?;
        }
        self.deployment_view(d).await
    }

    async fn deployment_view(&self, d: PipelineDeployment) -> ServiceResult<DeploymentView> {
        let current = match d.status {
            DeploymentStatus::Active => &d.tasks,
            DeploymentStatus::Withdrawn => &d.withdraw_tasks,
        };
        let mut hosts = Vec::with_capacity(current.len());
        let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
        for (host, task_id) in current {
            let (status, error) = match self.store.get_task(*task_id).await {
                Ok(t) => (t.status.to_string(), t.error),
                Err(StoreError::NotFound { .. }) => ("unknown".to_string(), None),
                Err(e) => return Err(e.into()),
            };
            *by_status.entry(status.clone()).or_default() += 1;
            hosts.push(HostProgress {
                host_id: host.clone(),
                task_id: *task_id,
                status,
                error,
            });
        }
        Ok(DeploymentView {
            deployment: d,
            hosts,
            by_status,
        })
    }
}
