//! ETL jobs that must fail, and fail alone: hostile workbooks enqueued past the API's checks,
//! a source blob that is gone, a sink that breaks and recovers.

use std::time::Duration;

use serde_json::json;

use crate::etl::*;
use crate::helpers::*;
use crate::samples;
use etlq::queue::JobState;
use etlq::startup::Role;

/// A workbook that inflates to ~1 MB of XML from a few KB.
fn zip_bomb() -> Vec<u8> {
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    ws.set_name("GL").unwrap();
    for r in 0..20_000 {
        ws.write_string(r, 0, "same text in every row").unwrap();
    }
    wb.save_to_buffer().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_workbooks_fail_with_their_error_and_other_jobs_finish() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Serve, |s| {
        s.etl.max_inflated_bytes = 512 * 1024;
    })
    .await;
    let blobs = app.db.blob_dir();
    std::fs::create_dir_all(blobs.join("in")).unwrap();
    let gl = sample_file("sap_fbl3n.xlsx");
    let mut truncated = gl.clone();
    truncated.truncate(gl.len() / 2);
    let mut corrupt = gl.clone();
    for b in corrupt.iter_mut().skip(100).step_by(7) {
        *b = b.wrapping_add(101);
    }
    let mut renamed = rust_xlsxwriter::Workbook::new();
    let ws = renamed.add_worksheet();
    ws.set_name("GL").unwrap();
    for (c, h) in [
        "Company Code",
        "G/L Account",
        "Document Number",
        "Line Item",
        "Currency",
    ]
    .iter()
    .enumerate()
    {
        ws.write_string(3, c as u16, *h).unwrap();
    }
    let encrypted = std::fs::read(format!(
        "{}/tests/fixtures/encrypted.xlsx",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap();
    let cases: Vec<(&str, Vec<u8>, &str, &str)> = vec![
        (
            "truncated",
            truncated,
            "sap_fbl3n",
            "the workbook is damaged or truncated",
        ),
        (
            "corrupt",
            corrupt,
            "sap_fbl3n",
            "the workbook is damaged or truncated",
        ),
        (
            "encrypted",
            encrypted,
            "trial_balance",
            "the workbook is password-protected (encrypted)",
        ),
        ("empty", Vec::new(), "sap_fbl3n", "the file is empty"),
        (
            "pdf",
            b"%PDF-1.7\n1 0 obj".to_vec(),
            "sap_fbl3n",
            "the file is a PDF document, not a workbook",
        ),
        (
            "tb_as_gl",
            sample_file("trial_balance.xlsx"),
            "sap_fbl3n",
            "sheet \"GL\" not found; the workbook has [\"TB\"]",
        ),
        (
            "renamed",
            renamed.save_to_buffer().unwrap(),
            "sap_fbl3n",
            "header row not found in sheet \"GL\": missing \"Posting Date\", \"Amount in LC\" in the first 20 rows",
        ),
        ("bomb", zip_bomb(), "sap_fbl3n", "(possible zip bomb)"),
    ];
    // Enqueued straight into the store: the worker must hold up even when the API's own
    // checks are bypassed (a blob replaced after the upload, another producer).
    let mut jobs = Vec::new();
    for (name, bytes, connector, _) in &cases {
        std::fs::write(blobs.join(format!("in/{name}.xlsx")), bytes).unwrap();
        let payload = json!({"bu_id": "BU-9", "connector": connector, "source_blob": format!("in/{name}.xlsx")});
        jobs.push(app.enqueue("etl", payload).await);
    }
    let good = upload_ok(&app.client, &app.url(""), gl, "BU-9", "sap_fbl3n").await;
    for (id, (name, _, _, want)) in jobs.iter().zip(&cases) {
        let v = wait_done(&app.client, &app.url(""), *id).await;
        assert_eq!(v["state"], "dead", "{name}: {v}");
        assert_eq!(v["attempts"], 1, "{name}: not retried");
        let err = v["last_error"].as_str().unwrap();
        assert!(err.starts_with("extract: "), "{name}: {err}");
        assert!(
            err.contains(want),
            "{name}: {err:?} should contain {want:?}"
        );
        let dl: (String, String) =
            sqlx::query_as("SELECT failed_stage, reason FROM dead_letters WHERE job_id = $1")
                .bind(id)
                .fetch_one(&app.db.pool)
                .await
                .unwrap();
        assert_eq!(dl.0, "extract");
    }
    let v = wait_done(&app.client, &app.url(""), good).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(counter(&app.db.pool).await, 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_source_blob_is_fatal_and_a_broken_sink_is_retried() {
    let app = spawn_app_on(
        std::sync::Arc::new(TestDb::new().await),
        Role::Serve,
        |_| {},
    )
    .await;
    let id = app
        .enqueue(
            "etl",
            json!({"bu_id": "B", "connector": "trial_balance", "source_blob": "nowhere/x.xlsx"}),
        )
        .await;
    let v = wait_done(&app.client, &app.url(""), id).await;
    assert_eq!(v["state"], "dead");
    assert!(
        v["last_error"]
            .as_str()
            .unwrap()
            .contains("nowhere/x.xlsx not found"),
        "{v}"
    );

    // The sink refuses to create the version's table for a while: sync is retried with
    // backoff, then succeeds.
    sqlx::query(
        "CREATE FUNCTION refuse() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN IF current_query() LIKE 'CREATE TABLE sink_documents_v%' THEN RAISE EXCEPTION USING ERRCODE = '53300', MESSAGE = 'sink overloaded'; END IF; END $$",
    )
    .execute(&app.db.pool)
    .await
    .unwrap();
    sqlx::query("CREATE EVENT TRIGGER refuse ON ddl_command_start WHEN TAG IN ('CREATE TABLE') EXECUTE FUNCTION refuse()")
        .execute(&app.db.pool)
        .await
        .unwrap();
    let tb_file = sample_file("trial_balance.xlsx");
    let id = upload_ok(&app.client, &app.url(""), tb_file, "B", "trial_balance").await;
    wait_for(Duration::from_secs(20), "a sync retry", || async {
        let job = app.store().get(id).await.ok()?;
        (job.attempts >= 2).then_some(())
    })
    .await;
    let job = app.store().get(id).await.unwrap();
    assert!(
        job.last_error
            .as_deref()
            .unwrap()
            .starts_with("sync: sink unavailable"),
        "{:?}",
        job.last_error
    );
    sqlx::query("DROP EVENT TRIGGER refuse")
        .execute(&app.db.pool)
        .await
        .unwrap();
    require_state(&app.store(), id, JobState::Succeeded, JOB_TIMEOUT).await;
    check_tb_docs(
        &sink_docs(&app.db.pool, id).await,
        &samples::trial_balance(40).lines,
    );
    let extracts: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1 AND event = 'stage_completed' AND stage = 'extract'",
    )
    .bind(id)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(extracts, 1, "retries resume at the checkpoint");
    app.stop().await;
}

/// One text cell holding a NUL (`_x0000_` in the sheet XML, as Excel writes a control
/// character) used to fail the whole upload at sync with PostgreSQL's own text. It is stored
/// as U+FFFD, the other rows with it, and no sink text ever reaches a job's error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nul_character_in_a_cell_costs_no_row() {
    let app = spawn_app().await;
    let mut wb = rust_xlsxwriter::Workbook::new();
    let ws = wb.add_worksheet();
    let headers = [
        "Account",
        "Account Name",
        "Period End",
        "Opening Balance",
        "Closing Balance",
    ];
    for (c, h) in headers.iter().enumerate() {
        ws.write_string(0, c as u16, *h).unwrap();
    }
    for r in 1..=20u32 {
        let name = if r == 7 {
            "Bank\u{0}Account".to_string()
        } else {
            format!("Account {r}")
        };
        ws.write_string(r, 0, (1000 + r).to_string()).unwrap();
        ws.write_string(r, 1, &name).unwrap();
        ws.write_string(r, 2, "2025-12-31").unwrap();
        ws.write_number(r, 3, 1.5).unwrap();
        ws.write_number(r, 4, 2.5).unwrap();
    }
    let bytes = wb.save_to_buffer().unwrap();
    let job = upload_ok(&app.client, &app.url(""), bytes, "BU-1", "trial_balance").await;
    let v = wait_done(&app.client, &app.url(""), job).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let docs = sink_docs(&app.db.pool, job).await;
    assert_eq!(docs.len(), 20, "every row kept");
    let names: Vec<&str> = docs
        .iter()
        .map(|(_, b)| b["name"].as_str().unwrap())
        .collect();
    assert!(names.contains(&"Bank\u{FFFD}Account"), "{names:?}");
    app.stop().await;
}
