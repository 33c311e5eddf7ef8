//! REST contract: bad input gets the documented JSON errors; auth; pagination; job detail.

use std::sync::Arc;

use serde_json::{Value, json};

use etlq::queue::JobState;
use etlq::startup::Role;

use crate::helpers::*;

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("<none>")
}

#[tokio::test]
async fn bad_input_gets_json_errors_and_enqueues_nothing() {
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db, Role::Api, |s| s.api.max_body_bytes = 1024).await;
    let c = &app.client;
    let post_raw = |body: &'static str, ctype: &'static str| {
        c.post(app.url("/v1/jobs"))
            .header("content-type", ctype)
            .body(body)
            .send()
    };
    let check = |r: reqwest::Response| async move {
        let status = r.status().as_u16();
        let body: Value = r.json().await.expect("error bodies are JSON");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        (status, body)
    };
    let (s, b) = check(post_raw("{not json", "application/json").await.unwrap()).await;
    assert_eq!((s, code(&b)), (400, "invalid_json"));
    let (s, b) = check(
        post_raw("{\"kind\": \"test\"}", "text/plain")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code(&b)), (415, "unsupported_media_type"));
    let (s, b) = check(
        post_raw("{\"payload\": {}}", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code(&b)), (422, "unprocessable"), "missing kind");
    let (s, b) = check(
        post_raw("{\"kind\": \"nope\"}", "application/json")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!((s, code(&b)), (422, "unknown_kind"));
    let (s, b) = check(
        post_raw(
            "{\"kind\": \"test\", \"max_attempts\": 0}",
            "application/json",
        )
        .await
        .unwrap(),
    )
    .await;
    assert_eq!((s, code(&b)), (422, "unprocessable"));
    let big = format!(
        "{{\"kind\": \"test\", \"payload\": {{\"x\": \"{}\"}}}}",
        "a".repeat(4096)
    );
    let r = c
        .post(app.url("/v1/jobs"))
        .header("content-type", "application/json")
        .body(big)
        .send()
        .await
        .unwrap();
    let (s, b) = check(r).await;
    assert_eq!((s, code(&b)), (413, "payload_too_large"));

    for path in [
        "/v1/jobs?state=bogus",
        "/v1/jobs?limit=0",
        "/v1/jobs?limit=abc",
        "/v1/jobs?limit=501",
        "/v1/jobs?cursor=-4",
        "/v1/jobs?colour=blue",
        "/v1/jobs/abc",
        "/v1/jobs/0",
        "/v1/dead-letters?since=yesterday",
    ] {
        let (s, b) = check(c.get(app.url(path)).send().await.unwrap()).await;
        assert_eq!((s, code(&b)), (400, "bad_request"), "{path}: {b}");
    }
    let (s, b) = check(c.get(app.url("/v1/jobs/424242")).send().await.unwrap()).await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    let (s, b) = check(c.get(app.url("/v1/nowhere")).send().await.unwrap()).await;
    assert_eq!((s, code(&b)), (404, "not_found"));
    let (s, b) = check(c.delete(app.url("/v1/jobs")).send().await.unwrap()).await;
    assert_eq!((s, code(&b)), (405, "method_not_allowed"));

    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(count, 0, "no bad request enqueued anything");
    app.stop().await;
}

#[tokio::test]
async fn mutating_endpoints_require_a_valid_bearer_token_when_configured() {
    let db = Arc::new(TestDb::new().await);
    let token = "s3cret-token-for-tests-only";
    let app = spawn_app_on(db, Role::Serve, |s| {
        s.api.tokens.insert("deployer".into(), token.into());
    })
    .await;
    let c = &app.client;
    let body = json!({"kind": "noop"});
    let r = c
        .post(app.url("/v1/jobs"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert_eq!(code(&r.json().await.unwrap()), "unauthorized");
    let r = c
        .post(app.url("/v1/jobs"))
        .bearer_auth("wrong-token-wrong-token")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(code(&r.json().await.unwrap()), "forbidden");
    let r = c.post(app.url("/v1/lifecycle/drain")).send().await.unwrap();
    assert_eq!(r.status(), 401, "lifecycle changes are protected too");
    // Reads need the token too (records are a company's ledger); a valid token works and is
    // recorded as the actor, with the role it used.
    assert_eq!(
        c.get(app.url("/v1/lifecycle"))
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.get(app.url("/v1/lifecycle"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(app.url("/v1/jobs"))
        .bearer_auth(token)
        .json(&json!({"kind": "test", "payload": {"sleep_ms": 60000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let id = r.json::<Value>().await.unwrap()["job_id"].as_i64().unwrap();
    let r = c
        .post(app.url(&format!("/v1/jobs/{id}/cancel")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let actor: Option<String> = sqlx::query_scalar(
        "SELECT worker_id FROM job_events WHERE job_id = $1 AND event = 'cancelled'",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(actor.as_deref(), Some("deployer"));
    app.stop().await;
}

#[tokio::test]
async fn job_list_paginates_with_a_cursor_and_filters() {
    let app = spawn_app_on(Arc::new(TestDb::new().await), Role::Api, |_| {}).await;
    let mut ids = Vec::new();
    for i in 0..7 {
        let bu = if i % 2 == 0 { "EVEN" } else { "ODD" };
        ids.push(app.enqueue("test", json!({"bu_id": bu})).await);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/jobs?limit=3&cursor={c}"),
            None => "/v1/jobs?limit=3".to_string(),
        };
        let (s, body) = app.get(&path).await;
        assert_eq!(s, 200);
        for j in body["jobs"].as_array().unwrap() {
            seen.push(j["id"].as_i64().unwrap());
        }
        match body["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    ids.reverse();
    assert_eq!(seen, ids, "newest first, each once");
    let (_, body) = app.get("/v1/jobs?bu_id=ODD&state=queued").await;
    assert_eq!(body["jobs"].as_array().unwrap().len(), 3);
    let (_, body) = app.get("/v1/jobs?state=succeeded").await;
    assert_eq!(body["jobs"], json!([]));
    app.stop().await;
}

#[tokio::test]
async fn job_detail_shows_stages_checkpoint_and_history_and_idempotency_over_rest() {
    let app = spawn_app().await;
    let req = json!({"kind": "test", "payload": {"bu_id": "X"}, "idempotency_key": "k-1"});
    let (s, first) = app.post("/v1/jobs", req.clone()).await;
    assert_eq!(s, 202);
    let (s, again) = app.post("/v1/jobs", req).await;
    assert_eq!(s, 202);
    assert_eq!(first["job_id"], again["job_id"]);
    assert_eq!(
        (first["created"].as_bool(), again["created"].as_bool()),
        (Some(true), Some(false))
    );
    let id = first["job_id"].as_i64().unwrap();
    require_state(
        &app.store(),
        id,
        JobState::Succeeded,
        std::time::Duration::from_secs(20),
    )
    .await;
    let (s, job) = app.get(first["status_url"].as_str().unwrap()).await;
    assert_eq!(s, 200);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["stages"], json!(["first", "second", "third"]));
    assert_eq!(job["checkpoint"]["second"]["saw"], json!(["first"]));
    let events: Vec<&str> = job["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        events,
        [
            "enqueued",
            "claimed",
            "stage_completed",
            "stage_completed",
            "stage_completed"
        ]
    );
    let (s, text) = {
        let r = app.client.get(app.url("/metrics")).send().await.unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(s, 200);
    assert!(text.contains("etlq_jobs_succeeded_total 1"), "{text}");
    // Histograms by kind and stage, pickup latency by kind, queue depth by state.
    for stage in ["first", "second", "third"] {
        let series = format!(
            "etlq_stage_duration_seconds_count{{kind=\"test\",stage=\"{stage}\",outcome=\"completed\"}} 1"
        );
        assert!(text.contains(&series), "{series} missing: {text}");
    }
    for series in [
        "etlq_job_duration_seconds_count{kind=\"test\",outcome=\"succeeded\"} 1",
        "etlq_pickup_latency_seconds_count{kind=\"test\"} 1",
        "etlq_jobs{state=\"succeeded\"} 1",
        "etlq_jobs_rescued_total{outcome=\"requeued\"} 0",
    ] {
        assert!(text.contains(series), "{series} missing: {text}");
    }
    let (s, doc) = app.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert!(doc["paths"]["/v1/jobs"].is_object());
    app.stop().await;
}

/// The REST the console stands on: list filters, counts and bulk actions over one filter,
/// retry of one job, per-process drain and resume, stats, connectors, artifacts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_rest_counts_and_acts_on_what_a_filter_matches() {
    let app = spawn_app().await;
    let store = app.store();
    let me = app.app.as_ref().unwrap().state.identity.id.clone();

    // A dead job, while the worker runs.
    let dead = app
        .enqueue(
            "test",
            json!({"record": false, "fail": {"first": {"fatal": true}}}),
        )
        .await;
    require_state(
        &store,
        dead,
        JobState::Dead,
        std::time::Duration::from_secs(30),
    )
    .await;
    let (s, b) = app
        .post(&format!("/v1/jobs/{dead}/retry?from=sideways"), json!({}))
        .await;
    assert_eq!((s, code(&b)), (400, "bad_request"), "{b}");

    // Drain this process through the fleet endpoint addressed to it; an unknown id is a 404.
    let (s, b) = app
        .post("/v1/fleet/workers/nobody-1-abc/drain", json!({}))
        .await;
    assert_eq!((s, code(&b)), (404, "not_found"), "{b}");
    let (s, b) = app
        .post(&format!("/v1/fleet/workers/{me}/drain"), json!({}))
        .await;
    assert_eq!(s, 202, "{b}");
    wait_for(std::time::Duration::from_secs(10), "the drain", || async {
        (app.lifecycle().mode() == etlq::lifecycle::Mode::SafeToStop).then_some(())
    })
    .await;

    let before = chrono::Utc::now();
    let mut a = Vec::new();
    for i in 0..3 {
        a.push(
            app.enqueue(
                "noop",
                json!({"bu_id": "BU-1", "connector": format!("c{}", i % 2)}),
            )
            .await,
        );
    }
    let b_job = app
        .enqueue("noop", json!({"bu_id": "BU-2", "connector": "c0"}))
        .await;

    // Filters: connector, bu_id, created range, state; count agrees with the list.
    let ids = |v: &Value| -> Vec<i64> {
        v["jobs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|j| j["id"].as_i64().unwrap())
            .collect()
    };
    let (s, v) = app.get("/v1/jobs?kind=noop&connector=c0").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(ids(&v), vec![b_job, a[2], a[0]]);
    let after = urlencode(&before.to_rfc3339());
    let (_, v) = app
        .get(&format!("/v1/jobs?created_after={after}&bu_id=BU-1"))
        .await;
    assert_eq!(ids(&v), vec![a[2], a[1], a[0]]);
    let (_, v) = app.get(&format!("/v1/jobs?created_before={after}")).await;
    assert_eq!(ids(&v), vec![dead]);
    let (s, v) = app.get("/v1/jobs/count?kind=noop&bu_id=BU-1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v, json!({"matched": 3, "cancellable": 3, "retryable": 0}));
    let (_, v) = app.get("/v1/jobs/count?state=dead").await;
    assert_eq!(v, json!({"matched": 1, "cancellable": 0, "retryable": 1}));
    let (s, v) = app.get("/v1/jobs/count?created_after=yesterday").await;
    assert_eq!((s, code(&v)), (400, "bad_request"), "{v}");

    // Bulk cancel: refuses an empty filter, cancels exactly what the count said.
    let (s, v) = app.post("/v1/jobs/cancel", json!({})).await;
    assert_eq!((s, code(&v)), (422, "unprocessable"), "{v}");
    let (s, v) = app
        .post("/v1/jobs/cancel", json!({"kind": "noop", "bu_id": "BU-1"}))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["cancelled"], 3);
    for id in &a {
        assert_eq!(store.get(*id).await.unwrap().state, JobState::Cancelled);
    }
    assert_eq!(store.get(b_job).await.unwrap().state, JobState::Queued);

    // Bulk retry of dead jobs, and retry of one job that is not dead.
    let (s, v) = app
        .post("/v1/jobs/retry", json!({"state": "dead", "from": "start"}))
        .await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["job_ids"], json!([dead]));
    assert_eq!(store.get(dead).await.unwrap().state, JobState::Queued);
    let (s, v) = app
        .post(&format!("/v1/jobs/{b_job}/retry"), json!({}))
        .await;
    assert_eq!((s, code(&v)), (409, "conflict"), "{v}");

    // Stats: counts by state and kind, sixty minutes with today's arrivals and depth.
    let (s, v) = app.get("/v1/stats").await;
    assert_eq!(s, 200, "{v}");
    let count = |state: &str, kind: &str| {
        v["counts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["state"] == state && c["kind"] == kind)
            .map(|c| c["count"].as_i64().unwrap())
            .unwrap_or(0)
    };
    assert_eq!(count("cancelled", "noop"), 3);
    assert_eq!(count("queued", "noop"), 1);
    assert_eq!(count("queued", "test"), 1);
    assert_eq!(v["depth"], 2);
    let hour = v["last_hour"].as_array().unwrap();
    assert_eq!(hour.len(), 60);
    let total = |k: &str| hour.iter().map(|m| m[k].as_i64().unwrap()).sum::<i64>();
    // Arrivals: five enqueued and one retried; one stage failure that killed the job.
    assert_eq!(total("arrived"), 6, "{v}");
    assert_eq!((total("failed"), total("dead")), (1, 1), "{v}");
    assert_eq!(hour[59]["depth"], 2);
    assert_eq!(v["recent_failures"][0]["job_id"], dead);
    // Rolled up (every minute up to the next one settled), the hour reads the same.
    let now = chrono::Utc::now();
    let added = store
        .roll_up_minutes(
            now - chrono::Duration::minutes(61),
            now + chrono::Duration::minutes(1),
        )
        .await
        .unwrap();
    // The app's own rollup service has done the settled minutes already.
    assert!(added >= 1, "{added}");
    let (_, rolled) = app.get("/v1/stats").await;
    assert_eq!(rolled["last_hour"], v["last_hour"]);
    assert_eq!(
        store
            .roll_up_minutes(now - chrono::Duration::minutes(61), now)
            .await
            .unwrap(),
        0,
        "a second pass adds nothing"
    );

    // Resume, and the queued jobs run.
    let (s, _) = app
        .post(&format!("/v1/fleet/workers/{me}/resume"), json!({}))
        .await;
    assert_eq!(s, 202);
    require_state(
        &store,
        b_job,
        JobState::Succeeded,
        std::time::Duration::from_secs(30),
    )
    .await;

    // Connectors and artifacts.
    let (_, v) = app.get("/v1/connectors").await;
    let names: Vec<&str> = v["connectors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["sap_fbl3n", "trial_balance"]);
    assert!(!v["connectors"][0]["columns"].as_array().unwrap().is_empty());
    let (s, v) = app
        .get(&format!("/v1/jobs/{b_job}/artifacts/records.ndjson"))
        .await;
    assert_eq!((s, code(&v)), (409, "not_an_etl_job"), "{v}");
    let (s, v) = app
        .get(&format!("/v1/jobs/{b_job}/artifacts/..%2Fsecret"))
        .await;
    assert_eq!((s, code(&v)), (404, "not_found"), "{v}");

    app.stop().await;
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}
