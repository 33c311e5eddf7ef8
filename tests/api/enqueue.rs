//! Enqueue against real PostgreSQL: idempotency keys single and bulk, bulk order, and the
//! plain bulk path by COPY (ADR 0021).

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use etlq::queue::NewJob;

use crate::helpers::*;

#[tokio::test]
async fn idempotent_enqueue_returns_the_existing_job_single_and_bulk() {
    let db = TestDb::new().await;
    let store = db.store();
    let mut job = NewJob::new("noop", json!({"n": 1}));
    job.idempotency_key = Some("upload-42".into());
    let first = store.enqueue(&job).await.unwrap();
    let again = store.enqueue(&job).await.unwrap();
    assert!(first.created);
    assert!(!again.created);
    assert_eq!(first.job_id, again.job_id);

    let mut fresh = NewJob::new("noop", json!({}));
    fresh.idempotency_key = Some("upload-43".into());
    let plain = NewJob::new("noop", json!({}));
    let out = store
        .enqueue_many(&[plain.clone(), job.clone(), fresh, plain])
        .await
        .unwrap();
    assert_eq!(out[1].job_id, first.job_id);
    assert!(!out[1].created);
    assert!(out[0].created && out[2].created && out[3].created);
    let ids: HashSet<i64> = out.iter().map(|e| e.job_id).collect();
    assert_eq!(ids.len(), 4);
    let total: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(total, 4, "the duplicate key inserted nothing");
}

#[tokio::test]
async fn bulk_enqueue_returns_ids_in_input_order_with_one_event_each() {
    let db = TestDb::new().await;
    let jobs: Vec<NewJob> = (0..1000)
        .map(|i| NewJob::new("noop", json!({"i": i})))
        .collect();
    let out = db.store().enqueue_many(&jobs).await.unwrap();
    assert_eq!(out.len(), 1000);
    let rows: Vec<(i64, i64)> =
        sqlx::query_as("SELECT id, (payload->>'i')::int8 FROM jobs ORDER BY id")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    let by_id: HashMap<i64, i64> = rows.into_iter().collect();
    for (i, e) in out.iter().enumerate() {
        assert_eq!(by_id[&e.job_id], i as i64, "job for input {i}");
    }
    let events: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_events WHERE event = 'enqueued'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(events, 1000);
}

/// Plain jobs go by COPY: its text format must not eat a byte of a payload or a kind, and the
/// statement triggers on `jobs` (arrival counts) must fire as for an INSERT.
#[tokio::test]
async fn bulk_enqueue_of_plain_jobs_keeps_every_byte_priority_and_attempts() {
    let db = TestDb::new().await;
    let texts = [
        "back\\slash",
        "tab\there",
        "new\nline",
        "cr\rreturn",
        "\\.",
        "\\N",
        "quote\"s",
        "ünï©ødé 🚀",
        "\u{1}control",
        "",
    ];
    let mut jobs: Vec<NewJob> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let mut j = NewJob::new("odd\\kind", json!({"t": t, "nested": [t, {"k\\": t}]}));
            j.priority = Some(i as i16 - 3);
            j.max_attempts = Some(i as i32 + 1);
            j
        })
        .collect();
    jobs.push(NewJob::new("noop", Value::Null));
    let out = db.store().enqueue_many(&jobs).await.unwrap();
    assert!(out.iter().all(|e| e.created));
    assert!(
        out.windows(2).all(|w| w[0].job_id < w[1].job_id),
        "ids ascend in input order"
    );
    for (e, j) in out.iter().zip(&jobs) {
        let (kind, payload, priority, attempts, state): (String, Value, i16, i32, String) =
            sqlx::query_as(
                "SELECT kind, payload, priority, max_attempts, state FROM jobs WHERE id = $1",
            )
            .bind(e.job_id)
            .fetch_one(&db.pool)
            .await
            .unwrap();
        assert_eq!((kind.as_str(), &payload), (j.kind.as_str(), &j.payload));
        assert_eq!(priority, j.priority.unwrap_or(0));
        assert_eq!(attempts, j.max_attempts.unwrap_or(5));
        assert_eq!(state, "queued");
    }
    let arrived: i64 = sqlx::query_scalar("SELECT sum(arrived)::int8 FROM job_minute_deltas")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(
        arrived,
        jobs.len() as i64,
        "the arrivals trigger counted them"
    );
    assert!(db.store().enqueue_many(&[]).await.unwrap().is_empty());
}
