//! The gRPC handlers. Each is the same steps: parse the request into domain
//! types, check readiness, call the domain, convert the result.

use std::sync::Arc;

use sqlx::PgPool;
use tonic::{Request, Response, Status};

use super::{
    convert,
    proto::{self, translation_job_service_server::TranslationJobService},
    status::ApiError,
};
use crate::{
    health::Health,
    jobs::{self, fields::parse_uuid},
    metrics::Metrics,
    outbox::RelayWake,
};

/// State shared by the handlers.
#[derive(Clone)]
pub struct JobsApi {
    pool: PgPool,
    health: Health,
    wake: RelayWake,
    metrics: Arc<Metrics>,
    max_subtasks_per_job: usize,
}

impl JobsApi {
    pub fn new(
        pool: PgPool,
        health: Health,
        wake: RelayWake,
        metrics: Arc<Metrics>,
        max_subtasks_per_job: usize,
    ) -> Self {
        Self {
            pool,
            health,
            wake,
            metrics,
            max_subtasks_per_job,
        }
    }

    fn ensure_ready(&self) -> Result<(), ApiError> {
        if self.health.is_ready() {
            Ok(())
        } else {
            Err(ApiError::NotReady)
        }
    }

    /// The create path shared by gRPC and HTTP.
    pub async fn create(
        &self,
        user_id: jobs::fields::UserId,
        request: proto::CreateTranslationJobRequest,
    ) -> Result<(proto::TranslationJob, bool), ApiError> {
        let new = convert::new_job(user_id, request, self.max_subtasks_per_job)?;
        self.ensure_ready()?;
        let created = jobs::create_job(&self.pool, &new).await?;
        if created.replayed {
            self.metrics.job_replayed();
        } else {
            self.metrics.job_created();
            // The row is committed: let this process's relay publish it now.
            self.wake.wake();
        }
        Ok((convert::job_to_proto(&created.job), created.replayed))
    }

    /// The read path shared by gRPC and HTTP.
    pub async fn get(&self, id: &str) -> Result<proto::TranslationJob, ApiError> {
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let job = jobs::get_job(&self.pool, id).await?;
        Ok(convert::job_to_proto(&job))
    }
}

#[tonic::async_trait]
impl TranslationJobService for JobsApi {
    async fn create_translation_job(
        &self,
        request: Request<proto::CreateTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let user_id = convert::user_id(request.metadata()).map_err(ApiError::from)?;
        let (job, _replayed) = self.create(user_id, request.into_inner()).await?;
        Ok(Response::new(job))
    }

    async fn get_translation_job(
        &self,
        request: Request<proto::GetTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let job = self.get(&request.get_ref().id).await?;
        Ok(Response::new(job))
    }
}
