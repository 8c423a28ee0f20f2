//! The HTTP JSON body of a create: the count check before parsing, then the
//! parser. Neither may panic; when the count check passes, the parsed
//! request (if any) holds no more entries than the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use translation_jobs::api::{body, wire};

const LIMITS: wire::WireLimits = wire::WireLimits {
    max_subtasks: 8,
    max_batch: 4,
};

fuzz_target!(|data: &[u8]| {
    let counted = wire::check_create_json(data, &LIMITS);
    let parsed = body::create_request(data);
    if counted.is_ok()
        && let Ok(request) = parsed
    {
        assert!(request.subtasks.len() <= LIMITS.max_subtasks);
        assert!(request.target_fields.len() <= 32);
    }
});
