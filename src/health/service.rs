//! `grpc.health.v1.Health`, served from the statuses [`super::Health`]
//! publishes. Unlike tonic-health's reporter, its Watch streams end at
//! shutdown: a client doing client-side health checking keeps one open, and
//! an open stream would otherwise hold the server's graceful shutdown for
//! the whole timeout. Health answers without authentication, so its Watch
//! streams are counted under a cap of their own ([`MAX_WATCH_STREAMS`]):
//! nobody can open them until the process runs out of memory.

use std::{collections::BTreeMap, pin::Pin, sync::Arc};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio_stream::{Stream, wrappers::ReceiverStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tonic_health::pb::{
    HealthCheckRequest, HealthCheckResponse, health_check_response::ServingStatus,
    health_server::Health,
};

/// Serving status per health name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Statuses(BTreeMap<String, bool>);

impl Statuses {
    pub fn new<'a>(entries: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        Self(
            entries
                .into_iter()
                .map(|(name, serving)| (name.to_owned(), serving))
                .collect(),
        )
    }

    fn status(&self, name: &str) -> Option<ServingStatus> {
        self.0.get(name).map(|serving| {
            if *serving {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        })
    }
}

/// Health Watch streams open at once in one process; one more is refused
/// with RESOURCE_EXHAUSTED. Far above what client-side health checking
/// needs (one stream per client connection).
pub const MAX_WATCH_STREAMS: usize = 1024;

pub struct HealthService {
    statuses: watch::Receiver<Statuses>,
    shutdown: CancellationToken,
    /// A place per open Watch stream.
    watch_streams: Arc<Semaphore>,
    watch_limit: usize,
}

impl HealthService {
    pub fn new(statuses: watch::Receiver<Statuses>, shutdown: CancellationToken) -> Self {
        Self::with_watch_limit(statuses, shutdown, MAX_WATCH_STREAMS)
    }

    pub fn with_watch_limit(
        statuses: watch::Receiver<Statuses>,
        shutdown: CancellationToken,
        watch_limit: usize,
    ) -> Self {
        Self {
            statuses,
            shutdown,
            watch_streams: Arc::new(Semaphore::new(watch_limit)),
            watch_limit,
        }
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status.into(),
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let name = &request.get_ref().service;
        match self.statuses.borrow().status(name) {
            Some(status) => Ok(Response::new(response(status))),
            None => Err(Status::not_found(format!(
                "unknown health name {name:?}; known: \"\", readiness, liveness, translation.v1.TranslationJobService"
            ))),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let Ok(place) = self.watch_streams.clone().try_acquire_owned() else {
            return Err(Status::resource_exhausted(format!(
                "{} health Watch streams are open, the most one process keeps; use Check, or retry later",
                self.watch_limit
            )));
        };
        let name = request.into_inner().service;
        let mut statuses = self.statuses.clone();
        let shutdown = self.shutdown.clone();
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
            // Given back when the stream ends.
            let _place = place;
            let mut last = None;
            loop {
                let status = statuses
                    .borrow_and_update()
                    .status(&name)
                    .unwrap_or(ServingStatus::ServiceUnknown);
                if last != Some(status) {
                    last = Some(status);
                    if sender.send(Ok(response(status))).await.is_err() {
                        return;
                    }
                }
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = sender.closed() => return,
                    changed = statuses.changed() => if changed.is_err() { return },
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

#[cfg(test)]
mod tests {
    use tokio_stream::StreamExt;

    use super::*;

    #[tokio::test]
    async fn watch_streams_past_the_cap_are_refused_and_places_come_back() {
        let (_sender, statuses) = watch::channel(Statuses::new([("", true)]));
        let service = HealthService::with_watch_limit(statuses, CancellationToken::new(), 2);
        async fn watch(service: &HealthService) -> Result<Response<WatchStream>, Status> {
            service
                .watch(Request::new(HealthCheckRequest {
                    service: String::new(),
                }))
                .await
        }
        let mut first = watch(&service).await.unwrap().into_inner();
        let _second = watch(&service).await.unwrap();
        let refused = watch(&service).await.err().unwrap();
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            refused.message().contains("health Watch streams"),
            "{refused:?}"
        );
        // The first stream's client goes away: its place comes back.
        assert!(first.next().await.is_some());
        drop(first);
        let mut reopened = None;
        for _ in 0..100 {
            if let Ok(stream) = watch(&service).await {
                reopened = Some(stream);
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(
            reopened.is_some(),
            "the place of a closed stream never came back"
        );
    }
}
