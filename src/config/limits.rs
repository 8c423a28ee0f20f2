//! The limits of the job service (`GRPC_MAX_MESSAGE_SIZE`, `RPC_TIMEOUT`,
//! `MAX_CONCURRENT_REQUESTS*`, `MAX_WATCH_STREAMS*`); their defaults live
//! with the limits themselves, in `api::limits`.

use super::{
    ConfigError,
    parse::{duration, number},
};
use crate::api::limits::{
    DEFAULT_MAX_CONCURRENT_REQUESTS, DEFAULT_MAX_CONCURRENT_REQUESTS_PER_CALLER,
    DEFAULT_MAX_MESSAGE_SIZE, DEFAULT_MAX_WATCH_STREAMS, DEFAULT_MAX_WATCH_STREAMS_PER_CALLER,
    DEFAULT_RPC_TIMEOUT, LimitSettings,
};

/// Bounds of `GRPC_MAX_MESSAGE_SIZE`: a create of `MAX_SUBTASKS_PER_JOB`
/// subtasks needs some room; beyond 1 GiB a message is no longer a request.
pub const MIN_MAX_MESSAGE_SIZE: usize = 1024;
pub const MAX_MAX_MESSAGE_SIZE: usize = 1024 * 1024 * 1024;

pub(super) fn limit_settings(
    get: &impl Fn(&str) -> Option<String>,
) -> Result<LimitSettings, ConfigError> {
    Ok(LimitSettings {
        max_message_size: number(
            get,
            "GRPC_MAX_MESSAGE_SIZE",
            DEFAULT_MAX_MESSAGE_SIZE,
            MIN_MAX_MESSAGE_SIZE,
            MAX_MAX_MESSAGE_SIZE,
        )?,
        rpc_timeout: duration(get, "RPC_TIMEOUT", DEFAULT_RPC_TIMEOUT)?,
        max_concurrent_requests: number(
            get,
            "MAX_CONCURRENT_REQUESTS",
            DEFAULT_MAX_CONCURRENT_REQUESTS,
            1,
            1_000_000,
        )?,
        max_watch_streams: number(
            get,
            "MAX_WATCH_STREAMS",
            DEFAULT_MAX_WATCH_STREAMS,
            1,
            1_000_000,
        )?,
        max_concurrent_requests_per_caller: number(
            get,
            "MAX_CONCURRENT_REQUESTS_PER_CALLER",
            DEFAULT_MAX_CONCURRENT_REQUESTS_PER_CALLER,
            1,
            1_000_000,
        )?,
        max_watch_streams_per_caller: number(
            get,
            "MAX_WATCH_STREAMS_PER_CALLER",
            DEFAULT_MAX_WATCH_STREAMS_PER_CALLER,
            1,
            1_000_000,
        )?,
    })
}
