//! The gRPC handlers. Each is the same steps: parse the request into domain
//! types, check readiness, call the domain, convert the result.

use std::{sync::Arc, time::Duration};

use sqlx::PgPool;
use tokio::sync::mpsc;
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use uuid::Uuid;

use axum::extract::FromRef;

use super::{
    auth::{self, Authenticator, require_admin},
    caller::Caller,
    convert,
    limits::Limits,
    shares::Share,
    status::ApiError,
    wire::WireLimits,
};
use crate::{
    backlog::Backlog,
    db::bounded,
    health::Health,
    jobs::{self, JobView, fields::FieldError, fields::parse_uuid},
    metrics::Metrics,
    proto::{self, translation_job_service_server::TranslationJobService},
    queue::RedisQueue,
    stats,
    wake::Wake,
    watch::{self, WatchHub},
};

/// Messages buffered per watch stream before the sender waits for the client.
const WATCH_BUFFER: usize = 4;

/// A watch stream's states, as its client receives them. The channel
/// carries them boxed: tokio's channel allocates its slots 32 at a time
/// whatever its bound, and 32 slots of a job (368 bytes) were 12 KiB per
/// stream; 32 boxes are 256 bytes.
pub struct WatchStates<T>(ReceiverStream<Box<T>>);

impl<T> WatchStates<T> {
    pub fn new(receiver: mpsc::Receiver<Box<T>>) -> Self {
        Self(ReceiverStream::new(receiver))
    }
}

impl<T> Stream for WatchStates<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        std::pin::Pin::new(&mut self.0)
            .poll_next(cx)
            .map(|state| state.map(|boxed| *boxed))
    }
}

/// What the handlers need.
#[derive(Clone)]
pub struct ApiDeps {
    pub pool: PgPool,
    pub queue: RedisQueue,
    pub health: Health,
    pub wake: Wake,
    /// Wakes this process's scheduler (a create with a `schedule_time`).
    pub schedule_wake: Wake,
    pub metrics: Arc<Metrics>,
    pub backlog: Arc<Backlog>,
    /// Where creates go: grouped into shared commits.
    pub creates: jobs::GroupCommit,
    pub hub: WatchHub,
    /// Ends the watch streams at shutdown.
    pub shutdown: CancellationToken,
    /// What a create request is checked against and completed with.
    pub create_rules: convert::CreateRules,
    pub max_batch_size: usize,
    /// Longest any one database call of a handler may take.
    pub call_timeout: Duration,
    /// Checks every call's bearer token (or, running open, reads x-user-id).
    pub auth: Authenticator,
    /// Calls in flight and open watch streams.
    pub limits: Limits,
}

/// The job service. Also backs the HTTP JSON endpoints.
#[derive(Clone)]
pub struct JobsApi {
    deps: Arc<ApiDeps>,
}

/// The HTTP job routes check their callers with the service's
/// [`Authenticator`] (see `auth`'s extractor of `Caller`).
impl FromRef<JobsApi> for Authenticator {
    fn from_ref(api: &JobsApi) -> Self {
        api.authenticator().clone()
    }
}

impl JobsApi {
    pub fn new(deps: ApiDeps) -> Self {
        Self {
            deps: Arc::new(deps),
        }
    }

    /// The check of the HTTP routes (the gRPC service has its interceptor).
    pub fn authenticator(&self) -> &Authenticator {
        &self.deps.auth
    }

    /// What the counts of a request's repeated fields are held to before
    /// it is decoded (see `wire`).
    pub fn wire_limits(&self) -> WireLimits {
        WireLimits {
            max_subtasks: self.deps.create_rules.max_subtasks,
            max_batch: self.deps.max_batch_size,
        }
    }

    /// The limits the HTTP routes share with the gRPC service.
    pub fn limits(&self) -> &Limits {
        &self.deps.limits
    }

    /// The caller's share of the calls in flight (fair shares), held until
    /// the call ends. Counted only with authentication on: without it an
    /// identity is whatever the caller says.
    fn share(&self, caller: &Caller) -> Result<Option<Share>, ApiError> {
        if self.deps.auth.is_open() {
            return Ok(None);
        }
        Ok(Some(
            self.deps.limits.try_caller_call(caller.user_id.as_str())?,
        ))
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
        caller: Caller,
        request: proto::CreateTranslationJobRequest,
    ) -> Result<(proto::TranslationJob, bool), ApiError> {
        let _share = self.share(&caller)?;
        let mut new = convert::new_job(caller.user_id, request, &self.deps.create_rules)?;
        new.traceparent = caller.traceparent;
        self.ensure_ready()?;
        self.deps.backlog.admit(1).await?;
        let created = self.deps.creates.create(new).await?;
        if created.replayed {
            self.deps.metrics.job_replayed();
        } else {
            self.deps.metrics.job_created(created.job.priority.as_str());
            // The row is committed: let this process's relay publish it now,
            // or its scheduler look at the new due time.
            if created.job.scheduled_at.is_some() {
                self.deps.schedule_wake.wake();
            } else {
                self.deps.wake.wake();
            }
        }
        Ok((convert::job_to_proto(&created.job), created.replayed))
    }

    /// The read path shared by gRPC and HTTP. Another caller's job is
    /// NOT_FOUND.
    pub async fn get(
        &self,
        caller: &Caller,
        id: &str,
        view: JobView,
    ) -> Result<proto::TranslationJob, ApiError> {
        let _share = self.share(caller)?;
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let (pool, scope) = (&self.deps.pool, &caller.scope);
        Ok(match view {
            JobView::Full => {
                let job = bounded(self.deps.call_timeout, jobs::get_job(pool, id, scope)).await?;
                convert::job_to_proto(&job)
            }
            JobView::Basic => {
                let (job, counts) =
                    bounded(self.deps.call_timeout, jobs::get_job_basic(pool, id, scope)).await?;
                convert::job_summary_to_proto(&job, counts)
            }
        })
    }

    /// Cancel, shared by gRPC and HTTP.
    pub async fn cancel(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<proto::TranslationJob, ApiError> {
        let _share = self.share(caller)?;
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let job = bounded(
            self.deps.call_timeout,
            jobs::cancel_job(&self.deps.pool, id, &caller.scope),
        )
        .await?;
        Ok(convert::job_to_proto(&job))
    }

    /// Retry, shared by gRPC and HTTP.
    pub async fn retry(
        &self,
        caller: &Caller,
        id: &str,
    ) -> Result<proto::TranslationJob, ApiError> {
        let _share = self.share(caller)?;
        let id = parse_uuid("id", id)?;
        self.ensure_ready()?;
        let job = bounded(
            self.deps.call_timeout,
            jobs::retry_job(&self.deps.pool, id, &caller.scope),
        )
        .await?;
        self.deps.wake.wake();
        Ok(convert::job_to_proto(&job))
    }

    async fn batch_create(
        &self,
        caller: Caller,
        request: proto::BatchCreateTranslationJobsRequest,
    ) -> Result<Vec<proto::TranslationJob>, ApiError> {
        let _share = self.share(&caller)?;
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
                convert::new_job(caller.user_id.clone(), item, &self.deps.create_rules)
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
        let mut fresh = 0;
        for job in created.iter().filter(|c| !c.replayed) {
            self.deps.metrics.job_created(job.job.priority.as_str());
            fresh += 1;
        }
        if fresh > 0 {
            self.deps.wake.wake();
        }
        if created.iter().any(|c| c.job.scheduled_at.is_some()) {
            self.deps.schedule_wake.wake();
        }
        Ok(created
            .iter()
            .map(|c| convert::job_to_proto(&c.job))
            .collect())
    }

    /// Queue statistics, shared by gRPC and HTTP. Admins only.
    pub async fn queue_stats(&self, caller: &Caller) -> Result<stats::QueueStats, ApiError> {
        let _share = self.share(caller)?;
        require_admin(caller, "GetQueueStats")?;
        self.ensure_ready()?;
        stats::read_stats(
            &self.deps.pool,
            &self.deps.queue,
            self.deps.backlog.limit(),
            self.deps.call_timeout,
        )
        .await
        .map_err(|error| ApiError::Job(jobs::JobError::Database(error)))
    }

    /// One page of the caller's jobs (all jobs for an admin), shared by
    /// gRPC and HTTP.
    pub async fn list(
        &self,
        caller: &Caller,
        request: &proto::ListTranslationJobsRequest,
    ) -> Result<proto::ListTranslationJobsResponse, ApiError> {
        let _share = self.share(caller)?;
        let query = convert::list_query(request)?;
        self.ensure_ready()?;
        let page = bounded(
            self.deps.call_timeout,
            jobs::list_jobs(&self.deps.pool, &query, &caller.scope),
        )
        .await?;
        let next_page_token = match (page.more, page.jobs.last()) {
            (true, Some(last)) => convert::page_token(last.id, &query),
            _ => String::new(),
        };
        let jobs = page
            .jobs
            .iter()
            .map(|job| match query.view {
                JobView::Full => convert::job_to_proto(job),
                JobView::Basic => convert::job_summary_to_proto(
                    job,
                    page.counts.get(&job.id).copied().unwrap_or_default(),
                ),
            })
            .collect();
        Ok(proto::ListTranslationJobsResponse {
            jobs,
            next_page_token,
        })
    }

    /// Dead-letter redrive, shared by gRPC and HTTP. Admins only.
    pub async fn redrive(
        &self,
        caller: &Caller,
        request: &proto::RedriveDeadLettersRequest,
    ) -> Result<proto::RedriveDeadLettersResponse, ApiError> {
        let _share = self.share(caller)?;
        require_admin(caller, "RedriveDeadLetters")?;
        let limit = usize::try_from(request.limit)
            .map_err(|_| FieldError::new("limit", "must not be negative"))?;
        self.ensure_ready()?;
        let redriven = jobs::redrive_dead_letters(
            &self.deps.pool,
            &self.deps.queue,
            limit,
            self.deps.call_timeout,
        )
        .await?;
        if !redriven.jobs.is_empty() {
            self.deps.wake.wake();
        }
        Ok(convert::redriven_to_proto(&redriven))
    }

    /// A watch stream, shared by gRPC (WatchTranslationJob) and HTTP
    /// (server-sent events): the job's state, then one item per change,
    /// until a final status, the receiver is dropped or the service stops
    /// (then the channel closes). `item` turns each state, or a failed read
    /// of the job, into the stream's item. Counted under the watch-stream
    /// limits (and the caller's share of them, with authentication on)
    /// until it ends. Another caller's job is NOT_FOUND.
    pub async fn watch<T: Send + 'static>(
        &self,
        caller: &Caller,
        id: &str,
        item: impl Fn(Result<&jobs::Job, jobs::JobError>) -> T + Send + 'static,
    ) -> Result<WatchStates<T>, ApiError> {
        let id: Uuid = parse_uuid("id", id)?;
        self.ensure_ready()?;
        // Held until the stream ends: a place among all streams, and the
        // caller's share of them (with authentication on).
        let caller_share = if self.deps.auth.is_open() {
            None
        } else {
            Some(self.deps.limits.try_caller_watch(caller.user_id.as_str())?)
        };
        let stream_permit = self.deps.limits.try_watch()?;
        // Subscribes first (recording the job in watched_jobs, so that its
        // changes are notified from then on), then reads it: a change between
        // the two is not missed, and one the read already holds is
        // recognised by its transaction id and skipped.
        let (subscription, job, snapshot) = bounded(
            self.deps.call_timeout,
            self.deps.hub.open(id, &caller.scope),
        )
        .await?;
        let (sender, receiver) = mpsc::channel(WATCH_BUFFER);
        let follow = watch::follow(
            subscription,
            job,
            snapshot,
            sender,
            move |state| Box::new(item(state)),
            self.deps.shutdown.clone(),
        );
        tokio::spawn(async move {
            follow.await;
            drop(stream_permit);
            drop(caller_share);
        });
        Ok(WatchStates::new(receiver))
    }
}

#[tonic::async_trait]
impl TranslationJobService for JobsApi {
    async fn create_translation_job(
        &self,
        request: Request<proto::CreateTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let caller = auth::grpc_caller(&request)?;
        let (job, _replayed) = self.create(caller, request.into_inner()).await?;
        Ok(Response::new(job))
    }

    async fn get_translation_job(
        &self,
        request: Request<proto::GetTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let caller = auth::grpc_caller(&request)?;
        let request = request.get_ref();
        let view = convert::job_view(request.view, JobView::Full).map_err(ApiError::from)?;
        let job = self.get(&caller, &request.id, view).await?;
        Ok(Response::new(job))
    }

    async fn list_translation_jobs(
        &self,
        request: Request<proto::ListTranslationJobsRequest>,
    ) -> Result<Response<proto::ListTranslationJobsResponse>, Status> {
        let caller = auth::grpc_caller(&request)?;
        Ok(Response::new(self.list(&caller, request.get_ref()).await?))
    }

    async fn cancel_translation_job(
        &self,
        request: Request<proto::CancelTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let caller = auth::grpc_caller(&request)?;
        Ok(Response::new(
            self.cancel(&caller, &request.get_ref().id).await?,
        ))
    }

    async fn retry_translation_job(
        &self,
        request: Request<proto::RetryTranslationJobRequest>,
    ) -> Result<Response<proto::TranslationJob>, Status> {
        let caller = auth::grpc_caller(&request)?;
        Ok(Response::new(
            self.retry(&caller, &request.get_ref().id).await?,
        ))
    }

    async fn batch_create_translation_jobs(
        &self,
        request: Request<proto::BatchCreateTranslationJobsRequest>,
    ) -> Result<Response<proto::BatchCreateTranslationJobsResponse>, Status> {
        let caller = auth::grpc_caller(&request)?;
        let jobs = self.batch_create(caller, request.into_inner()).await?;
        Ok(Response::new(proto::BatchCreateTranslationJobsResponse {
            jobs,
        }))
    }

    type WatchTranslationJobStream = WatchStates<Result<proto::TranslationJob, Status>>;

    async fn watch_translation_job(
        &self,
        request: Request<proto::WatchTranslationJobRequest>,
    ) -> Result<Response<Self::WatchTranslationJobStream>, Status> {
        let caller = auth::grpc_caller(&request)?;
        let states = self
            .watch(&caller, &request.get_ref().id, |state| {
                state
                    .map(convert::job_to_proto)
                    .map_err(|error| Status::from(ApiError::from(error)))
            })
            .await?;
        Ok(Response::new(states))
    }

    async fn get_queue_stats(
        &self,
        request: Request<proto::GetQueueStatsRequest>,
    ) -> Result<Response<proto::QueueStats>, Status> {
        let caller = auth::grpc_caller(&request)?;
        let stats = self.queue_stats(&caller).await?;
        Ok(Response::new(convert::stats_to_proto(&stats)))
    }

    async fn redrive_dead_letters(
        &self,
        request: Request<proto::RedriveDeadLettersRequest>,
    ) -> Result<Response<proto::RedriveDeadLettersResponse>, Status> {
        let caller = auth::grpc_caller(&request)?;
        Ok(Response::new(
            self.redrive(&caller, request.get_ref()).await?,
        ))
    }
}
