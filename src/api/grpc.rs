//! The gRPC handlers. Each is the same steps: parse the request into domain
//! types, check readiness, call the domain, convert the result.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use super::{
    convert,
    proto::{self, translation_job_service_server::TranslationJobService},
    status::ApiError,
};
use crate::{
    backlog::{Backlog, BacklogError},
    db::bounded,
    health::Health,
    jobs::{self, fields::FieldError, fields::parse_uuid},
    metrics::Metrics,
    queue::{Lane, RedisQueue},
    wake::Wake,
    watch::{self, WatchHub},
};

/// Messages buffered per watch stream before the sender waits for the client.
const WATCH_BUFFER: usize = 4;
/// Longest GetQueueStats waits for Redis before reporting it unreachable.
const STATS_REDIS_TIMEOUT: Duration = Duration::from_secs(1);

/// What the handlers need.
#[derive(Clone)]
pub struct ApiDeps {
    pub pool: PgPool,
    pub queue: RedisQueue,
    pub health: Health,
    pub wake: Wake,
    pub metrics: Arc<Metrics>,
    pub backlog: Arc<Backlog>,
    /// Where creates go: grouped into shared commits.
    pub creates: jobs::GroupCommit,
    pub hub: WatchHub,
    /// Ends the watch streams at shutdown.
    pub shutdown: CancellationToken,
    pub max_subtasks_per_job: usize,
    pub max_batch_size: usize,
    /// Longest any one database call of a handler may take.
    pub call_timeout: Duration,
}

/// The job service. Also backs the HTTP JSON endpoints.
#[derive(Clone)]
pub struct JobsApi {
    deps: Arc<ApiDeps>,
}

impl JobsApi {
    pub fn new(deps: ApiDeps) -> Self {
        Self {
            deps: Arc::new(deps),
        }
    }

    fn ensure_ready(&self) -> Result<(), ApiError> {
        if self.deps.health.is_ready() {
            Ok(())
        } else {
            Err(ApiError::NotReady)
        }
    }

    /// The create path shared by gRPC and HTTP. Returns the job and whether
    /// it was an earlier job returned for a reused request_id.
    pub async fn create(
        &self,
        caller: convert::Caller,
        request: proto::CreateTranslationJobRequest,
    ) -> Result<(proto::TranslationJob, bool), ApiError> {
        let mut new = convert::new_job(caller.user_id, request, self.deps.max_subtasks_per_job)?;
        new.traceparent = caller.traceparent;
        self.ensure_ready()?;
        self.deps.backlog.admit(1).await?;
        let created = self.deps.creates.create(new).await?;
        if created.replayed {
            self.deps.metrics.job_replayed();
        } else {
            self.deps.metrics.job_created();
            // The row is committed: let this process's relay publish it now.
            self.deps.wake.wake();
        }
        Ok((convert::job_to_proto(&created.job), created.replayed))
    }

    /// The read path shared by gRPC and HTTP.
    pub async fn get(&self, id: &str) -> Result<proto::TranslationJob, ApiError> {
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let job = bounded(self.deps.call_timeout, jobs::get_job(&self.deps.pool, id)).await?;
        Ok(convert::job_to_proto(&job))
    }

    /// Cancel, shared by gRPC and HTTP.
    pub async fn cancel(&self, id: &str) -> Result<proto::TranslationJob, ApiError> {
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let job = bounded(
            self.deps.call_timeout,
            jobs::cancel_job(&self.deps.pool, id),
        )
        .await?;
        Ok(convert::job_to_proto(&job))
    }

    /// Retry, shared by gRPC and HTTP.
    pub async fn retry(&self, id: &str) -> Result<proto::TranslationJob, ApiError> {
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let job = bounded(self.deps.call_timeout, jobs::retry_job(&self.deps.pool, id)).await?;
        self.deps.wake.wake();
        Ok(convert::job_to_proto(&job))
    }

    async fn batch_create(
        &self,
        caller: convert::Caller,
        request: proto::BatchCreateTranslationJobsRequest,
    ) -> Result<Vec<proto::TranslationJob>, ApiError> {
        let count = request.requests.len();
        if count == 0 {
            return Err(FieldError::new("requests", "must hold at least one job").into());
        }
        if count > self.deps.max_batch_size {
            return Err(FieldError::new(
                "requests",
                format!(
                    "at most {} jobs per batch, got {count}",
                    self.deps.max_batch_size
                ),
            )
            .into());
        }
        let new_jobs = request
            .requests
            .into_iter()
            .enumerate()
            .map(|(index, item)| {
                convert::new_job(caller.user_id.clone(), item, self.deps.max_subtasks_per_job)
                    .map(|mut new| {
                        new.traceparent = caller.traceparent.clone();
                        new
                    })
                    .map_err(|error| error.within(&format!("requests[{index}].")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        self.ensure_ready()?;
        self.deps.backlog.admit(count as u64).await?;
        let created = bounded(
            self.deps.call_timeout,
            jobs::create_jobs(&self.deps.pool, &new_jobs),
        )
        .await?;
        let fresh = created.iter().filter(|c| !c.replayed).count();
        for _ in 0..fresh {
            self.deps.metrics.job_created();
        }
        if fresh > 0 {
            self.deps.wake.wake();
        }
        Ok(created
            .iter()
            .map(|c| convert::job_to_proto(&c.job))
            .collect())
    }

    async fn queue_stats(&self) -> Result<proto::QueueStats, ApiError> {
        self.ensure_ready()?;
        let (backlog, oldest): (i64, Option<f64>) = bounded(
            self.deps.call_timeout,
            sqlx::query_as(
                "SELECT count(*), extract(epoch FROM now() - min(created_at))::float8 FROM outbox",
            )
            .fetch_one(&self.deps.pool),
        )
        .await
        .map_err(|error| ApiError::Backlog(BacklogError::Database(error)))?;

        let mut stats = proto::QueueStats {
            outbox_backlog: backlog,
            oldest_unpublished_age: oldest.map(|secs| prost_types::Duration {
                seconds: secs.trunc() as i64,
                nanos: (secs.fract() * 1e9) as i32,
            }),
            backlog_limit: i64::try_from(self.deps.backlog.limit()).unwrap_or(i64::MAX),
            ..Default::default()
        };
        let queue = &self.deps.queue;
        let lanes = async {
            let mut lanes = Vec::new();
            for lane in Lane::ALL {
                lanes.push((lane, queue.queue_length(lane).await?));
            }
            let policy = queue.maxmemory_policy().await.unwrap_or_default();
            Ok::<_, crate::queue::QueueError>((lanes, policy))
        };
        let waiting_in_redis = if queue.is_connected() {
            match tokio::time::timeout(STATS_REDIS_TIMEOUT, lanes).await {
                Ok(Ok((lanes, policy))) => {
                    stats.redis_reachable = true;
                    stats.redis_maxmemory_policy = policy;
                    let mut waiting = 0;
                    for (lane, length) in lanes {
                        let length = i64::try_from(length).unwrap_or(i64::MAX);
                        if lane == Lane::Dead {
                            stats.dead_letters = length;
                        } else {
                            waiting += length;
                        }
                        stats.lanes.push(proto::LaneStats {
                            lane: lane.as_str().to_owned(),
                            key: queue.queue().key(lane),
                            length,
                        });
                    }
                    waiting
                }
                _ => 0,
            }
        } else {
            0
        };
        stats.backlog = waiting_in_redis + backlog;
        Ok(stats)
    }
}

#[tonic::async_trait]
impl TranslationJobService for JobsApi {
    async fn create_translation_job(
        &self,
        request: Request<proto::CreateTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let caller = convert::caller(request.metadata()).map_err(ApiError::from)?;
        let (job, _replayed) = self.create(caller, request.into_inner()).await?;
        Ok(Response::new(job))
    }

    async fn get_translation_job(
        &self,
        request: Request<proto::GetTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let job = self.get(&request.get_ref().id).await?;
        Ok(Response::new(job))
    }

    async fn list_translation_jobs(
        &self,
        request: Request<proto::ListTranslationJobsRequest>,
    ) -> Result<Response<proto::ListTranslationJobsResponse>, Status> {
        let query = convert::list_query(request.get_ref()).map_err(ApiError::from)?;
        self.ensure_ready()?;
        let page = bounded(
            self.deps.call_timeout,
            jobs::list_jobs(&self.deps.pool, &query),
        )
        .await
        .map_err(ApiError::from)?;
        let next_page_token = match (page.more, page.jobs.last()) {
            (true, Some(last)) => convert::page_token(last.id, &query),
            _ => String::new(),
        };
        Ok(Response::new(proto::ListTranslationJobsResponse {
            jobs: page.jobs.iter().map(convert::job_to_proto).collect(),
            next_page_token,
        }))
    }

    async fn cancel_translation_job(
        &self,
        request: Request<proto::CancelTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        Ok(Response::new(self.cancel(&request.get_ref().id).await?))
    }

    async fn retry_translation_job(
        &self,
        request: Request<proto::RetryTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        Ok(Response::new(self.retry(&request.get_ref().id).await?))
    }

    async fn batch_create_translation_jobs(
        &self,
        request: Request<proto::BatchCreateTranslationJobsRequest>,
    ) -> Result<Response<proto::BatchCreateTranslationJobsResponse>, Status> {
        let caller = convert::caller(request.metadata()).map_err(ApiError::from)?;
        let jobs = self.batch_create(caller, request.into_inner()).await?;
        Ok(Response::new(proto::BatchCreateTranslationJobsResponse {
            jobs,
        }))
    }

    type WatchTranslationJobStream = ReceiverStream<Result<proto::TranslationJob, Status>>;

    async fn watch_translation_job(
        &self,
        request: Request<proto::WatchTranslationJobRequest>,
    ) -> Result<Response<Self::WatchTranslationJobStream>, Status> {
        let id: Uuid = parse_uuid("id", &request.get_ref().id).map_err(ApiError::from)?;
        self.ensure_ready()?;
        // Subscribe first: a change between the read and the subscription
        // would otherwise be missed (and one the read already holds is
        // recognised by its transaction id and skipped).
        let subscription = self.deps.hub.subscribe(id);
        let (job, snapshot) = bounded(
            self.deps.call_timeout,
            jobs::read_job_with_snapshot(&self.deps.pool, id),
        )
        .await
        .map_err(ApiError::from)?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        tokio::spawn(watch::follow(
            self.deps.pool.clone(),
            subscription,
            job,
            snapshot,
            sender,
            |state| {
                state
                    .map(convert::job_to_proto)
                    .map_err(|error| Status::from(ApiError::from(error)))
            },
            self.deps.shutdown.clone(),
        ));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn get_queue_stats(
        &self,
        _request: Request<proto::GetQueueStatsRequest>,
    ) -> Result<Response<proto::QueueStats>, Status> {
        Ok(Response::new(self.queue_stats().await?))
    }
}
