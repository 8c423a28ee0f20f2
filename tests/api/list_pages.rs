//! A FULL list page is bounded in subtasks (so in bytes), not only in jobs.

use sqlx::PgPool;
use translation_jobs::{
    api::{convert, proto::SubtaskSpec},
    jobs::{JobView, ListQuery, Scope, create_job, fields::UserId, list_jobs_within},
};

use crate::support::create_request;

/// A job with `subtasks` subtasks; its id.
async fn job_with(pool: &PgPool, subtasks: usize) -> uuid::Uuid {
    let mut request = create_request();
    request.subtasks = (0..subtasks)
        .map(|i| SubtaskSpec {
            entity_type: "chapter".into(),
            entity_id: i.to_string(),
        })
        .collect();
    let new = convert::new_job(
        UserId::default(),
        request,
        &convert::CreateRules::with_max_subtasks(1000),
    )
    .unwrap();
    create_job(pool, &new).await.unwrap().job.id
}

#[sqlx::test(migrator = "translation_jobs::app::MIGRATOR")]
async fn a_full_page_stops_before_its_subtasks_pass_the_budget(pool: PgPool) {
    // Newest first: 12, then 4, 4, 4 subtasks.
    let mut ids = Vec::new();
    for subtasks in [4, 4, 4, 12] {
        ids.push(job_with(&pool, subtasks).await);
    }
    ids.reverse();
    let query = |before| ListQuery {
        limit: 10,
        view: JobView::Full,
        before,
        ..Default::default()
    };
    // A job over the budget comes alone.
    let first = list_jobs_within(&pool, &query(None), &Scope::All, 10)
        .await
        .unwrap();
    assert_eq!(
        first.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[..1]
    );
    assert_eq!(first.jobs[0].subtasks.len(), 12);
    assert!(first.more);
    // Then as many as fit: 4 + 4 <= 10 < 12.
    let second = list_jobs_within(&pool, &query(Some(ids[0])), &Scope::All, 10)
        .await
        .unwrap();
    assert_eq!(
        second.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[1..3]
    );
    assert!(second.more, "the page was cut: more follow");
    let third = list_jobs_within(&pool, &query(Some(ids[2])), &Scope::All, 10)
        .await
        .unwrap();
    assert_eq!(
        third.jobs.iter().map(|j| j.id).collect::<Vec<_>>(),
        ids[3..]
    );
    assert!(!third.more);
    // BASIC pages carry no subtasks and are not cut.
    let basic = ListQuery {
        limit: 10,
        view: JobView::Basic,
        ..Default::default()
    };
    let page = list_jobs_within(&pool, &basic, &Scope::All, 10)
        .await
        .unwrap();
    assert_eq!(page.jobs.len(), 4);
}
