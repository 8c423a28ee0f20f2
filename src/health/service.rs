//! `grpc.health.v1.Health`, served from the statuses [`super::Health`]
//! publishes. Unlike tonic-health's reporter, its Watch streams end at
//! shutdown: a client doing client-side health checking keeps one open, and
//! an open stream would otherwise hold the server's graceful shutdown for
//! the whole timeout.

use std::{collections::BTreeMap, pin::Pin};

use tokio::sync::{mpsc, watch};
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

pub struct HealthService {
    statuses: watch::Receiver<Statuses>,
    shutdown: CancellationToken,
}

impl HealthService {
    pub fn new(statuses: watch::Receiver<Statuses>, shutdown: CancellationToken) -> Self {
        Self { statuses, shutdown }
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
        let name = request.into_inner().service;
        let mut statuses = self.statuses.clone();
        let shutdown = self.shutdown.clone();
        let (sender, receiver) = mpsc::channel(1);
        tokio::spawn(async move {
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
