//! Who is calling, and what they may do.
//!
//! With `AUTH_JWT_SECRET` (HS256) and/or `AUTH_JWT_PUBLIC_KEY` (RS256 or
//! ES256) set, every call of the job service (gRPC and the HTTP job routes;
//! never health, reflection or `/metrics`) carries `authorization: Bearer
//! <JWT>`. The token's signature, algorithm, `exp` and `nbf` (with
//! [`LEEWAY_SECS`]), and the configured issuer and audience are checked;
//! its `sub` becomes the caller's identity, stored as the job's `user_id`; its scopes
//! (`scope`, space-separated, or `scp`, a list) decide whether the caller
//! sees every job ([`ADMIN_SCOPE`](super::caller::ADMIN_SCOPE)) or only its own. Without either setting
//! the service runs open: the caller names itself in `x-user-id` and may
//! read and change every job, as before authentication existed.
//!
//! - `keys`: the configured secret, public key, issuer and audience.
//! - `jwt`: the checks of one token, and the memory of verified ones.
//! - `interceptor`: the gRPC side is a tonic interceptor on the job service
//!   alone, which puts a [`Principal`] into the request's extensions; the
//!   HTTP side is an axum extractor of [`Caller`] doing the same check.
//!
//! Here: the [`Authenticator`] both sides call, and [`require_admin`].

mod interceptor;
mod jwt;
mod keys;
#[cfg(test)]
mod tests;

use std::sync::Arc;

pub use interceptor::{AuthInterceptor, grpc_caller};
pub use jwt::LEEWAY_SECS;
use jwt::Verifier;
pub use keys::{AuthSettings, MIN_HS256_SECRET_LEN, PublicKey};

use super::{
    caller::{Caller, Principal, user_id_from},
    status::{ApiError, AuthError},
};
use crate::jobs::Scope;

/// Metadata key (and HTTP header) of the bearer token.
pub const AUTHORIZATION: &str = "authorization";

/// The check every call of the job service goes through. Cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    /// `None`: no keys configured, the service runs open.
    verifier: Option<Arc<Verifier>>,
}

impl Authenticator {
    /// Logs, at start-up, how calls are checked.
    pub fn new(settings: &AuthSettings) -> Self {
        if !settings.enabled() {
            // Why it may run open is logged by the app (`AuthMode`).
            return Self { verifier: None };
        }
        let verifier = Verifier::new(settings);
        let mut algorithms = Vec::new();
        if verifier.has_hs256() {
            algorithms.push("HS256");
        }
        if let Some(public) = &settings.public_key {
            algorithms.push(match public.algorithm() {
                jsonwebtoken::Algorithm::RS256 => "RS256",
                _ => "ES256",
            });
        }
        tracing::info!(
            algorithms = %algorithms.join(","),
            issuer = settings.issuer.as_deref().unwrap_or("(any)"),
            audience = settings.audience.as_deref().unwrap_or("(any)"),
            "bearer tokens required on the job service"
        );
        if settings.audience.is_none() {
            tracing::warn!(
                "AUTH_JWT_AUDIENCE is not set: tokens issued for any audience (another service's too) are accepted; set it to the audience your issuer puts in `aud`"
            );
        }
        Self {
            verifier: Some(Arc::new(verifier)),
        }
    }

    /// No authentication: every caller sees every job.
    pub fn open() -> Self {
        Self { verifier: None }
    }

    pub fn is_open(&self) -> bool {
        self.verifier.is_none()
    }

    /// Checks one call from its raw `authorization` and `x-user-id` values
    /// (gRPC metadata or HTTP headers alike).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        user_id: Option<&[u8]>,
    ) -> Result<Principal, ApiError> {
        match &self.verifier {
            None => Ok(Principal {
                user_id: user_id_from(user_id)?,
                scope: Scope::All,
                admin: true,
            }),
            Some(verifier) => {
                let principal = verifier.verify(authorization).inspect_err(|error| {
                    tracing::debug!(reason = %error, "call refused: bad or missing bearer token");
                })?;
                Ok(principal)
            }
        }
    }
}

/// Refuses callers without the admin scope; the one check every admin-only
/// RPC makes (`action` names the RPC in the error).
pub fn require_admin(caller: &Caller, action: &'static str) -> Result<(), ApiError> {
    if caller.admin {
        Ok(())
    } else {
        Err(AuthError::NotAdmin { action }.into())
    }
}
