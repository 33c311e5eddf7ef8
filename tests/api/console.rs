//! The operator console in a real headless Chromium (issue 10): upload through the form and
//! watch the job land, its timeline and rejected rows, escaping of a hostile file name, a
//! token-less action refused, filters kept in the URL across a reload, bulk cancel with a
//! count confirmation, a dead letter retried from its page, and the process drained and
//! resumed from the overview by keyboard, a running stage's progress bar and Cancel on the
//! job's page; a dataset's changes and a rollback behind its confirmation. Screenshots:
//! target/tmp/console-screenshots/.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::browser::Browser;
use crate::etl::{JOB_TIMEOUT, sample_file, upload};
use crate::helpers::{TestApp, TestDb, require_state, spawn_app_on, wait_for};
use crate::samples;
use etlq::lifecycle::Mode;
use etlq::queue::JobState;
use etlq::startup::Role;

const TOKEN: &str = "console-test-token-0123456789";
/// A token that may only read.
const VIEWER: &str = "console-viewer-token-0123456789";
const XSS_NAME: &str = "<script>alert(1)</script>.xlsx";

async fn console_app() -> TestApp {
    spawn_app_on(Arc::new(TestDb::new().await), Role::Serve, |s| {
        s.api.tokens.insert("ops".into(), TOKEN.into());
        // ETL jobs hold inside sync after their first batch (the `test` kind never syncs), so
        // a running stage's progress can be watched and the job cancelled from its page.
        // (The suite runs with the test aids; without them the tests only have to build.)
        #[cfg(feature = "test-aids")]
        {
            s.testing.pause_stage = "sync".into();
            s.testing.pause_in_stage_ms = 60_000;
        }
    })
    .await
}

/// A REST client that sends the console's token.
fn token_client() -> reqwest::Client {
    crate::helpers::bearer_client(TOKEN)
}

async fn use_token(b: &Browser) {
    b.type_into("#token", TOKEN).await;
    b.click("#token-save").await;
    b.wait_text("#token-state", |t| t.contains("token set"))
        .await;
}

async fn assert_accessible(b: &Browser, page: &str) {
    let bad = b.unlabelled_or_untabbable().await;
    assert!(bad.is_empty(), "{page}: {bad:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_uploads_a_workbook_shows_its_timeline_and_rejected_rows_and_escapes_names() {
    let app = spawn_app_on(Arc::new(TestDb::new().await), Role::Serve, |s| {
        s.api.tokens.insert("ops".into(), TOKEN.into());
        s.api.tokens.insert(
            "viewer".into(),
            etlq::configuration::ApiToken::with_roles(
                VIEWER,
                &[etlq::configuration::TokenRole::Read],
            ),
        );
    })
    .await;
    let base = app.url("");
    let mut b = Browser::start("upload_detail_escaping").await;

    // A job whose file name is markup, uploaded over REST.
    let (status, body) = upload(
        &token_client(),
        &base,
        sample_file("trial_balance.xlsx"),
        XSS_NAME,
        &[("bu_id", "BU-2000"), ("connector", "trial_balance")],
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let xss_job = body["job_id"].as_i64().unwrap();

    // The page is served with its assets under a content hash and a strict CSP.
    let r = reqwest::get(format!("{base}/")).await.unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = r.text().await.unwrap();
    let script = html
        .split("src=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap()
        .to_string();
    assert!(
        script.starts_with("/console/") && script.ends_with("/app.js"),
        "{script}"
    );
    let r = reqwest::get(format!("{base}{script}")).await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        r.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let stale = reqwest::get(format!("{base}/console/0000000000000000/app.js"))
        .await
        .unwrap();
    assert_eq!(stale.status(), 404);

    // Overview: reads need a token here, so the console asks for one; a read-only token
    // is enough to see.
    b.goto(&format!("{base}/")).await;
    b.wait_text("#prompt-why", |t| t.contains("behind an API token"))
        .await;
    assert_accessible(&b, "token prompt").await;
    b.type_into("#prompt-token", VIEWER).await;
    b.click("#prompt-save").await;
    b.wait_find("#counts").await;
    b.wait_find("svg.chart").await;
    assert_accessible(&b, "overview").await;
    // The icon a browser asks for on its own is served (a 404 is an error in its console).
    let icon = app
        .client
        .get(format!("{base}/favicon.ico"))
        .send()
        .await
        .unwrap();
    assert_eq!(icon.status(), 200);
    assert_eq!(icon.headers()["content-type"], "image/svg+xml");
    b.shot("overview").await;

    // Upload with the read-only token: refused, and the page says why.
    let sample = format!("{}/samples/sap_fbl3n.xlsx", env!("CARGO_MANIFEST_DIR"));
    b.goto(&format!("{base}/#/upload")).await;
    b.wait_find("#u-connector option[value=sap_fbl3n]").await;
    assert_accessible(&b, "upload").await;
    for id in ["u-file", "u-bu", "u-connector", "u-submit"] {
        b.tab_to(id).await;
    }
    b.find("#u-file").await.send_keys(&sample).await.unwrap();
    b.type_into("#u-bu", "BU-1000").await;
    b.js("const s = document.getElementById('u-connector'); s.value = 'sap_fbl3n';")
        .await;
    b.click("#u-submit").await;
    b.wait_text("#upload-said", |t| {
        t.contains("does not have the operate role")
    })
    .await;

    // With the token: a preview first (no job), then the job, followed until it has
    // succeeded.
    use_token(&b).await;
    b.click("#u-preview").await;
    b.wait_text("#preview-verdict", |t| {
        t.starts_with("this upload would succeed")
    })
    .await;
    let matched = b
        .js("return document.querySelector('#preview-columns').textContent;")
        .await;
    assert!(
        matched.as_str().unwrap().contains("Amount in LC"),
        "{matched}"
    );
    let previewed_rows = b
        .js("return document.querySelectorAll('#preview-rows tbody tr').length;")
        .await;
    assert_eq!(previewed_rows, 50, "the first 50 typed records");
    b.shot("preview").await;
    b.click("#u-submit").await;
    b.wait_text("#upload-state", |t| t == "succeeded").await;
    let gl_job: i64 = b
        .js("return document.querySelector('#upload-job a').dataset.job;")
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    b.shot("upload").await;

    // Its page: timeline with a bar per stage, the report, the rejected rows, downloads.
    b.click("#upload-job a").await;
    b.wait_find("#timeline").await;
    let completed = b
        .wait_js(
            "four stages in the timeline",
            "const n = document.querySelectorAll('#timeline tr[data-event=stage_completed]').length; return n === 4 ? n : null;",
        )
        .await;
    assert_eq!(completed, json!(4));
    let segments = b
        .js("return [...document.querySelectorAll('#stage-bar .seg')].map(s => s.textContent);")
        .await;
    assert_eq!(segments, json!(["extract", "sync", "verify", "promote"]));
    let gl = samples::gl_export(120, 2);
    assert_eq!(
        b.text("[data-report=records]").await,
        gl.lines.len().to_string()
    );
    b.wait_text("#rejected-count", |t| t.contains("of 2")).await;
    let rejected = b
        .js("return [...document.querySelectorAll('#rejected tbody tr')].map(r => [...r.cells].map(c => c.textContent));")
        .await;
    let rejected = rejected.as_array().unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    for row in rejected {
        assert!(!row[0].as_str().unwrap().is_empty(), "sheet: {row}");
        assert!(
            row[1].as_str().unwrap().parse::<u32>().is_ok(),
            "row: {row}"
        );
        assert!(!row[4].as_str().unwrap().is_empty(), "reason: {row}");
    }
    let href = b
        .find("#rej-download")
        .await
        .attr("href")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(href, format!("/v1/jobs/{gl_job}/artifacts/rejected.ndjson"));
    assert_eq!(
        reqwest::get(format!("{base}{href}"))
            .await
            .unwrap()
            .status(),
        401,
        "a company's rejected rows are not open"
    );
    let download = token_client()
        .get(format!("{base}{href}"))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert!(
        download.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .contains("attachment")
    );
    assert_eq!(download.text().await.unwrap().lines().count(), 2);
    assert_accessible(&b, "job detail").await;
    b.shot("job-detail").await;

    // The hostile file name is shown as text, never run or parsed.
    b.goto(&format!("{base}/#/jobs")).await;
    let cell = format!("tr[data-job-row='{xss_job}'] td.file-name");
    b.wait_text(&cell, |t| t == XSS_NAME).await;
    let scripts = b
        .js("return document.querySelectorAll('script').length;")
        .await;
    assert_eq!(
        scripts,
        json!(1),
        "only the console's own script is in the page"
    );
    assert!(
        b.client.get_alert_text().await.is_err(),
        "an alert is open: the file name ran"
    );
    assert_accessible(&b, "jobs").await;
    b.shot("jobs").await;
    b.goto(&format!("{base}/#/jobs/{xss_job}")).await;
    b.wait_text("[data-fact=file]", |t| t == XSS_NAME).await;
    assert_eq!(b.text("[data-fact=bu_id]").await, "BU-2000");
    assert!(b.client.get_alert_text().await.is_err());

    // Datasets: the promoted version of the upload, with its job.
    crate::etl::wait_done(&token_client(), &base, xss_job).await;
    b.goto(&format!("{base}/#/datasets")).await;
    let ds = b.wait_find("[data-dataset='BU-1000/sap_fbl3n']").await;
    let text = ds.text().await.unwrap();
    assert!(text.contains(&format!("#{gl_job}")), "{text}");
    assert!(text.contains(&gl.lines.len().to_string()), "{text}");
    b.wait_text("#cache-counter", |t| t.parse::<i64>().is_ok_and(|n| n >= 1))
        .await;
    assert_accessible(&b, "datasets").await;
    b.shot("datasets").await;

    // Sources: the embedded `inbox` example takes a file dropped under inbox/{bu_id}/ when
    // Tick is clicked; its ledger row links to the job it became.
    let dropped = app.db.blob_dir().join("inbox/BU-5000/tb.xlsx");
    std::fs::create_dir_all(dropped.parent().unwrap()).unwrap();
    std::fs::write(&dropped, sample_file("trial_balance.xlsx")).unwrap();
    // Older than the source's min_age_ms: written and closed a minute ago.
    std::fs::File::options()
        .write(true)
        .open(&dropped)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    b.goto(&format!("{base}/#/sources")).await;
    b.wait_find("tr[data-source=inbox]").await;
    assert_accessible(&b, "sources").await;
    b.click("#source-inbox-tick").await;
    b.wait_text("#toast", |t| t.contains("Listing of inbox requested"))
        .await;
    b.goto(&format!("{base}/#/sources/inbox")).await;
    let row = b.wait_find("#ledger tr[data-ledger]").await;
    let text = row.text().await.unwrap();
    assert!(
        text.contains("inbox/BU-5000/tb.xlsx") && text.contains("watch"),
        "{text}"
    );
    let job: i64 = b
        .wait_js(
            "the ledger row's job link",
            "const a = document.querySelector('#ledger tr[data-ledger] a[data-job]'); return a ? a.dataset.job : null;",
        )
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let owner: String = sqlx::query_scalar(
        "SELECT payload->>'uploaded_by' FROM jobs WHERE id = $1 AND payload->>'bu_id' = 'BU-5000'",
    )
    .bind(job)
    .fetch_one(&app.db.pool)
    .await
    .unwrap();
    assert_eq!(owner, "source:inbox");
    b.wait_text("#ledger tr[data-ledger] .badge", |t| t == "succeeded")
        .await;
    b.wait_find("#runs tr[data-run]").await;
    assert_accessible(&b, "source detail").await;
    b.shot("source-detail").await;

    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_drains_and_resumes_by_keyboard_keeps_filters_in_the_url_and_retries_dead_letters()
{
    let app = console_app().await;
    let base = app.url("");
    let store = app.store();
    let me = app.app.as_ref().unwrap().state.identity.id.clone();
    let mut b = Browser::start("fleet_filters_dead_letters").await;
    b.goto(&format!("{base}/")).await;
    b.wait_find("#token-prompt").await;
    b.type_into("#prompt-token", TOKEN).await;
    b.click("#prompt-save").await;
    b.wait_text("#token-state", |t| t.contains("token set"))
        .await;

    // Drain this process from the overview, by keyboard only.
    let drain = format!("drain-{me}");
    b.wait_find(&format!("tr[data-worker='{me}']")).await;
    b.tab_to(&drain).await;
    b.press_enter().await;
    wait_for(Duration::from_secs(10), "the process to drain", || async {
        (app.lifecycle().mode() == Mode::SafeToStop).then_some(())
    })
    .await;
    b.wait_text(&format!("tr[data-worker='{me}'] td.mode"), |t| {
        t == "SafeToStop"
    })
    .await;
    b.shot("overview-drained").await;

    // Drained, nothing is picked up: three queued jobs to filter and cancel.
    let mut queued = Vec::new();
    for _ in 0..3 {
        queued.push(app.enqueue("test", json!({"record": false})).await);
    }
    let other = app.enqueue("noop", json!({})).await;
    b.goto(&format!("{base}/#/jobs")).await;
    b.wait_find("#f-state").await;
    b.js("document.getElementById('f-state').value = 'queued';")
        .await;
    b.type_into("#f-kind", "test").await;
    b.click("#f-apply").await;
    b.wait_js(
        "the filter in the URL",
        "return location.hash.includes('state=queued') && location.hash.includes('kind=test');",
    )
    .await;
    let url = b.client.current_url().await.unwrap();
    b.client.refresh().await.unwrap();
    b.wait_find("#jobs").await;
    assert_eq!(b.client.current_url().await.unwrap(), url);
    let (state, kind): (Value, Value) = (
        b.js("return document.getElementById('f-state').value;")
            .await,
        b.js("return document.getElementById('f-kind').value;")
            .await,
    );
    assert_eq!((state, kind), (json!("queued"), json!("test")));
    let ids = b
        .wait_js(
            "three filtered rows",
            "const r = [...document.querySelectorAll('#jobs tr[data-job-row]')].map(r => +r.dataset.jobRow); return r.length === 3 ? r : null;",
        )
        .await;
    let mut want = queued.clone();
    want.reverse();
    assert_eq!(ids, json!(want));
    b.shot("jobs-filtered").await;

    // Bulk cancel says how many before it acts.
    b.click("#bulk-cancel").await;
    let question = b.wait_text("#bulk-question", |t| !t.is_empty()).await;
    assert!(question.starts_with("Cancel 3 "), "{question}");
    b.shot("jobs-confirm").await;
    b.click("#bulk-yes").await;
    for id in &queued {
        require_state(&store, *id, JobState::Cancelled, Duration::from_secs(10)).await;
    }
    assert_eq!(store.get(other).await.unwrap().state, JobState::Queued);

    // Resume from the overview.
    b.goto(&format!("{base}/")).await;
    b.click(&format!("#resume-{me}")).await;
    wait_for(Duration::from_secs(10), "the process to resume", || async {
        (app.lifecycle().mode() == Mode::Normal).then_some(())
    })
    .await;
    require_state(&store, other, JobState::Succeeded, JOB_TIMEOUT).await;

    // A dead job, retried from the dead-letter page: it then succeeds.
    let dead = app
        .enqueue(
            "test",
            json!({"record": false, "fail": {"second": {"times": 1, "fatal": true}}}),
        )
        .await;
    require_state(&store, dead, JobState::Dead, JOB_TIMEOUT).await;
    b.goto(&format!("{base}/#/dead-letters")).await;
    let row = b.wait_find(&format!("tr[data-dead-job='{dead}']")).await;
    assert!(row.text().await.unwrap().contains("second"));
    assert_accessible(&b, "dead letters").await;
    b.shot("dead-letters").await;
    b.click(&format!("#retry-{dead}")).await;
    require_state(&store, dead, JobState::Succeeded, JOB_TIMEOUT).await;
    b.goto(&format!("{base}/#/jobs/{dead}")).await;
    b.wait_find("#timeline tr[data-event=retried]").await;
    b.shot("job-retried").await;

    // A running stage's progress bar, then Cancel on the job's page stops it.
    let tb = samples::trial_balance(40);
    let running = crate::etl::upload_ok(
        &token_client(),
        &base,
        sample_file("trial_balance.xlsx"),
        "BU-3000",
        "trial_balance",
    )
    .await;
    b.goto(&format!("{base}/#/jobs/{running}")).await;
    let max = b
        .wait_js(
            "the sync progress bar",
            "const p = document.getElementById('stage-progress'); return p && p.value > 0 ? p.max : null;",
        )
        .await;
    assert_eq!(max, json!(tb.lines.len()));
    let label = b.text("label[for=stage-progress]").await;
    assert!(label.starts_with("sync: "), "{label}");
    b.shot("job-running").await;
    b.click("#job-cancel").await;
    require_state(
        &store,
        running,
        JobState::Cancelled,
        Duration::from_secs(10),
    )
    .await;
    b.wait_find("h1 .state-cancelled").await;

    b.close().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_is_stopped_even_when_its_test_panics() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let task = {
        let seen = seen.clone();
        tokio::spawn(async move {
            let b = Browser::start("panics").await;
            b.goto("about:blank").await;
            *seen.lock().unwrap() = b.browser_pids();
            panic!("a test failing with its browser open");
        })
    };
    assert!(task.await.unwrap_err().is_panic());
    let pids = seen.lock().unwrap().clone();
    assert!(!pids.is_empty(), "Chromium was running");
    let alive = |pid: &i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s[s.rfind(')').unwrap() + 2..].starts_with('Z'))
            .unwrap_or(false)
    };
    wait_for(Duration::from_secs(10), "Chromium to be gone", || {
        let pids = pids.clone();
        async move { (!pids.iter().any(alive)).then_some(()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_shows_what_changed_and_rolls_a_dataset_back_after_a_confirmation() {
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), Role::Serve, |s| {
        s.api.tokens.insert("ops".into(), TOKEN.into());
    })
    .await;
    let base = app.url("");
    let client = token_client();
    let v1 = crate::datasets::promote(&client, &base, "BU-W", crate::datasets::V1).await;
    let v2 = crate::datasets::promote(&client, &base, "BU-W", crate::datasets::V2).await;
    let mut b = Browser::start("datasets").await;
    b.goto(&format!("{base}/#/datasets")).await;
    b.wait_find("#token-prompt").await;
    b.type_into("#prompt-token", TOKEN).await;
    b.click("#prompt-save").await;

    // The promotion of v2 links to what it changed.
    b.wait_find(&format!("a[data-diff='{v1}-{v2}']")).await;
    b.shot("datasets").await;
    b.click(&format!("a[data-diff='{v1}-{v2}']")).await;
    b.wait_text("#diff-counts", |t| {
        t == "1 added, 1 removed, 1 changed, 3 unchanged"
    })
    .await;
    b.shot("diff").await;

    // Roll back to v1: nothing happens until the confirmation.
    b.goto(&format!("{base}/#/datasets")).await;
    b.wait_find(&format!("button[data-rollback='{v1}']")).await;
    b.click(&format!("button[data-rollback='{v1}']")).await;
    b.wait_find("#rollback-yes").await;
    let version = || async {
        sqlx::query_scalar::<_, i64>("SELECT version FROM dataset_manifests WHERE bu_id = 'BU-W'")
            .fetch_one(&db.pool)
            .await
            .unwrap()
    };
    assert_eq!(version().await, v2, "not before the confirmation");
    b.type_into("#rollback-reason", "bad month-end export")
        .await;
    b.click("#rollback-yes").await;
    wait_for(Duration::from_secs(10), "the rollback", || async {
        (version().await == v1).then_some(())
    })
    .await;
    let (reason, actor): (String, String) =
        sqlx::query_as("SELECT reason, actor FROM rollbacks WHERE bu_id = 'BU-W'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(reason, "bad month-end export");
    assert_eq!(actor, "ops", "the token that confirmed it");
    b.shot("rolled-back").await;
    b.close().await;
    app.stop().await;
}
