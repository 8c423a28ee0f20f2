//! A Redis that refuses the service's password: the service says so in its
//! log (the refusal happens on the client's own connection task, outside
//! any command), without printing the password, and stays up.

use std::time::{Duration, Instant};

use crate::{
    common::redis::TestRedis,
    rig::{Rig, serial},
};

const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_redis_password_is_logged_as_a_warning_without_the_password() {
    let _serial = serial().await;
    let rig = Rig::plain().await;
    let mut guarded = TestRedis::started_with(&["--requirepass", "the-right-one"]).await;
    let wrong = "not-the-password-4711";
    let url = guarded
        .url()
        .replacen("redis://", &format!("redis://:{wrong}@"), 1);
    let service = rig.service_at("replica", &rig.postgres.url("postgres"), &url, &[]);

    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        let refused = service.warnings_with("Redis refused the connection");
        if !refused.is_empty() {
            break refused;
        }
        assert!(
            Instant::now() < deadline,
            "no warning about the refused password; log tail:\n{}",
            service.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        refused[0].contains("WRONGPASS") && refused[0].contains("Auth"),
        "the warning names the refusal: {}",
        refused[0]
    );
    assert!(
        !service.log().contains(wrong),
        "the password appears in the log"
    );
    service.assert_no_panic();
    drop(service);
    guarded.stop();
    rig.stop().await;
}
