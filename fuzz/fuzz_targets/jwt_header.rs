//! Bearer-token parsing: any `authorization` value is refused without a
//! panic (nothing here is signed with the secret), and an open service
//! takes any `x-user-id` value or refuses it without a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use translation_jobs::api::auth::{AuthSettings, Authenticator};

fn secured() -> &'static Authenticator {
    static AUTH: OnceLock<Authenticator> = OnceLock::new();
    AUTH.get_or_init(|| {
        Authenticator::new(&AuthSettings {
            hs256_secret: Some(b"fuzz-secret-0123456789abcdef0123".to_vec()),
            ..AuthSettings::default()
        })
    })
}

fuzz_target!(|data: &[u8]| {
    assert!(
        secured().authenticate(Some(data), None).is_err(),
        "an unsigned value was accepted"
    );
    let _ = Authenticator::open().authenticate(None, Some(data));
});
