//! The ETL pipeline end to end: uploads over REST, the four stages against real PostgreSQL and
//! a real blob store, checked against values computed independently by the sample generator.

use std::collections::HashMap;
use std::str::FromStr;
use std::time::Duration;

use rust_decimal::Decimal;
use serde_json::{Value, json};
use sqlx::PgPool;

use crate::helpers::*;
use crate::samples::{self, GlLine, TbLine};
use etlq::startup::Role;

pub const JOB_TIMEOUT: Duration = Duration::from_secs(60);

/// POSTs a multipart upload; `fields` are (name, value) text fields.
pub async fn upload(
    client: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
    file_name: &str,
    fields: &[(&str, &str)],
) -> (u16, Value) {
    let mut form = reqwest::multipart::Form::new();
    for (k, v) in fields {
        form = form.text(k.to_string(), v.to_string());
    }
    form = form.part(
        "file",
        reqwest::multipart::Part::bytes(bytes).file_name(file_name.to_string()),
    );
    let r = client
        .post(format!("{base}/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Uploads a workbook that must be accepted; returns its job id.
pub async fn upload_ok(
    client: &reqwest::Client,
    base: &str,
    bytes: Vec<u8>,
    bu_id: &str,
    connector: &str,
) -> i64 {
    let fields = [("bu_id", bu_id), ("connector", connector)];
    let (status, body) = upload(client, base, bytes, "upload.xlsx", &fields).await;
    assert_eq!(status, 202, "{body}");
    body["job_id"].as_i64().unwrap()
}

pub fn sample_file(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// Every document the sink holds for a version, as (doc_id, body).
pub async fn sink_docs(pool: &PgPool, version: i64) -> Vec<(String, Value)> {
    sqlx::query_as(
        "SELECT doc_id, body FROM sink_documents WHERE dataset_version = $1 ORDER BY doc_id",
    )
    .bind(version)
    .fetch_all(pool)
    .await
    .unwrap()
}

fn dec(v: &Value) -> Decimal {
    Decimal::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("decimal as string: {v}")),
    )
    .unwrap()
}

/// Compares the sink with the generator's model, field by field and type by type.
pub fn check_gl_docs(docs: &[(String, Value)], lines: &[GlLine]) {
    assert_eq!(docs.len(), lines.len(), "one document per line item");
    let by_key: HashMap<(String, String, i64), &Value> = docs
        .iter()
        .map(|(_, b)| {
            (
                (
                    b["company_code"].as_str().unwrap().to_string(),
                    b["document"].as_str().unwrap().to_string(),
                    b["line_item"]
                        .as_i64()
                        .expect("line_item is a JSON integer"),
                ),
                b,
            )
        })
        .collect();
    assert_eq!(by_key.len(), docs.len(), "keys are unique");
    for l in lines {
        let b = by_key
            .get(&(l.company_code.clone(), l.document.clone(), l.line_item))
            .unwrap_or_else(|| panic!("row {} missing from the sink", l.row));
        assert_eq!(dec(&b["amount"]), l.amount, "row {} amount", l.row);
        assert_eq!(
            b["posting_date"],
            json!(l.posting_date.to_string()),
            "row {}",
            l.row
        );
        assert_eq!(
            b["gl_account"],
            json!(l.gl_account),
            "row {}: account as text",
            l.row
        );
        assert_eq!(b["document_type"], json!(l.document_type));
        assert_eq!(b["currency"], json!(l.currency));
        assert_eq!(b["text"], json!(l.text), "row {} text", l.row);
        assert_eq!(b.as_object().unwrap().len(), 9, "row {}: {b}", l.row);
    }
}

pub fn check_tb_docs(docs: &[(String, Value)], lines: &[TbLine]) {
    assert_eq!(docs.len(), lines.len());
    let by_account: HashMap<&str, &Value> = docs
        .iter()
        .map(|(_, b)| (b["account"].as_str().unwrap(), b))
        .collect();
    for l in lines {
        let b = by_account[l.account.as_str()];
        assert_eq!(b["name"], json!(l.name));
        assert_eq!(b["period_end"], json!(l.period_end.to_string()));
        assert_eq!(dec(&b["opening"]), l.opening, "{}", l.account);
        assert_eq!(
            b["debit"].as_str().map(|_| dec(&b["debit"])),
            l.debit,
            "{}",
            l.account
        );
        assert_eq!(
            b["credit"].as_str().map(|_| dec(&b["credit"])),
            l.credit,
            "{}",
            l.account
        );
        assert_eq!(dec(&b["closing"]), l.closing, "{} closing", l.account);
        assert_eq!(b["active"].as_bool(), l.active, "{} active", l.account);
    }
}

/// Waits for a job to finish and returns its REST view.
pub async fn wait_done(client: &reqwest::Client, base: &str, id: i64) -> Value {
    wait_for(JOB_TIMEOUT, &format!("job {id} to finish"), || async {
        let v: Value = client
            .get(format!("{base}/v1/jobs/{id}"))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        matches!(
            v["state"].as_str(),
            Some("succeeded" | "dead" | "cancelled")
        )
        .then_some(v)
    })
    .await
}

pub async fn counter(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT counter FROM cache_manifest")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploaded_samples_are_extracted_synced_verified_and_promoted() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Serve, |s| {
        s.etl.superseded_retention_hours = 0;
        s.etl.superseded_cleanup_interval_ms = 200;
    })
    .await;
    let base = app.url("");
    let pool = app.db.pool.clone();

    // G/L export: title rows, subtotals, German number formats, two rows with a bad date.
    let gl = samples::gl_export(120, 2);
    let (status, body) = upload(
        &app.client,
        &base,
        sample_file("sap_fbl3n.xlsx"),
        "FBL3N export.xlsx",
        &[("bu_id", "BU-1000"), ("connector", "sap_fbl3n")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let gl_job = body["job_id"].as_i64().unwrap();
    assert_eq!(body["status_url"], format!("/v1/jobs/{gl_job}"));
    let view = wait_done(&app.client, &base, gl_job).await;
    assert_eq!(view["state"], "succeeded", "{view}");
    check_gl_docs(&sink_docs(&pool, gl_job).await, &gl.lines);
    let report = &view["report"];
    assert_eq!(report["records"], gl.lines.len());
    assert_eq!(report["rejected_rows"], 2);
    assert_eq!(report["skipped_rows"], gl.skipped);
    assert_eq!(report["header_row"], 5);
    assert_eq!(view["checkpoint"]["verify"]["count"], gl.lines.len());
    assert_eq!(view["checkpoint"]["promote"]["outcome"], "promoted");

    // Rejected rows, with sheet, row and column, in the run's artifact.
    let blobs = app.db.blob_dir();
    let rejected =
        std::fs::read_to_string(blobs.join(format!("runs/{gl_job}/rejected.ndjson"))).unwrap();
    let rejected: Vec<Value> = rejected
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let got: Vec<(usize, String)> = rejected
        .iter()
        .map(|r| {
            assert_eq!(r["sheet"], "GL");
            assert_eq!(r["value"], "31.02.2025");
            (
                r["row"].as_u64().unwrap() as usize,
                r["column"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let want: Vec<(usize, String)> = gl
        .rejected
        .iter()
        .map(|(r, c)| (*r, c.to_string()))
        .collect();
    assert_eq!(got, want);

    // The same rows over REST, a page at a time.
    let page = |q: &str| {
        let url = format!("{base}/v1/jobs/{gl_job}/rejected{q}");
        let client = app.client.clone();
        async move {
            let r = client.get(url).send().await.unwrap();
            (r.status().as_u16(), r.json::<Value>().await.unwrap())
        }
    };
    let (status, first) = page("?limit=1").await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["total"].as_u64(), first["limit"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(first["rejected"].as_array().unwrap().len(), 1);
    let (_, second) = page("?offset=1&limit=1").await;
    let over_rest: Vec<(usize, String)> = [&first, &second]
        .iter()
        .map(|p| {
            let r = &p["rejected"][0];
            (
                r["row"].as_u64().unwrap() as usize,
                r["column"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(over_rest, want);
    assert_eq!(page("?offset=5").await.1["rejected"], json!([]));
    let (status, e) = page("?limit=0").await;
    assert_eq!(
        (status, e["error"]["code"].as_str()),
        (422, Some("unprocessable")),
        "{e}"
    );
    let (status, e) = page("?limit=x").await;
    assert_eq!(status, 400, "{e}");
    let noop = app.enqueue("noop", json!({})).await;
    let r = app
        .client
        .get(format!("{base}/v1/jobs/{noop}/rejected"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "not_an_etl_job"
    );

    // Promoted: manifest, counter, latest artifacts.
    let (version, records): (i64, i64) = sqlx::query_as(
        "SELECT version, records FROM dataset_manifests WHERE bu_id = 'BU-1000' AND connector = 'sap_fbl3n'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((version, records), (gl_job, gl.lines.len() as i64));
    assert_eq!(counter(&pool).await, 1);
    let manifest: Value = serde_json::from_slice(
        &std::fs::read(blobs.join("latest/BU-1000/sap_fbl3n/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["version"], gl_job);
    assert_eq!(
        std::fs::read(blobs.join("latest/BU-1000/sap_fbl3n/records.ndjson")).unwrap(),
        std::fs::read(blobs.join(format!("runs/{gl_job}/records.ndjson"))).unwrap()
    );

    // Trial balance: parentheses negatives, blanks, booleans as cells and text.
    let tb = samples::trial_balance(40);
    let tb_file = sample_file("trial_balance.xlsx");
    let tb_job = upload_ok(&app.client, &base, tb_file, "BU-1000", "trial_balance").await;
    assert_eq!(
        wait_done(&app.client, &base, tb_job).await["state"],
        "succeeded"
    );
    check_tb_docs(&sink_docs(&pool, tb_job).await, &tb.lines);
    assert_eq!(counter(&pool).await, 2);

    // A newer G/L upload supersedes the first; the cleaner removes the old version.
    let gl2 = upload_ok(&app.client, &base, gl.bytes.clone(), "BU-1000", "sap_fbl3n").await;
    let view = wait_done(&app.client, &base, gl2).await;
    assert_eq!(view["checkpoint"]["promote"]["previous_version"], gl_job);
    check_gl_docs(&sink_docs(&pool, gl2).await, &gl.lines);
    assert_eq!(counter(&pool).await, 3);
    wait_for(
        Duration::from_secs(20),
        "the superseded version to be deleted",
        || async {
            let left = sink_docs(&pool, gl_job).await.len();
            let gone = !blobs
                .join(format!("runs/{gl_job}"))
                .join("records.ndjson")
                .exists();
            (left == 0 && gone).then_some(())
        },
    )
    .await;
    assert_eq!(
        sink_docs(&pool, gl2).await.len(),
        gl.lines.len(),
        "the promoted version stays"
    );

    // Audit: the upload with its actor, each stage with the worker build that ran it.
    let trail: Vec<(String, Option<String>, String, Option<String>)> = sqlx::query_as(
        "SELECT action, stage, source, on_behalf_of FROM audit_trail WHERE job_id = $1 ORDER BY at",
    )
    .bind(gl_job)
    .fetch_all(&pool)
    .await
    .unwrap();
    let upload_row = trail
        .iter()
        .find(|t| t.0 == "upload")
        .expect("upload audited");
    assert!(upload_row.2.starts_with("etlq-api/"), "{trail:?}");
    assert!(
        trail
            .iter()
            .filter(|t| t.1.is_some())
            .all(|t| t.2.starts_with("etlq-worker/")),
        "{trail:?}"
    );
    let stages: Vec<&str> = trail
        .iter()
        .filter(|t| t.0 == "stage_completed")
        .map(|t| t.1.as_deref().unwrap())
        .collect();
    assert_eq!(stages, ["extract", "sync", "verify", "promote"]);
    assert!(
        trail.iter().all(|t| t.3.as_deref() == Some("anonymous")),
        "{trail:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn bad_uploads_get_clear_errors_and_leave_nothing_behind() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Api, |s| {
        s.etl.max_upload_bytes = 32 * 1024;
    })
    .await;
    let base = app.url("");
    let gl = sample_file("sap_fbl3n.xlsx");
    let ok = [("bu_id", "BU-1"), ("connector", "sap_fbl3n")];
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_string();

    let mut big = b"PK\x03\x04".to_vec();
    big.resize(100 * 1024, b'x');
    let (s, b) = upload(&app.client, &base, big, "big.xlsx", &ok).await;
    assert_eq!((s, code(&b).as_str()), (413, "payload_too_large"), "{b}");

    let (s, b) = upload(
        &app.client,
        &base,
        gl.clone(),
        "a.xlsx",
        &[("bu_id", "BU-1"), ("connector", "oracle")],
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (422, "unknown_connector"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .contains("sap_fbl3n"),
        "{b}"
    );

    let (s, b) = upload(
        &app.client,
        &base,
        gl.clone(),
        "a.xlsx",
        &[("bu_id", "../etc"), ("connector", "sap_fbl3n")],
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (422, "invalid_bu_id"), "{b}");

    let (s, b) = upload(
        &app.client,
        &base,
        b"<!DOCTYPE html><html><body><p>Session expired, log in again</p></body></html>".to_vec(),
        "gl.xls",
        &ok,
    )
    .await;
    assert_eq!((s, code(&b).as_str()), (422, "not_a_workbook"), "{b}");
    assert!(
        b["error"]["message"]
            .as_str()
            .unwrap()
            .starts_with("the file is an HTML page without a table"),
        "{b}"
    );

    let (s, b) = upload(&app.client, &base, Vec::new(), "empty.xlsx", &ok).await;
    assert_eq!(s, 422, "{b}");
    assert_eq!(b["error"]["message"], "the file is empty");

    let form = reqwest::multipart::Form::new()
        .text("bu_id", "BU-1")
        .text("connector", "sap_fbl3n");
    let r = app
        .client
        .post(format!("{base}/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = app
        .client
        .post(format!("{base}/v1/uploads"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400, "not multipart");

    // Fields after the file are checked too, and the stored file is removed again.
    let form = reqwest::multipart::Form::new()
        .part(
            "file",
            reqwest::multipart::Part::bytes(gl.clone()).file_name("a.xlsx"),
        )
        .text("bu_id", "BU 1")
        .text("connector", "sap_fbl3n");
    let r = app
        .client
        .post(format!("{base}/v1/uploads"))
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 422);

    let blobs = app.db.blob_dir();
    let stored = || {
        let dir = blobs.join("uploads");
        let mut n = 0;
        let mut stack = vec![dir];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.file_type().unwrap().is_dir() {
                    stack.push(e.path());
                } else {
                    n += 1;
                }
            }
        }
        n
    };
    assert_eq!(stored(), 0, "refused uploads leave no blob");

    // A hostile file name never becomes a path; the same idempotency key gives the same job.
    let with_key = [
        ("bu_id", "BU-1"),
        ("connector", "sap_fbl3n"),
        ("idempotency_key", "erp-2026-01"),
    ];
    let (s, first) = upload(
        &app.client,
        &base,
        gl.clone(),
        "../../../etc/passwd.xlsx",
        &with_key,
    )
    .await;
    assert_eq!(s, 202, "{first}");
    let (s, second) = upload(&app.client, &base, gl.clone(), "x.xlsx", &with_key).await;
    assert_eq!(s, 202);
    assert_eq!(first["job_id"], second["job_id"]);
    assert_eq!(
        (first["created"].as_bool(), second["created"].as_bool()),
        (Some(true), Some(false))
    );
    assert_eq!(stored(), 1, "the duplicate upload's blob was removed");
    let job = app
        .store()
        .get(first["job_id"].as_i64().unwrap())
        .await
        .unwrap();
    let key = job.payload["source_blob"].as_str().unwrap();
    assert!(
        key.starts_with("uploads/") && key.ends_with(".xlsx") && !key.contains(".."),
        "{key}"
    );
    assert_eq!(job.payload["file_name"], "../../../etc/passwd.xlsx");
    assert_eq!(std::fs::read(blobs.join(key)).unwrap(), gl);

    // POST /v1/jobs for a blob already in the store.
    std::fs::create_dir_all(blobs.join("incoming")).unwrap();
    std::fs::write(blobs.join("incoming/gl.xlsx"), &gl).unwrap();
    std::fs::write(blobs.join("incoming/notes.txt"), "%PDF-1.4\n").unwrap();
    let job = |src: &str| json!({"bu_id": "BU-1", "connector": "sap_fbl3n", "source_blob": src});
    let (s, b) = app.post("/v1/jobs", job("incoming/gl.xlsx")).await;
    assert_eq!(s, 202, "{b}");
    for (src, status, c) in [
        ("../incoming/gl.xlsx", 400, "bad_request"),
        ("/etc/passwd", 400, "bad_request"),
        ("incoming/missing.xlsx", 422, "source_blob_not_found"),
        ("incoming/notes.txt", 422, "not_a_workbook"),
    ] {
        let (s, b) = app.post("/v1/jobs", job(src)).await;
        assert_eq!((s, code(&b).as_str()), (status, c), "{src}: {b}");
    }
    let (s, b) = app
        .post("/v1/jobs", json!({"bu_id": "BU-1", "connector": "sap_fbl3n", "source_blob": "incoming/gl.xlsx", "extra": 1}))
        .await;
    assert_eq!(s, 422, "{b}");
    app.stop().await;
}

/// The same pipeline with Azure Blob Storage (Azurite, started by `scripts/test`) as the blob
/// store; the container does not exist beforehand, so startup must create it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_azure_blob_storage() {
    let endpoint = service_env(
        "ETLQ_TEST_AZURITE",
        "Azurite, e.g. http://127.0.0.1:10000/devstoreaccount1",
    );
    let container = format!("etlq-{}", uuid::Uuid::new_v4().simple());
    let blob = etlq::configuration::BlobSettings {
        url: format!("az://{container}/tenant-a"),
        azure: etlq::configuration::AzureSettings {
            use_emulator: true,
            endpoint: endpoint.clone(),
            ..Default::default()
        },
    };
    let settings = blob.clone();
    let app = spawn_app_on(
        std::sync::Arc::new(TestDb::new().await),
        Role::Serve,
        move |s| {
            s.blob = settings;
        },
    )
    .await;
    let base = app.url("");
    let gl = samples::gl_export(120, 2);
    let id = upload_ok(
        &app.client,
        &base,
        sample_file("sap_fbl3n.xlsx"),
        "BU-AZ",
        "sap_fbl3n",
    )
    .await;
    let view = wait_done(&app.client, &base, id).await;
    assert_eq!(view["state"], "succeeded", "{view}");
    check_gl_docs(&sink_docs(&app.db.pool, id).await, &gl.lines);

    // What landed in the container, read back through a second client.
    let store = etlq::storage::BlobStore::open(&blob).await.unwrap();
    let keys = store.list("").await.unwrap();
    let source = view["payload"]["source_blob"].as_str().unwrap();
    for want in [
        source.to_string(),
        format!("runs/{id}/records.ndjson"),
        format!("runs/{id}/rejected.ndjson"),
        format!("runs/{id}/report.json"),
        "latest/BU-AZ/sap_fbl3n/records.ndjson".into(),
        "latest/BU-AZ/sap_fbl3n/manifest.json".into(),
    ] {
        assert!(keys.contains(&want), "{want} missing from {keys:?}");
    }
    let manifest: Value = serde_json::from_slice(
        &store
            .get("latest/BU-AZ/sap_fbl3n/manifest.json")
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["version"], id);

    // A blob put there by another producer, enqueued with POST /v1/jobs; and a damaged one.
    store
        .put("incoming/tb.xlsx", sample_file("trial_balance.xlsx"))
        .await
        .unwrap();
    let mut broken = sample_file("trial_balance.xlsx");
    broken.truncate(3000);
    store.put("incoming/broken.xlsx", broken).await.unwrap();
    let mut ids = Vec::new();
    for src in ["incoming/tb.xlsx", "incoming/broken.xlsx"] {
        let (s, b) = app
            .post(
                "/v1/jobs",
                json!({"bu_id": "BU-AZ", "connector": "trial_balance", "source_blob": src}),
            )
            .await;
        assert_eq!(s, 202, "{b}");
        ids.push(b["job_id"].as_i64().unwrap());
    }
    let tb = wait_done(&app.client, &base, ids[0]).await;
    assert_eq!(tb["state"], "succeeded", "{tb}");
    check_tb_docs(
        &sink_docs(&app.db.pool, ids[0]).await,
        &samples::trial_balance(40).lines,
    );
    let broken = wait_done(&app.client, &base, ids[1]).await;
    assert_eq!(broken["state"], "dead");
    assert!(
        broken["last_error"]
            .as_str()
            .unwrap()
            .contains("damaged or truncated"),
        "{broken}"
    );
    app.stop().await;
}
