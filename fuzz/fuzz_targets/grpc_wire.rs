//! The gRPC pre-decode check: counting repeated fields on the protobuf
//! wire. It may not panic, and whenever prost decodes the same bytes, the
//! check's verdict agrees with the decoded counts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use translation_jobs::api::{
    proto::{BatchCreateTranslationJobsRequest, CreateTranslationJobRequest},
    wire,
};

const LIMITS: wire::WireLimits = wire::WireLimits {
    max_subtasks: 8,
    max_batch: 4,
};

fuzz_target!(|data: &[u8]| {
    let create = wire::check_create(data, &LIMITS, "");
    if let Ok(decoded) = CreateTranslationJobRequest::decode(data) {
        let fits = decoded.subtasks.len() <= LIMITS.max_subtasks
            && decoded.target_fields.len() <= 32;
        assert_eq!(create.is_ok(), fits, "{create:?} for {decoded:?}");
    }
    let batch = wire::check_batch(data, &LIMITS);
    if let Ok(decoded) = BatchCreateTranslationJobsRequest::decode(data) {
        let fits = decoded.requests.len() <= LIMITS.max_batch
            && decoded.requests.iter().all(|request| {
                request.subtasks.len() <= LIMITS.max_subtasks && request.target_fields.len() <= 32
            });
        assert_eq!(batch.is_ok(), fits, "{batch:?}");
    }
});
