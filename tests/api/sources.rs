//! Sources (issue 16): Event Grid deliveries and watched prefixes become jobs, each blob
//! version exactly once — on Azurite, through duplicate and forged deliveries, a fleet that was
//! down across several slots, a drain, and (in `sources_process.rs`) a rolling deploy with a
//! kill -9 in the middle of a listing.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::etl::{sample_file, wait_done};
use crate::helpers::*;
use etlq::sources::SourceSpec;
use etlq::startup::Role;

pub const SECRET: &str = "grid-secret-0123456789";

pub fn spec(toml_text: &str) -> SourceSpec {
    toml::from_str(toml_text).expect("source spec parses")
}

/// A BlobCreated event in the Event Grid schema, shaped as Azure documents it.
fn blob_created(id: &str, container: &str, blob: &str, etag: &str, len: i64, api: &str) -> Value {
    json!({
        "topic": "/subscriptions/0000/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": format!("/blobServices/default/containers/{container}/blobs/{blob}"),
        "eventType": "Microsoft.Storage.BlobCreated",
        "eventTime": "2026-12-01T02:00:00.1234567Z",
        "id": id,
        "data": {
            "api": api,
            "clientRequestId": "6d79dbfb-0e37-4fc4-981f-442c9ca65760",
            "requestId": "831e1650-001e-001b-66ab-eeb76e000000",
            "eTag": format!("\"{etag}\""),
            "contentType": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
            "contentLength": len,
            "blobType": "BlockBlob",
            "url": format!("http://127.0.0.1:10000/devstoreaccount1/{container}/{blob}"),
            "sequencer": "00000000000004420000000000028963",
            "storageDiagnostics": {"batchId": "b68529f3-68cd-4744-baa4-3c0498ec19f0"}
        },
        "dataVersion": "",
        "metadataVersion": "1"
    })
}

/// The same event as a CloudEvent 1.0.
fn cloud_event(eg: &Value) -> Value {
    json!({
        "specversion": "1.0",
        "type": eg["eventType"],
        "source": eg["topic"],
        "id": eg["id"],
        "time": eg["eventTime"],
        "subject": eg["subject"],
        "data": eg["data"],
    })
}

async fn deliver(
    app: &TestApp,
    source: &str,
    key: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let mut url = app.url(&format!("/v1/sources/{source}/events"));
    if let Some(k) = key {
        url = format!("{url}?key={k}");
    }
    let r = app
        .client
        .post(url)
        .header("content-type", content_type)
        .header("aeg-event-type", "Notification")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
        .fetch_one(&app.db.pool)
        .await
        .unwrap()
}

/// Waits for the first finished listing of `source` after run `after`.
pub async fn wait_listing(pool: &sqlx::PgPool, source: &str, after: i64) -> Value {
    wait_for(Duration::from_secs(30), "a finished listing", || async {
        let row: Option<(i64, String, i64, i64, i64, i64, Value)> = sqlx::query_as(
            "SELECT id, trigger, listed, new, duplicate, skipped, reasons FROM source_runs
              WHERE source = $1 AND id > $2 AND trigger <> 'eventgrid' AND finished_at IS NOT NULL
              ORDER BY id LIMIT 1",
        )
        .bind(source)
        .bind(after)
        .fetch_optional(pool)
        .await
        .ok()?;
        row.map(|(id, trigger, listed, new, duplicate, skipped, reasons)| {
            json!({"id": id, "trigger": trigger, "listed": listed, "new": new,
                   "duplicate": duplicate, "skipped": skipped, "reasons": reasons})
        })
    })
    .await
}

/// Scheduled slots of any source that more than one listing took (must be none).
pub async fn slots_listed_twice(pool: &sqlx::PgPool) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT slot FROM source_runs WHERE trigger = 'schedule'
          GROUP BY source, slot HAVING count(*) > 1) d",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_grid_deliveries_on_azurite_become_one_job_per_blob_version() {
    let endpoint = service_env("ETLQ_TEST_AZURITE", "Azurite");
    let container = format!("etlq-{}", uuid::Uuid::new_v4().simple());
    let blob = etlq::configuration::BlobSettings {
        url: format!("az://{container}/tenant-a"),
        azure: etlq::configuration::AzureSettings {
            use_emulator: true,
            endpoint,
            ..Default::default()
        },
    };
    let settings = blob.clone();
    let app = spawn_app_on(Arc::new(TestDb::new().await), Role::Serve, move |s| {
        s.blob = settings;
        let mut grid = spec(
            r#"kind = "eventgrid"
               prefix = "incoming/"
               path = "incoming/{bu_id}/{file}"
               connector = "trial_balance"
               min_age_ms = 0"#,
        );
        grid.secret = SECRET.into();
        s.sources.insert("grid".into(), grid);
    })
    .await;
    let store = etlq::storage::BlobStore::open(&blob).await.unwrap();
    let etag_of = |key: &'static str| {
        let store = store.clone();
        async move {
            use futures_util::TryStreamExt;
            let m: Vec<_> = store.list_meta(key).try_collect().await.unwrap();
            etlq::sources::eventgrid::normalize_etag(m[0].etag.as_deref().unwrap())
        }
    };
    let (runs, ledger, jobs) = (
        "SELECT count(*) FROM source_runs WHERE source = 'grid'",
        "SELECT count(*) FROM ingest_ledger",
        "SELECT count(*) FROM jobs WHERE kind = 'etl'",
    );

    // The Event Grid schema's handshake: the code, echoed synchronously; nothing recorded.
    let validation = r#"[{"id":"2d1781af-3a4c-4d7c-bd0c-e34b19da4e66","topic":"/subscriptions/x",
        "subject":"","data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6",
        "validationUrl":"https://rp-eastus2.eventgrid.azure.net:553/eventsubscriptions/x/validate?id=y"},
        "eventType":"Microsoft.EventGrid.SubscriptionValidationEvent",
        "eventTime":"2018-01-25T22:12:19.4556811Z","metadataVersion":"1","dataVersion":"1"}]"#;
    let r = app
        .client
        .post(app.url(&format!("/v1/sources/grid/events?key={SECRET}")))
        .header("aeg-event-type", "SubscriptionValidation")
        .header("content-type", "application/json")
        .body(validation)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.json::<Value>().await.unwrap(),
        json!({"validationResponse": "512d38b6-c7b8-40c8-89fe-f46f9e9622b6"})
    );
    // The CloudEvents abuse-protection handshake.
    let r = app
        .client
        .request(
            reqwest::Method::OPTIONS,
            app.url(&format!("/v1/sources/grid/events?key={SECRET}")),
        )
        .header("WebHook-Request-Origin", "eventgrid.azure.net")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["webhook-allowed-origin"], "eventgrid.azure.net");
    assert_eq!(r.headers()["webhook-allowed-rate"], "*");
    assert_eq!(count(&app, runs).await, 0, "a handshake records nothing");

    // A real blob in Azurite, and its BlobCreated.
    store
        .put("incoming/BU-AZ/tb.xlsx", sample_file("trial_balance.xlsx"))
        .await
        .unwrap();
    let etag1 = etag_of("incoming/BU-AZ/tb.xlsx").await;
    let len = sample_file("trial_balance.xlsx").len() as i64;
    let ev = blob_created(
        "ev-1",
        &container,
        "tenant-a/incoming/BU-AZ/tb.xlsx",
        &etag1,
        len,
        "PutBlob",
    );
    let one = json!([ev]).to_string();

    // Forged or broken deliveries: nothing recorded.
    for key in [None, Some("wrong-secret-0123456789")] {
        let (s, b) = deliver(&app, "grid", key, "application/json", &one).await;
        assert_eq!(s, 401, "{b}");
    }
    let (s, b) = deliver(&app, "grid", Some(SECRET), "application/json", "[{\"id\": ").await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (400, Some("invalid_json")),
        "{b}"
    );
    let (s, _) = deliver(&app, "inbox", Some(SECRET), "application/json", &one).await;
    assert_eq!(s, 404, "a watch source takes no events");
    assert_eq!(
        (
            count(&app, runs).await,
            count(&app, ledger).await,
            count(&app, jobs).await
        ),
        (0, 0, 0)
    );

    // Delivered three times, then in a batch of 100, then as CloudEvents (single and batch):
    // one ledger row, one job.
    let mut news = 0;
    for _ in 0..3 {
        let (s, b) = deliver(&app, "grid", Some(SECRET), "application/json", &one).await;
        assert_eq!(s, 200, "{b}");
        news += b["new"].as_i64().unwrap();
    }
    let batch = Value::Array(vec![ev.clone(); 100]).to_string();
    let (s, b) = deliver(&app, "grid", Some(SECRET), "application/json", &batch).await;
    assert_eq!(
        (s, b["received"].as_i64(), b["new"].as_i64()),
        (200, Some(100), Some(0)),
        "{b}"
    );
    let ce = cloud_event(&ev).to_string();
    let (s, b) = deliver(
        &app,
        "grid",
        Some(SECRET),
        "application/cloudevents+json",
        &ce,
    )
    .await;
    assert_eq!(
        (s, b["new"].as_i64(), b["duplicate"].as_i64()),
        (200, Some(0), Some(1)),
        "{b}"
    );
    let ce_batch = json!([cloud_event(&ev), cloud_event(&ev)]).to_string();
    let (s, b) = deliver(
        &app,
        "grid",
        Some(SECRET),
        "application/cloudevents-batch+json",
        &ce_batch,
    )
    .await;
    assert_eq!((s, b["new"].as_i64()), (200, Some(0)), "{b}");
    assert_eq!(news, 1);
    assert_eq!((count(&app, ledger).await, count(&app, jobs).await), (1, 1));

    // Ignored, each with its reason: another container, an empty blob, a block not yet
    // committed, a key outside the prefix, one that does not fit `path`, another type.
    let ignored = json!([
        blob_created("x1", "other-container", "tenant-a/incoming/BU-AZ/tb.xlsx", "0x1", len, "PutBlob"),
        blob_created("x2", &container, "tenant-a/incoming/BU-AZ/empty.xlsx", "0x2", 0, "PutBlob"),
        blob_created("x3", &container, "tenant-a/incoming/BU-AZ/part.xlsx", "0x3", len, "PutBlock"),
        blob_created("x4", &container, "tenant-a/elsewhere/BU-AZ/tb.xlsx", "0x4", len, "PutBlob"),
        blob_created("x5", &container, "tenant-a/incoming/tb.xlsx", "0x5", len, "PutBlob"),
        {"id": "x6", "eventType": "Microsoft.Storage.BlobDeleted", "subject": "/blobServices/default/containers/c/blobs/x", "data": {}},
    ]);
    let (s, b) = deliver(
        &app,
        "grid",
        Some(SECRET),
        "application/json",
        &ignored.to_string(),
    )
    .await;
    assert_eq!(
        (s, b["new"].as_i64(), b["ignored"].as_i64()),
        (200, Some(0), Some(6)),
        "{b}"
    );
    for reason in [
        "other_container",
        "empty",
        "other_event",
        "outside_prefix",
        "path_mismatch",
    ] {
        assert!(
            b["reasons"][reason]["count"].as_i64() >= Some(1),
            "{reason}: {b}"
        );
    }
    assert_eq!((count(&app, ledger).await, count(&app, jobs).await), (1, 1));

    // Overwritten: a new etag is one more job (delivered twice, still one).
    store
        .put("incoming/BU-AZ/tb.xlsx", sample_file("trial_balance.xlsx"))
        .await
        .unwrap();
    let etag2 = etag_of("incoming/BU-AZ/tb.xlsx").await;
    assert_ne!(etag1, etag2);
    let ev2 = json!([blob_created(
        "ev-2",
        &container,
        "tenant-a/incoming/BU-AZ/tb.xlsx",
        &etag2,
        len,
        "PutBlockList"
    )])
    .to_string();
    // Delivered while this process drains (deliveries are accepted like uploads), then again.
    app.lifecycle().drain();
    for _ in 0..2 {
        let (s, _) = deliver(&app, "grid", Some(SECRET), "application/json", &ev2).await;
        assert_eq!(s, 200);
    }
    app.lifecycle().resume();
    assert_eq!((count(&app, ledger).await, count(&app, jobs).await), (2, 2));

    // Both jobs run the real pipeline on Azurite; each names the source and its event.
    let (_, body) = app.get("/v1/sources/grid/ledger").await;
    let entries = body["ledger"].as_array().unwrap().clone();
    assert_eq!(entries.len(), 2, "{body}");
    // Paged newest first, filters checked.
    let (_, p1) = app.get("/v1/sources/grid/ledger?limit=1").await;
    let cursor = p1["next_cursor"].as_str().unwrap().to_string();
    let (_, p2) = app
        .get(&format!("/v1/sources/grid/ledger?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(
        (
            p1["ledger"][0]["id"].clone(),
            p2["ledger"][0]["id"].clone(),
            p2["next_cursor"].clone()
        ),
        (
            entries[0]["id"].clone(),
            entries[1]["id"].clone(),
            Value::Null
        )
    );
    let (s, b) = app.get("/v1/sources/grid/ledger?found_by=magic").await;
    assert_eq!(s, 400, "{b}");
    let (s, _) = app.get("/v1/sources/nope/ledger").await;
    assert_eq!(s, 404);
    for e in &entries {
        assert_eq!(e["found_by"], "eventgrid");
        let id = e["job_id"].as_i64().unwrap();
        let view = wait_done(&app.client, &app.url(""), id).await;
        assert_eq!(view["state"], "succeeded", "{view}");
        assert_eq!(view["payload"]["uploaded_by"], "source:grid");
        let (actor, event): (String, String) = sqlx::query_as(
            "SELECT actor, detail->>'event_id' FROM audit_log WHERE job_id = $1 AND action = 'source_ingest'",
        )
        .bind(id)
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
        assert_eq!(
            (actor.as_str(), event.as_str()),
            ("source:grid", e["event_id"].as_str().unwrap())
        );
    }

    // Reconcile: a blob whose event never came is found by a listing asked for by hand; the
    // ones already taken are duplicates.
    store
        .put(
            "incoming/BU-AZ2/missed.xlsx",
            sample_file("trial_balance.xlsx"),
        )
        .await
        .unwrap();
    let (s, b) = app.post("/v1/sources/grid/tick", json!({})).await;
    assert_eq!(s, 202, "{b}");
    let run = wait_listing(&app.db.pool, "grid", 0).await;
    assert_eq!(
        (
            run["trigger"].as_str(),
            run["new"].as_i64(),
            run["duplicate"].as_i64()
        ),
        (Some("manual"), Some(1), Some(1)),
        "{run}"
    );
    let found_by: String = sqlx::query_scalar(
        "SELECT found_by FROM ingest_ledger WHERE blob_key = 'incoming/BU-AZ2/missed.xlsx'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(found_by, "reconcile");
    let (actor, slot): (String, Option<String>) = sqlx::query_as(
        "SELECT a.actor, a.detail->>'slot' FROM audit_log a JOIN ingest_ledger l ON l.job_id = a.job_id
          WHERE l.blob_key = 'incoming/BU-AZ2/missed.xlsx' AND a.action = 'source_ingest'",
    )
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(actor, "source:grid");
    assert!(slot.is_some(), "a listing's job names its slot");

    // Paused: Event Grid is told to come back later, and nothing is recorded.
    let (s, _) = app.post("/v1/sources/grid/pause", json!({})).await;
    assert_eq!(s, 200);
    let (s, _) = deliver(&app, "grid", Some(SECRET), "application/json", &ev2).await;
    assert_eq!(s, 503);
    let (s, v) = app.post("/v1/sources/grid/resume", json!({})).await;
    assert_eq!((s, &v["paused"]), (200, &json!(false)));

    let (_, list) = app.get("/v1/sources").await;
    let grid = list["sources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "grid")
        .unwrap()
        .clone();
    assert_eq!(
        (grid["kind"].as_str(), grid["ledger_rows"].as_i64()),
        (Some("eventgrid"), Some(3))
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(
            "etlq_source_events_total{source=\"grid\",event_type=\"Microsoft.Storage.BlobCreated\",outcome=\"new\"} 2"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains("etlq_source_lag_seconds_count{source=\"grid\"} 3"),
        "{metrics}"
    );
    app.stop().await;
}

/// A watch source on the local directory store: listings through the slot, skips with
/// reasons, an overwrite, a drained process taking no tick, and a fleet that was down across
/// three slots catching up once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_source_lists_once_per_slot_skips_with_reasons_and_catches_up_once() {
    let db = Arc::new(TestDb::new().await);
    let tweak = |s: &mut etlq::configuration::Settings| {
        s.sources.insert(
            "gl".into(),
            spec(
                r#"kind = "watch"
                   prefix = "incoming/"
                   path = "incoming/{bu_id}/{file}"
                   connector = "trial_balance"
                   every = "2s"
                   min_age_ms = 0"#,
            ),
        );
    };
    let dir = db.blob_dir().join("incoming");
    std::fs::create_dir_all(dir.join("BU-1")).unwrap();
    let tb = sample_file("trial_balance.xlsx");
    std::fs::write(dir.join("BU-1/a.xlsx"), &tb).unwrap();
    std::fs::write(dir.join("BU-1/b.XLSX"), &tb).unwrap();
    std::fs::write(dir.join("BU-1/notes.txt"), b"not a workbook").unwrap();
    std::fs::write(dir.join("BU-1/empty.xlsx"), b"").unwrap();
    std::fs::write(dir.join("stray.xlsx"), &tb).unwrap();
    let app = spawn_app_on(db.clone(), Role::Serve, tweak).await;
    let first = wait_listing(&db.pool, "gl", 0).await;
    assert_eq!(
        (first["listed"].as_i64(), first["new"].as_i64()),
        (Some(5), Some(2)),
        "{first}"
    );
    for (reason, key) in [
        ("not_included", "incoming/BU-1/notes.txt"),
        ("empty", "incoming/BU-1/empty.xlsx"),
        ("path_mismatch", "incoming/stray.xlsx"),
    ] {
        assert_eq!(
            first["reasons"][reason]["examples"],
            json!([key]),
            "{first}"
        );
    }
    // The next slot's listing finds nothing new.
    let again = wait_listing(&db.pool, "gl", first["id"].as_i64().unwrap()).await;
    assert_eq!(
        (again["new"].as_i64(), again["duplicate"].as_i64()),
        (Some(0), Some(2)),
        "{again}"
    );

    // Overwritten in place (new mtime, so a new etag): one more job.
    tokio::time::sleep(Duration::from_millis(1100)).await; // a coarser mtime must move too
    std::fs::write(dir.join("BU-1/a.xlsx"), &tb).unwrap();
    let over = wait_for(Duration::from_secs(30), "the overwrite's listing", || {
        let pool = db.pool.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM ingest_ledger WHERE source = 'gl'")
                    .fetch_one(&pool)
                    .await
                    .ok()?;
            (n == 3).then_some(n)
        }
    })
    .await;
    assert_eq!(over, 3);
    let jobs: Vec<(i64, Option<i64>)> = sqlx::query_as(
        "SELECT id, (SELECT job_id FROM ingest_ledger l WHERE l.job_id = j.id) FROM jobs j WHERE kind = 'etl' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(jobs.len(), 3, "one job per ledger row: {jobs:?}");
    for (id, linked) in &jobs {
        assert_eq!(Some(*id), *linked);
        let view = wait_done(&app.client, &app.url(""), *id).await;
        assert_eq!(view["state"], "succeeded", "{view}");
    }

    // A drained process takes no tick, not even one asked for; on resume it runs once.
    app.lifecycle().drain();
    wait_for(Duration::from_secs(10), "SafeToStop", || async {
        (app.lifecycle().mode() == etlq::lifecycle::Mode::SafeToStop).then_some(())
    })
    .await;
    // A listing already under way when the drain began finishes; then none starts.
    wait_for(
        Duration::from_secs(10),
        "no listing in progress",
        || async {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM source_runs WHERE finished_at IS NULL")
                    .fetch_one(&db.pool)
                    .await
                    .ok()?;
            (n == 0).then_some(())
        },
    )
    .await;
    let before: i64 = sqlx::query_scalar("SELECT coalesce(max(id), 0) FROM source_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let (s, _) = app.post("/v1/sources/gl/tick", json!({})).await;
    assert_eq!(s, 202);
    let (s, _) = app.post("/v1/sources/gl/tick", json!({})).await;
    assert_eq!(s, 202, "a second click joins the pending request");
    // Three slots and many polls pass while drained.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during: i64 = sqlx::query_scalar("SELECT count(*) FROM source_runs WHERE id > $1")
        .bind(before)
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(during, 0, "a SafeToStop process listed");
    app.lifecycle().resume();
    let resumed = wait_listing(&db.pool, "gl", before).await;
    let triggers: Vec<String> = sqlx::query_scalar(
        "SELECT trigger FROM source_runs WHERE source = 'gl' AND id > $1 AND id <= $2 ORDER BY id",
    )
    .bind(before)
    .bind(resumed["id"].as_i64().unwrap())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    // The due slot (missed while drained) and the request are taken together: one listing.
    assert_eq!(triggers.len(), 1, "{triggers:?}");

    // The fleet stops across three slots (2 s each), then starts: one catch-up listing, and
    // the slot after it is in the future.
    // The watcher takes no slot from the moment the stop begins (the drain).
    let stopped_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    app.stop().await;
    tokio::time::sleep(Duration::from_millis(6500)).await;
    let last_before: i64 = sqlx::query_scalar("SELECT max(id) FROM source_runs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let restarted_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    let app = spawn_app_on(db.clone(), Role::Serve, tweak).await;
    let catch_up = wait_listing(&db.pool, "gl", last_before).await;
    let next = wait_listing(&db.pool, "gl", catch_up["id"].as_i64().unwrap()).await;
    let slots: Vec<(String, chrono::DateTime<chrono::Utc>)> = sqlx::query_as(
        "SELECT trigger, slot FROM source_runs WHERE source = 'gl' AND id > $1 AND id <= $2 ORDER BY id",
    )
    .bind(last_before)
    .bind(next["id"].as_i64().unwrap())
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert_eq!(slots.len(), 2, "{slots:?}");
    assert!(
        // The last slot taken before the stop set the next one less than a period (plus a
        // poll) before the stop began.
        slots[0].1 > stopped_at - chrono::Duration::milliseconds(2500) && slots[0].1 < restarted_at,
        "the catch-up is the first slot missed: {slots:?} (stopped {stopped_at}, restarted {restarted_at})"
    );
    assert!(
        slots[1].1 >= restarted_at,
        "then the schedule goes on from now: {slots:?}"
    );
    assert_eq!(slots_listed_twice(&db.pool).await, 0);
    let (_, v) = app.get("/v1/sources/gl").await;
    assert!(v["runs"].as_array().unwrap().len() >= 5, "{v}");

    // Run retention deletes finished runs and keeps the ledger.
    let cleaner = etlq::maintenance::SourceRunCleaner::new(
        etlq::sources::SourceStore::new(&db.pools),
        etlq::maintenance::SourceRunCleanerConfig {
            interval: Duration::from_secs(3600),
            retention: Duration::ZERO,
        },
    );
    assert!(cleaner.clean_once().await.unwrap() >= 5);
    let ledger: i64 = sqlx::query_scalar("SELECT count(*) FROM ingest_ledger WHERE source = 'gl'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(ledger, 3);
    app.stop().await;
}
