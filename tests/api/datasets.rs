//! Datasets over time (issue 20): roll back, see what changed, leave no garbage; and the
//! role matrix over every route the routers register.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::etl::{JOB_TIMEOUT, upload, wait_done};
use crate::helpers::{
    TestApp, TestDb, process_env, spawn_app_on, spawn_process, wait_for, wait_paused,
};
use etlq::api::access::{Access, ROUTES};
use etlq::configuration::{ApiToken, TokenRole};
use etlq::startup::Role;

/// A trial balance as CSV: (account, name, closing) rows.
pub fn tb_csv(rows: &[(&str, &str, &str)]) -> Vec<u8> {
    let mut out = String::from(
        "Account,Account Name,Period End,Opening Balance,Debit,Credit,Closing Balance,Active\r\n",
    );
    for (acct, name, closing) in rows {
        out.push_str(&format!("{acct},{name},2025-12-31,0,0,0,{closing},yes\r\n"));
    }
    out.into_bytes()
}

pub const V1: &[(&str, &str, &str)] = &[
    ("1000", "Cash", "10.00"),
    ("1001", "Bank", "20.00"),
    ("1002", "Petty cash", "30.00"),
    ("1003", "Receivables", "40.00"),
    ("1004", "Payables", "50.00"),
];
/// 1001's closing balance changes, 1002 goes, 1010 comes.
pub const V2: &[(&str, &str, &str)] = &[
    ("1000", "Cash", "10.00"),
    ("1001", "Bank", "21.50"),
    ("1003", "Receivables", "40.00"),
    ("1004", "Payables", "50.00"),
    ("1010", "Suspense", "1.00"),
];

/// Uploads `rows` for (bu_id, trial_balance); returns its job id at once.
pub async fn upload_tb(
    client: &reqwest::Client,
    base: &str,
    bu_id: &str,
    rows: &[(&str, &str, &str)],
) -> i64 {
    let fields = [("bu_id", bu_id), ("connector", "trial_balance")];
    let (s, b) = upload(client, base, tb_csv(rows), "tb.csv", &fields).await;
    assert_eq!(s, 202, "{b}");
    b["job_id"].as_i64().unwrap()
}

/// Uploads V1 for (bu_id, trial_balance); returns its job id at once.
pub async fn promote_async(client: &reqwest::Client, base: &str, bu_id: &str) -> i64 {
    upload_tb(client, base, bu_id, V1).await
}

/// Uploads `rows` for (bu_id, trial_balance) and waits for its promotion.
pub async fn promote(
    client: &reqwest::Client,
    base: &str,
    bu_id: &str,
    rows: &[(&str, &str, &str)],
) -> i64 {
    let id = upload_tb(client, base, bu_id, rows).await;
    let job = wait_done(client, base, id).await;
    assert_eq!(job["state"], "succeeded", "{job}");
    id
}

async fn call(
    client: &reqwest::Client,
    method: reqwest::Method,
    url: String,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = client.request(method, url);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

/// Promotes V1 then V2 of `bu_id`, and checks the diff, a rollback to V1 and its repeat; the
/// same on every sink. Returns (v1, v2).
pub async fn rollback_and_diff(client: &reqwest::Client, base: &str, bu_id: &str) -> (i64, i64) {
    let ds = format!("{base}/v1/datasets/{bu_id}/trial_balance");
    let v1 = promote(client, base, bu_id, V1).await;
    let v2 = promote(client, base, bu_id, V2).await;

    // What changed, by default from the version v2 replaced to v2.
    let (s, d) = call(client, reqwest::Method::GET, format!("{ds}/diff"), None).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!((d["from"].as_i64(), d["to"].as_i64()), (Some(v1), Some(v2)));
    assert_eq!(
        d["counts"],
        json!({"added": 1, "removed": 1, "changed": 1, "unchanged": 3})
    );
    let changed: Vec<&Value> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["change"] == "changed")
        .collect();
    assert_eq!(
        changed[0]["fields"],
        json!([{"field": "closing", "old": "20.00", "new": "21.50"}]),
        "{d}"
    );
    let added = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["change"] == "added")
        .unwrap();
    assert_eq!(added["record"]["account"], "1010");
    let removed = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["change"] == "removed")
        .unwrap();
    assert_eq!(removed["record"]["account"], "1002");
    // Paged one change at a time: the same three, in id order, counts on every page.
    let mut cursor: Option<String> = None;
    let mut paged = Vec::new();
    loop {
        let url = match &cursor {
            Some(c) => format!("{ds}/diff?from={v1}&to={v2}&limit=1&cursor={c}"),
            None => format!("{ds}/diff?from={v1}&to={v2}&limit=1"),
        };
        let (s, p) = call(client, reqwest::Method::GET, url, None).await;
        assert_eq!(s, 200, "{p}");
        assert_eq!(p["counts"], d["counts"]);
        paged.extend(
            p["changes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|c| c["id"].clone()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_string()),
            None => break,
        }
    }
    let ids: Vec<Value> = d["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(paged, ids);
    assert!(
        ids.windows(2).all(|w| w[0].as_str() < w[1].as_str()),
        "id order"
    );
    let (s, e) = call(
        client,
        reqwest::Method::GET,
        format!("{ds}/diff?from=999999&to={v2}"),
        None,
    )
    .await;
    assert_eq!(
        (s, e["error"]["code"].as_str()),
        (409, Some("version_not_kept")),
        "{e}"
    );

    // Roll back to v1.
    let (_, before) = call(
        client,
        reqwest::Method::GET,
        format!("{base}/v1/datasets"),
        None,
    )
    .await;
    let counter = before["cache_counter"].as_i64().unwrap();
    let body = json!({"version": v1, "reason": "month-end export was wrong"});
    let (s, r) = call(
        client,
        reqwest::Method::POST,
        format!("{ds}/rollback"),
        Some(body.clone()),
    )
    .await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(r["changed"], true);
    assert_eq!(r["from_version"].as_i64(), Some(v2));
    assert_eq!(r["manifest"]["version"].as_i64(), Some(v1));
    assert_eq!(r["manifest"]["records"], 5);
    assert_eq!(r["manifest"]["generation"], 3);
    assert_eq!(r["cache_counter"].as_i64(), Some(counter + 1));
    // Asked again: nothing moves.
    let (s, again) = call(
        client,
        reqwest::Method::POST,
        format!("{ds}/rollback"),
        Some(body),
    )
    .await;
    assert_eq!((s, &again["changed"]), (200, &json!(false)), "{again}");
    assert_eq!(again["cache_counter"].as_i64(), Some(counter + 1));
    let (_, show) = call(client, reqwest::Method::GET, ds.clone(), None).await;
    assert_eq!(show["manifest"]["version"].as_i64(), Some(v1));
    let kept: Vec<i64> = show["kept_versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["version"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, [v2], "v1 left the superseded list, v2 entered it");
    assert_eq!(show["rollbacks"][0]["reason"], "month-end export was wrong");
    assert_eq!(show["rollbacks"].as_array().unwrap().len(), 1);
    // The default diff is now v2 → v1: the same changes the other way round.
    let (_, back) = call(client, reqwest::Method::GET, format!("{ds}/diff"), None).await;
    assert_eq!(
        (back["from"].as_i64(), back["to"].as_i64()),
        (Some(v2), Some(v1))
    );
    assert_eq!(
        back["counts"],
        json!({"added": 1, "removed": 1, "changed": 1, "unchanged": 3})
    );
    // Refusals: a version that never was this dataset's, a bad body.
    let (s, e) = call(
        client,
        reqwest::Method::POST,
        format!("{ds}/rollback"),
        Some(json!({"version": 999999, "reason": "x"})),
    )
    .await;
    assert_eq!(s, 404, "{e}");
    let (s, _) = call(
        client,
        reqwest::Method::POST,
        format!("{ds}/rollback"),
        Some(json!({"version": v2, "reason": " "})),
    )
    .await;
    assert_eq!(s, 422);
    (v1, v2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_diff_and_the_rollback_window_on_postgres() {
    let db = Arc::new(TestDb::new().await);
    let app = spawn_app_on(db.clone(), Role::Serve, |s| {
        s.etl.superseded_cleanup_interval_ms = 200;
    })
    .await;
    let base = app.url("");
    let (v1, v2) = rollback_and_diff(&app.client, &base, "BU-R").await;
    let pool = &db.pool;
    // Readers see v1 again: the manifest, latest/, the sink's documents.
    let latest: Value = serde_json::from_slice(
        &std::fs::read(
            db.blob_dir()
                .join("latest/BU-R/trial_balance/manifest.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(latest["version"].as_i64(), Some(v1));
    let audit: (String, Value) =
        sqlx::query_as("SELECT actor, detail FROM audit_log WHERE action = 'dataset_rollback'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(audit.0, "anonymous");
    assert_eq!(audit.1["reason"], "month-end export was wrong");
    assert_eq!(audit.1["to_version"].as_i64(), Some(v1));

    // Past its window, v2 can no longer come back (409 naming the setting), and the cleaner
    // takes it: documents and artifacts.
    sqlx::query("UPDATE superseded_versions SET superseded_at = now() - interval '25 hours' WHERE version = $1")
        .bind(v2)
        .execute(pool)
        .await
        .unwrap();
    let ds = format!("{base}/v1/datasets/BU-R/trial_balance");
    wait_for(
        Duration::from_secs(20),
        "the cleaner to delete v2",
        || async {
            let gone: bool = sqlx::query_scalar(
                "SELECT deleted_at IS NOT NULL FROM superseded_versions WHERE version = $1",
            )
            .bind(v2)
            .fetch_one(pool)
            .await
            .ok()?;
            gone.then_some(())
        },
    )
    .await;
    let (s, e) = call(
        &app.client,
        reqwest::Method::POST,
        format!("{ds}/rollback"),
        Some(json!({"version": v2, "reason": "too late"})),
    )
    .await;
    assert_eq!(s, 409, "{e}");
    assert!(
        e["error"]["message"]
            .as_str()
            .unwrap()
            .contains("etl.superseded_retention_hours"),
        "{e}"
    );
    let docs: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sink_documents WHERE dataset_version = $1")
            .bind(v2)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(docs, 0);
    assert!(!db.blob_dir().join(format!("runs/{v2}")).exists());
    let kept: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sink_documents WHERE dataset_version = $1")
            .bind(v1)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(kept, 5, "the promoted version is never touched");
    app.stop().await;
}

/// A process killed inside a rollback's transaction changes nothing; asking again (on another
/// process) rolls back once, and once more changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_rollback_leaves_exactly_one_effect() {
    let db = TestDb::new().await;
    let mut env = process_env(&db.url, "v1");
    env.push(("ETLQ__TESTING__PAUSE_IN_ROLLBACK_MS".into(), "60000".into()));
    let mut a = spawn_process("serve", &env);
    let client = reqwest::Client::new();
    let v1 = promote(&client, &a.base, "BU-K", V1).await;
    let v2 = promote(&client, &a.base, "BU-K", V2).await;
    let counter = crate::etl::counter(&db.pool).await;
    let url = format!("{}/v1/datasets/BU-K/trial_balance/rollback", a.base);
    let body = json!({"version": v1, "reason": "bad export"});
    let pending = tokio::spawn({
        let (c, u, b) = (client.clone(), url.clone(), body.clone());
        async move { c.post(u).json(&b).send().await }
    });
    // Inside the transaction: its rows written, not committed.
    crate::helpers::wait_open_transaction(
        &db.pool,
        "%INSERT INTO audit_log%",
        "the rollback to hold its transaction",
    )
    .await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    assert!(pending.await.unwrap().is_err(), "the answer never came");
    let (version, generation): (i64, i64) =
        sqlx::query_as("SELECT version, generation FROM dataset_manifests WHERE bu_id = 'BU-K'")
            .fetch_one(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        (version, generation),
        (v2, 2),
        "nothing of the killed rollback stayed"
    );
    assert_eq!(crate::etl::counter(&db.pool).await, counter);

    let b = spawn_process("serve", &process_env(&db.url, "v1"));
    let url = format!("{}/v1/datasets/BU-K/trial_balance/rollback", b.base);
    for (round, changed) in [(1, true), (2, false)] {
        let (s, r) = call(
            &client,
            reqwest::Method::POST,
            url.clone(),
            Some(body.clone()),
        )
        .await;
        assert_eq!(
            (s, &r["changed"]),
            (200, &json!(changed)),
            "round {round}: {r}"
        );
    }
    let count = |sql: &'static str| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!(count("SELECT count(*) FROM rollbacks").await, 1);
    assert_eq!(
        count("SELECT count(*) FROM audit_log WHERE action = 'dataset_rollback'").await,
        1
    );
    assert_eq!(
        count("SELECT generation FROM dataset_manifests WHERE bu_id = 'BU-K'").await,
        3
    );
    assert_eq!(crate::etl::counter(&db.pool).await, counter + 1);
    drop(b);
}

/// kill -9 inside sync, then cancel: after the grace period nothing of the job is left in the
/// sink, the blob store or the work dir; a live job's files and a live process's work dir are
/// never touched; a stored upload no job names goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_killed_and_cancelled_job_left_is_reclaimed_and_nothing_live_is() {
    let db = TestDb::new().await;
    let work = tempfile::tempdir().unwrap();
    let mut env = process_env(&db.url, "v1");
    env.extend(
        [
            ("ETLQ__TESTING__PAUSE_IN_STAGE_MS", "60000"),
            ("ETLQ__TESTING__PAUSE_STAGE", "sync"),
            ("ETLQ__ETL__SYNC_BATCH", "2"),
            ("ETLQ__ETL__WORK_DIR", work.path().to_str().unwrap()),
            ("ETLQ__ETL__SUPERSEDED_CLEANUP_INTERVAL_MS", "200"),
            ("ETLQ__ETL__ORPHAN_GRACE_MS", "1000"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    let mut a = spawn_process("serve", &env);
    let client = reqwest::Client::new();
    let dead = upload_tb(&client, &a.base, "BU-G", V1).await;
    wait_paused(&db.pool, dead, "sync", 1).await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    let blobs = db.blob_dir();
    assert!(blobs.join(format!("runs/{dead}/records.ndjson")).exists());
    let table_exists = |v: i64| {
        let pool = db.pool.clone();
        async move {
            sqlx::query_scalar::<_, bool>(
                "SELECT to_regclass('sink_documents_v' || $1) IS NOT NULL",
            )
            .bind(v)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    assert!(table_exists(dead).await, "the killed sync left its table");
    // What a killed process leaves in the work dir (its lock file held by nobody), a live
    // process's directory (held), and a stored upload nobody names, made long ago.
    let left = work.path().join("extract-424242-left");
    std::fs::create_dir_all(&left).unwrap();
    std::fs::write(left.join(".owner"), b"").unwrap();
    std::fs::write(left.join("source.xlsx"), b"stale").unwrap();
    let live_dir =
        etlq::etl::work_dir::WorkDir::create(work.path(), "extract-", "777-live").unwrap();
    let stray = blobs.join("uploads/2020/01/01/stray.xlsx");
    std::fs::create_dir_all(stray.parent().unwrap()).unwrap();
    std::fs::write(&stray, b"stray").unwrap();
    let old = std::process::Command::new("touch")
        .args(["-d", "2020-01-01", stray.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(old.success());

    // A second process: the dead job is cancelled; a live job sits inside sync meanwhile.
    let b2 = spawn_process("serve", &env);
    let (s, c) = call(
        &client,
        reqwest::Method::POST,
        format!("{}/v1/jobs/{dead}/cancel", b2.base),
        None,
    )
    .await;
    assert_eq!(s, 200, "{c}");
    let live = upload_tb(&client, &b2.base, "BU-L", V2).await;
    let live_upload = {
        let job = db.store().get(live).await.unwrap();
        job.payload["source_blob"].as_str().unwrap().to_string()
    };
    wait_for(
        Duration::from_secs(30),
        "the dead job's outputs to be reclaimed",
        || async {
            let done: Option<bool> = sqlx::query_scalar(
                "SELECT outputs_reclaimed_at IS NOT NULL FROM jobs WHERE id = $1",
            )
            .bind(dead)
            .fetch_one(&db.pool)
            .await
            .ok();
            (done == Some(true) && !left.exists() && !stray.exists()).then_some(())
        },
    )
    .await;
    assert!(!table_exists(dead).await, "the sink holds nothing of it");
    assert!(
        !blobs.join(format!("runs/{dead}")).exists(),
        "nor the blob store"
    );
    // Live things stay: the paused job's files, the held work dir, the live upload.
    let live_state = db.store().get(live).await.unwrap();
    assert_eq!(live_state.state.as_str(), "running");
    assert!(blobs.join(format!("runs/{live}/records.ndjson")).exists());
    assert!(table_exists(live).await);
    assert!(live_dir.path().exists());
    assert!(blobs.join(&live_upload).exists());
    let metrics = reqwest::get(format!("{}/metrics", b2.base))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for what in ["abandoned_versions", "work_dirs", "uploads"] {
        assert!(
            metrics.contains(&format!("etlq_reclaimed_total{{what=\"{what}\"}} 1")),
            "{what}: {metrics}"
        );
    }
    drop(b2);
}

/// Every route the routers register × no token / read / operate / deploy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_role_matrix_holds_for_every_route() {
    const READ: &str = "reader-token-0123456789";
    const OPERATE: &str = "operator-token-0123456789";
    const DEPLOY: &str = "deployer-token-0123456789";
    let app: TestApp = spawn_app_on(Arc::new(TestDb::new().await), Role::Serve, |s| {
        s.api.tokens.insert(
            "reader".into(),
            ApiToken::with_roles(READ, &[TokenRole::Read]),
        );
        s.api.tokens.insert(
            "operator".into(),
            ApiToken::with_roles(OPERATE, &[TokenRole::Operate]),
        );
        s.api.tokens.insert(
            "deployer".into(),
            ApiToken::with_roles(DEPLOY, &[TokenRole::Deploy]),
        );
    })
    .await;
    let tokens = [
        (None, None),
        (Some(READ), Some(TokenRole::Read)),
        (Some(OPERATE), Some(TokenRole::Operate)),
        (Some(DEPLOY), Some(TokenRole::Deploy)),
    ];
    let grants = |held: TokenRole, needed: TokenRole| held == needed || needed == TokenRole::Read;
    assert!(ROUTES.len() >= 45, "{}", ROUTES.len());
    // Drains last, so the process answers everything else in Normal mode.
    let mut routes: Vec<_> = ROUTES.iter().collect();
    routes.sort_by_key(|(_, p, _)| p.contains("drain"));
    for (method, path, access) in routes {
        let concrete = path
            .replace("{id}", "1")
            .replace("{name}", "nosuch")
            .replace("{bu_id}", "BU")
            .replace("{connector}", "trial_balance")
            .replace("{version}", "0")
            .replace("{file}", "app.js");
        for (token, role) in tokens {
            let mut req = app
                .client
                .request(method.parse().unwrap(), app.url(&concrete));
            if *method == "POST" {
                req = req.json(&json!({}));
            }
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let body: Value = r.json().await.unwrap_or(Value::Null);
            let who = role.map_or("no token", |r| r.as_str());
            let expected = match (access, role) {
                (Access::Open | Access::SourceSecret, _) => None,
                (Access::Role(_), None) => Some(401),
                (Access::Role(needed), Some(held)) if !grants(held, *needed) => Some(403),
                (Access::Role(_), Some(_)) => None,
            };
            match expected {
                Some(code) => assert_eq!(status, code, "{method} {path} with {who}: {body}"),
                None => assert!(
                    status != 401 && status != 403,
                    "{method} {path} with {who}: {status} {body}"
                ),
            }
        }
    }
    app.stop().await;
}

/// Beyond loopback with no token, the process refuses to start and says how to set one;
/// `api.anonymous = true` says so on purpose.
#[tokio::test]
async fn an_open_listener_beyond_loopback_refuses_to_start() {
    let db = TestDb::new().await;
    let mut env = process_env(&db.url, "v1");
    env.push(("ETLQ__API__HOST".into(), "0.0.0.0".into()));
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_etlq"))
        .args(["serve", "--port", "0"])
        .env_remove("ETLQ_CONFIG")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(JOB_TIMEOUT, out)
        .await
        .unwrap()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ETLQ__API__TOKENS__"), "{err}");
    assert!(err.contains("api.anonymous = true"), "{err}");
    env.push(("ETLQ__API__ANONYMOUS".into(), "true".into()));
    let p = spawn_process("serve", &env);
    assert!(p.get_json("/healthz").await.is_some());
}
