//! Readiness: whether the service can do its work, reported to gRPC health
//! checks (Kubernetes probes, grpcurl) and to the handlers.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use tonic_health::{ServingStatus, server::HealthReporter};

use crate::api::proto::translation_job_service_server::SERVICE_NAME;

/// Shared readiness flag plus the gRPC health reporter it drives.
#[derive(Clone)]
pub struct Health {
    ready: Arc<AtomicBool>,
    reporter: HealthReporter,
}

impl Health {
    /// Starts NOT_SERVING.
    pub fn new(reporter: HealthReporter) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(false)),
            reporter,
        }
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Marks the whole server and the job service SERVING or NOT_SERVING.
    pub async fn set_ready(&self, ready: bool) {
        let was = self.ready.swap(ready, Ordering::AcqRel);
        let status = if ready {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        };
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
        if was != ready {
            tracing::info!(ready, "readiness changed");
        }
    }
}
