//! Who is calling: the [`Principal`] that `auth` finds in a call, the
//! [`Caller`] every handler gets (the principal and its trace context), and
//! the metadata keys (HTTP headers alike) that carry them.
//!
//! The bottom of `api`: `auth` produces these, `status` names the admin
//! scope in its refusals, the handlers read them; this module imports
//! nothing of `api`.

use crate::jobs::{
    Scope,
    fields::{FieldError, TraceParent, UserId},
};

/// The scope that lets a caller see and change every job and call the
/// admin-only RPCs (GetQueueStats, dead-letter redrive).
pub const ADMIN_SCOPE: &str = "translation.admin";

/// Metadata key naming the caller on whose behalf a job is created, when
/// the service runs without authentication (set by the gateway in front of
/// it); scopes request_id idempotency. With authentication on, the token's
/// `sub` takes its place and this key is ignored.
pub const USER_ID_METADATA: &str = "x-user-id";

/// Metadata key (and HTTP header) of the caller's W3C trace context.
pub const TRACEPARENT_METADATA: &str = "traceparent";

/// Who a checked call comes from; the interceptor puts it into the gRPC
/// request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Stored as the `user_id` of the jobs it creates; scopes `request_id`.
    pub user_id: UserId,
    /// Whose jobs it sees and changes.
    pub scope: Scope,
    /// Whether it may call the admin-only RPCs.
    pub admin: bool,
}

/// Who is calling (checked by `auth`), and their trace context.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Stored as the `user_id` of the jobs it creates; scopes request_id.
    pub user_id: UserId,
    /// Whose jobs the caller sees and changes.
    pub scope: Scope,
    /// Whether the caller may call the admin-only RPCs.
    pub admin: bool,
    pub traceparent: Option<TraceParent>,
}

impl Caller {
    pub fn new(principal: Principal, traceparent: Option<TraceParent>) -> Self {
        Self {
            user_id: principal.user_id,
            scope: principal.scope,
            admin: principal.admin,
            traceparent,
        }
    }
}

/// The caller's trace context from the raw header value, if well formed.
pub fn traceparent_from(value: Option<&[u8]>) -> Option<TraceParent> {
    value
        .and_then(|bytes| std::str::from_utf8(bytes).ok())
        .and_then(TraceParent::parse)
}

/// The caller's user id from the raw header value, gRPC or HTTP.
pub fn user_id_from(value: Option<&[u8]>) -> Result<UserId, FieldError> {
    match value {
        None => Ok(UserId::default()),
        Some(bytes) => {
            let raw = std::str::from_utf8(bytes)
                .ok()
                .filter(|raw| raw.is_ascii())
                .ok_or_else(|| FieldError::new(USER_ID_METADATA, "must be printable ASCII"))?;
            UserId::parse(USER_ID_METADATA, raw)
        }
    }
}
