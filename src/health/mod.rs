//! Health: what the service reports to gRPC health checks (Kubernetes'
//! native probes, grpcurl, client-side health checking) and to `/healthz`
//! and `/readyz`.
//!
//! - `liveness`: the process and its background loops are running (see
//!   `supervise`); NOT_SERVING means a restart would help.
//! - `readiness` (also `""` and the service's own name): PostgreSQL answers
//!   (a probe every second on a connection of its own) and the migrations
//!   ran. Redis being down does not count: jobs then wait in the outbox.
//!   NOT_SERVING from the start of shutdown.

pub mod probe;
mod service;

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

pub use probe::run_database_probe;
pub use service::{HealthService, Statuses};
use tokio::sync::watch;

use crate::{proto::translation_job_service_server::SERVICE_NAME, supervise::Liveness};

/// The health name of liveness.
pub const LIVENESS: &str = "liveness";
/// The health name of readiness.
pub const READINESS: &str = "readiness";

#[derive(Default)]
struct Flags {
    database_reachable: AtomicBool,
    migrated: AtomicBool,
    shutting_down: AtomicBool,
    live: AtomicBool,
}

/// The service's health, shared by everything that reports or reads it.
/// Cheap to clone.
#[derive(Clone)]
pub struct Health {
    flags: Arc<Flags>,
    statuses: watch::Sender<Statuses>,
    liveness: Liveness,
}

impl Default for Health {
    fn default() -> Self {
        Self::new()
    }
}

impl Health {
    /// Not ready (PostgreSQL not reached yet), live.
    pub fn new() -> Self {
        let flags = Arc::new(Flags::default());
        flags.live.store(true, Ordering::Release);
        let health = Self {
            flags,
            statuses: watch::channel(Statuses::default()).0,
            liveness: Liveness::new(),
        };
        health.publish();
        health
    }

    /// The registry the background loops beat into.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }

    /// Ready to serve: PostgreSQL reachable and migrated, not shutting down.
    pub fn is_ready(&self) -> bool {
        self.flags.database_reachable.load(Ordering::Acquire)
            && self.flags.migrated.load(Ordering::Acquire)
            && !self.flags.shutting_down.load(Ordering::Acquire)
    }

    pub fn is_live(&self) -> bool {
        self.flags.live.load(Ordering::Acquire)
    }

    /// Whether the last probe reached PostgreSQL.
    pub fn database_reachable(&self) -> bool {
        self.flags.database_reachable.load(Ordering::Acquire)
    }

    pub fn set_database_reachable(&self, reachable: bool) {
        if self
            .flags
            .database_reachable
            .swap(reachable, Ordering::AcqRel)
            != reachable
        {
            if reachable {
                tracing::info!("PostgreSQL reachable");
            } else {
                tracing::warn!(
                    "PostgreSQL unreachable; readiness NOT_SERVING until it answers again"
                );
            }
            self.publish();
        }
    }

    pub fn set_migrated(&self) {
        self.flags.migrated.store(true, Ordering::Release);
        self.publish();
    }

    /// From now on not ready, whatever happens.
    pub fn shutting_down(&self) {
        self.flags.shutting_down.store(true, Ordering::Release);
        self.publish();
    }

    /// Reads the loops' heartbeats into liveness (the probe loop calls it).
    pub fn refresh_liveness(&self) {
        let live = match self.liveness.check() {
            Ok(()) => true,
            Err(reason) => {
                if self.is_live() {
                    tracing::error!(%reason, "liveness NOT_SERVING");
                }
                false
            }
        };
        if self.flags.live.swap(live, Ordering::AcqRel) != live {
            if live {
                tracing::info!("liveness SERVING again");
            }
            self.publish();
        }
    }

    /// A gRPC health service reporting this health; its Watch streams end
    /// when `shutdown` is cancelled.
    pub fn service(
        &self,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> tonic_health::pb::health_server::HealthServer<HealthService> {
        tonic_health::pb::health_server::HealthServer::new(HealthService::new(
            self.statuses.subscribe(),
            shutdown,
        ))
    }

    fn publish(&self) {
        let ready = self.is_ready();
        let live = self.is_live();
        self.statuses.send_replace(Statuses::new([
            ("", ready),
            (SERVICE_NAME, ready),
            (READINESS, ready),
            (LIVENESS, live),
        ]));
    }
}
