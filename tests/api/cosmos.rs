//! The Cosmos DB sink against a local emulator (a real HTTP server speaking the Cosmos REST
//! protocol, started by scripts/test; ADR 0013): uploads end to end, kill -9 inside
//! sync and promote, an emulator outage, throttling, a refused key, a missing container, and
//! the cleaner removing a superseded version.

use std::sync::Arc;
use std::time::Duration;

use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, ServerCertificateValidation,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, FeedScope, Query, RoutingStrategy,
};
use futures_util::TryStreamExt;
use serde_json::Value;

use crate::etl::{check_gl_docs, check_tb_docs, sample_file, upload_ok, wait_done};
use crate::helpers::*;
use crate::samples;
use etlq::startup::Role;

/// The emulator's published key (it ignores keys; any base64 value works).
const EMULATOR_KEY: &str =
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw==";

fn var(name: &str) -> String {
    crate::helpers::service_env(name, "the Cosmos DB emulator, scripts/cosmos-env.sh")
}

/// An emulator: the shared one (tests that inject no faults), or a private one started for a
/// test whose faults must not reach the others.
struct Emulator {
    endpoint: String,
    admin: String,
    child: Option<std::process::Child>,
}

impl Drop for Emulator {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Emulator {
    fn shared() -> Emulator {
        Emulator {
            endpoint: var("ETLQ_TEST_COSMOS"),
            admin: var("ETLQ_TEST_COSMOS_ADMIN"),
            child: None,
        }
    }

    async fn private() -> Emulator {
        let port = {
            // Two free ports next to each other are not guaranteed; take two free ones.
            let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            (
                a.local_addr().unwrap().port(),
                b.local_addr().unwrap().port(),
            )
        };
        let shim = format!(
            "{}/scripts/cosmos-emulator/shim.cjs",
            env!("CARGO_MANIFEST_DIR")
        );
        let child = std::process::Command::new("node")
            .arg(shim)
            .args([
                "--port",
                &port.0.to_string(),
                "--admin-port",
                &port.1.to_string(),
            ])
            .env("NODE_PATH", var("ETLQ_TEST_COSMOS_NODE_PATH"))
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("node");
        let e = Emulator {
            endpoint: format!("https://127.0.0.1:{}/", port.0),
            admin: format!("http://127.0.0.1:{}", port.1),
            child: Some(child),
        };
        // Node usually listens within a second; a loaded machine has kept one from listening
        // for 20 s (Azurite, at the start of a CI run), so the wait is generous.
        wait_for(Duration::from_secs(60), "the private emulator", || async {
            reqwest::get(format!("{}/stats", e.admin))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        e
    }

    async fn fault(&self, path: &str) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap();
        assert!(r.status().is_success(), "{path}");
    }

    async fn stats(&self) -> Value {
        reqwest::get(format!("{}/stats", self.admin))
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }
}

/// The sink settings for a test: a database of its own in `emu`.
fn cosmos_env(db: &TestDb, emu: &Emulator) -> Vec<(String, String)> {
    [
        ("ETLQ__SINK__KIND", "cosmos".to_string()),
        ("ETLQ__SINK__COSMOS__ENDPOINT", emu.endpoint.clone()),
        ("ETLQ__SINK__COSMOS__KEY", EMULATOR_KEY.to_string()),
        ("ETLQ__SINK__COSMOS__DATABASE", db.name.clone()),
        ("ETLQ__SINK__COSMOS__EMULATOR", "true".to_string()),
        ("ETLQ__SINK__COSMOS__CONCURRENCY", "16".to_string()),
        (
            "ETLQ__SINK__COSMOS__PARTITIONS_PER_VERSION",
            "8".to_string(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

fn cosmos_settings(db: &TestDb, emu: &Emulator) -> etlq::configuration::Settings {
    let mut env = test_env(&db.url, "");
    env.extend(cosmos_env(db, emu));
    etlq::configuration::Settings::load_with_env(None, &env).unwrap()
}

/// A second client, to read what etlq wrote.
struct Reader {
    data: azure_data_cosmos::clients::ContainerClient,
    manifests: azure_data_cosmos::clients::ContainerClient,
}

impl Reader {
    async fn new(emu: &Emulator, database: &str) -> Reader {
        let endpoint: AccountEndpoint = emu.endpoint.parse().unwrap();
        let account = AccountReference::with_authentication_key(endpoint, EMULATOR_KEY);
        let pool = ConnectionPoolOptions::builder()
            .with_is_http2_allowed(false)
            .with_server_certificate_validation(ServerCertificateValidation::RequiredUnlessEmulator)
            .build()
            .unwrap();
        let runtime = azure_data_cosmos::CosmosRuntime::builder()
            .with_connection_pool(pool)
            .build()
            .await
            .unwrap();
        let client = CosmosClient::builder()
            .with_runtime(runtime)
            .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
            .build(account, RoutingStrategy::ProximityTo("West Europe".into()))
            .await
            .unwrap();
        let db = client.database_client(database.to_string());
        Reader {
            data: db.container_client("datasets", None).await.unwrap(),
            manifests: db.container_client("manifests", None).await.unwrap(),
        }
    }

    async fn query(
        c: &azure_data_cosmos::clients::ContainerClient,
        sql: &str,
        params: &[(&str, Value)],
    ) -> Vec<Value> {
        let mut q = Query::from(sql.to_string());
        for (k, v) in params {
            q = q.with_parameter(*k, v.clone()).unwrap();
        }
        c.query_items::<Value>(q, FeedScope::full_container(), None)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap()
    }

    /// Every document of a version, as (id, data) — the way docs/cosmos.md tells readers to.
    async fn version(&self, bu_id: &str, connector: &str, version: i64) -> Vec<(String, Value)> {
        let rows = Self::query(
            &self.data,
            "SELECT * FROM c WHERE c.dataset = @dataset AND c.version = @version",
            &[
                ("@dataset", Value::from(format!("{bu_id}|{connector}"))),
                ("@version", Value::from(version)),
            ],
        )
        .await;
        let mut out: Vec<(String, Value)> = rows
            .into_iter()
            .map(|r| {
                assert!(r["hash"].is_string(), "hashes are strings: {r}");
                (r["id"].as_str().unwrap().to_string(), r["data"].clone())
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    async fn all_documents(&self) -> usize {
        Self::query(&self.data, "SELECT c.id FROM c", &[])
            .await
            .len()
    }

    async fn manifest(&self, bu_id: &str, connector: &str) -> Option<Value> {
        Self::query(
            &self.manifests,
            "SELECT * FROM c WHERE c.pk = 'manifests' AND c.id = @id",
            &[("@id", Value::from(format!("{bu_id}|{connector}")))],
        )
        .await
        .into_iter()
        .next()
    }

    async fn counter(&self) -> Option<i64> {
        Self::query(
            &self.manifests,
            "SELECT * FROM c WHERE c.pk = 'manifests' AND c.id = 'cache-counter'",
            &[],
        )
        .await
        .first()
        .and_then(|c| c["counter"].as_i64())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_land_in_cosmos_db_with_their_manifest_and_counter() {
    let db = Arc::new(TestDb::new().await);
    let emu = Emulator::shared();
    let mut settings = cosmos_settings(&db, &emu);
    settings.etl.superseded_retention_hours = 0;
    settings.etl.superseded_cleanup_interval_ms = 200;
    let app = spawn_app_on(db.clone(), Role::Serve, move |s| *s = settings).await;
    let base = app.url("");
    let reader = Reader::new(&emu, &db.name).await;

    let gl = samples::gl_export(120, 2);
    let gl_job = upload_ok(
        &app.client,
        &base,
        sample_file("sap_fbl3n.xlsx"),
        "BU-1000",
        "sap_fbl3n",
    )
    .await;
    let v = wait_done(&app.client, &base, gl_job).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["checkpoint"]["sync"]["sink"], "cosmos");
    check_gl_docs(
        &reader.version("BU-1000", "sap_fbl3n", gl_job).await,
        &gl.lines,
    );

    let tb = samples::trial_balance(40);
    let tb_job = upload_ok(
        &app.client,
        &base,
        sample_file("trial_balance.xlsx"),
        "BU-1000",
        "trial_balance",
    )
    .await;
    assert_eq!(
        wait_done(&app.client, &base, tb_job).await["state"],
        "succeeded"
    );
    check_tb_docs(
        &reader.version("BU-1000", "trial_balance", tb_job).await,
        &tb.lines,
    );

    // Promotions are visible to a reader that has only Cosmos DB.
    let m = reader
        .manifest("BU-1000", "sap_fbl3n")
        .await
        .expect("manifest");
    assert_eq!(m["version"], gl_job);
    assert_eq!(m["generation"], 1);
    assert_eq!(m["records"], gl.lines.len());
    assert_eq!(m["partition_keys"].as_array().unwrap().len(), 8);
    assert_eq!(reader.counter().await, Some(2));

    // A newer G/L upload supersedes the first: manifest moves, counter bumps once, and the
    // cleaner removes the old version's documents.
    let gl2 = upload_ok(&app.client, &base, gl.bytes.clone(), "BU-1000", "sap_fbl3n").await;
    assert_eq!(
        wait_done(&app.client, &base, gl2).await["state"],
        "succeeded"
    );
    let m = reader.manifest("BU-1000", "sap_fbl3n").await.unwrap();
    assert_eq!(
        (m["version"].as_i64(), m["generation"].as_i64()),
        (Some(gl2), Some(2))
    );
    assert_eq!(reader.counter().await, Some(3));
    wait_for(
        Duration::from_secs(30),
        "the superseded version to be deleted",
        || async {
            reader
                .version("BU-1000", "sap_fbl3n", gl_job)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    check_gl_docs(
        &reader.version("BU-1000", "sap_fbl3n", gl2).await,
        &gl.lines,
    );
    assert_eq!(
        reader.all_documents().await,
        gl.lines.len() + tb.lines.len(),
        "nothing but the promoted versions"
    );
    app.stop().await;
}

/// Kills the worker inside `stage` (sync: after its first batch; promote: after the blob
/// copies, before the commit), then lets a second process finish the job.
async fn kill_inside_with_cosmos(stage: &str) {
    let db = TestDb::new().await;
    let emu = Emulator::shared();
    let mut env = process_env(&db.url, "v1");
    env.extend(cosmos_env(&db, &emu));
    let mut paused = env.clone();
    for (k, v) in [
        ("ETLQ__TESTING__PAUSE_IN_STAGE_MS", "60000"),
        ("ETLQ__TESTING__PAUSE_STAGE", stage),
        ("ETLQ__ETL__SYNC_BATCH", "400"),
    ] {
        paused.push((k.into(), v.into()));
    }
    let mut a = spawn_process("serve", &paused);
    let gl = samples::gl_export(2000, 0);
    let id = upload_ok(
        &reqwest::Client::new(),
        &a.base,
        gl.bytes.clone(),
        "BU-K",
        "sap_fbl3n",
    )
    .await;
    crate::helpers::wait_paused(&db.pool, id, stage, 1).await;
    a.signal("KILL");
    a.wait_exit(Duration::from_secs(10)).await;
    let reader = Reader::new(&emu, &db.name).await;
    if stage == "promote" {
        assert_eq!(
            reader.counter().await,
            None,
            "the killed promotion published nothing"
        );
    }
    let mut env2 = process_env(&db.url, "v2");
    env2.extend(cosmos_env(&db, &emu));
    let b = spawn_process("serve", &env2);
    let v = wait_done(&reqwest::Client::new(), &b.base, id).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    // Exactly one document per record, one manifest move, one counter bump.
    check_gl_docs(&reader.version("BU-K", "sap_fbl3n", id).await, &gl.lines);
    assert_eq!(reader.all_documents().await, gl.lines.len());
    let m = reader.manifest("BU-K", "sap_fbl3n").await.unwrap();
    assert_eq!(
        (m["version"].as_i64(), m["generation"].as_i64()),
        (Some(id), Some(1))
    );
    assert_eq!(reader.counter().await, Some(1));
    let (promotions, counter): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM promotions), (SELECT counter FROM cache_manifest)",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!((promotions, counter), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_sync_with_cosmos_writes_each_record_once() {
    kill_inside_with_cosmos("sync").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_inside_promote_with_cosmos_moves_the_manifest_once() {
    kill_inside_with_cosmos("promote").await;
}

/// The emulator stops answering in the middle of sync: the stage fails retryably, the job
/// retries with backoff, and succeeds once the emulator is back, with each record once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emulator_outage_during_sync_is_retried_until_it_is_back() {
    let db = Arc::new(TestDb::new().await);
    let emu = Emulator::private().await;
    let mut settings = cosmos_settings(&db, &emu);
    settings.sink.cosmos.retry_budget_ms = 500;
    settings.etl.sync_batch = 200;
    let app = spawn_app_on(db.clone(), Role::Serve, move |s| *s = settings).await;
    let gl = samples::gl_export(3000, 0);
    let id = upload_ok(
        &app.client,
        &app.url(""),
        gl.bytes.clone(),
        "BU-O",
        "sap_fbl3n",
    )
    .await;
    wait_for(Duration::from_secs(60), "sync to be writing", || async {
        let job = app.store().get(id).await.ok()?;
        (job.progress.as_ref()?["rows_written"].as_u64()? > 0).then_some(())
    })
    .await;
    emu.fault("/stop?ms=4000").await;
    let v = wait_done(&app.client, &app.url(""), id).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    let failed: Vec<String> = sqlx::query_scalar(
        "SELECT error FROM job_events WHERE job_id = $1 AND event = 'stage_failed' ORDER BY id",
    )
    .bind(id)
    .fetch_all(&db.pool)
    .await
    .unwrap();
    assert!(
        !failed.is_empty(),
        "the outage made the stage fail at least once"
    );
    assert!(
        failed
            .iter()
            .all(|e| e.starts_with("sync: sink unavailable: Cosmos DB")),
        "{failed:?}"
    );
    let reader = Reader::new(&emu, &db.name).await;
    check_gl_docs(&reader.version("BU-O", "sap_fbl3n", id).await, &gl.lines);
    app.stop().await;
}

/// Injected 429s (with x-ms-retry-after-ms) are waited out: not one stage failure.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_waited_out_not_counted_as_failure() {
    let db = Arc::new(TestDb::new().await);
    let emu = Emulator::private().await;
    let settings = cosmos_settings(&db, &emu);
    let app = spawn_app_on(db.clone(), Role::Serve, move |s| *s = settings).await;
    let before = emu.stats().await["throttled"].as_u64().unwrap();
    // More than the SDK's own retry budget for one request (9), so the sink's wait is used too.
    emu.fault("/throttle?count=40&retry_after_ms=20").await;
    let gl = samples::gl_export(300, 0);
    let id = upload_ok(
        &app.client,
        &app.url(""),
        gl.bytes.clone(),
        "BU-T",
        "sap_fbl3n",
    )
    .await;
    let v = wait_done(&app.client, &app.url(""), id).await;
    assert_eq!(v["state"], "succeeded", "{v}");
    assert_eq!(v["attempts"], 1, "{v}");
    let failures: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_events WHERE job_id = $1 AND event = 'stage_failed'",
    )
    .bind(id)
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(failures, 0);
    let throttled = emu.stats().await["throttled"].as_u64().unwrap() - before;
    assert_eq!(throttled, 40, "every injected 429 was hit and waited out");
    let reader = Reader::new(&emu, &db.name).await;
    check_gl_docs(&reader.version("BU-T", "sap_fbl3n", id).await, &gl.lines);
    app.stop().await;
}

/// A rejected key is fatal at once, with a message naming the setting; a missing container
/// that may not be created stops the process at startup, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_key_and_a_missing_container_are_fatal_with_clear_messages() {
    let db = Arc::new(TestDb::new().await);
    let emu = Emulator::private().await;
    let settings = cosmos_settings(&db, &emu);
    let app = spawn_app_on(db.clone(), Role::Serve, move |s| *s = settings).await;
    emu.fault("/forbid?on=1").await;
    let id = upload_ok(
        &app.client,
        &app.url(""),
        sample_file("trial_balance.xlsx"),
        "BU-F",
        "trial_balance",
    )
    .await;
    let v = wait_done(&app.client, &app.url(""), id).await;
    emu.fault("/forbid?on=0").await;
    assert_eq!(v["state"], "dead", "{v}");
    assert_eq!(v["attempts"], 1);
    let err = v["last_error"].as_str().unwrap();
    assert!(
        err.starts_with(
            "sync: sink rejected the data: Cosmos DB refused the credentials (HTTP 401)"
        ),
        "{err}"
    );
    assert!(err.contains("ETLQ__SINK__COSMOS__KEY"), "{err}");
    app.stop().await;

    let mut missing = cosmos_settings(&db, &emu);
    missing.sink.cosmos.create_if_missing = false;
    missing.sink.cosmos.container = "nobody-created-this".into();
    let e = match etlq::startup::Application::build_with_pools(
        missing,
        Role::Serve,
        db.pools.clone(),
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    {
        Ok(_) => panic!("started without its container"),
        Err(e) => e.to_string(),
    };
    assert!(
        e.contains("\"nobody-created-this\" does not exist")
            && e.contains("create_if_missing is false"),
        "{e}"
    );
}

/// Issue 20 on Cosmos DB: the diff streams from the sink (a merge of per-partition scans),
/// the rollback moves Cosmos DB's manifest and counter forward, the window's end deletes the
/// replaced version's documents, and a job cancelled inside sync leaves nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_diff_and_cleanup_on_cosmos() {
    let db = Arc::new(TestDb::new().await);
    let emu = Emulator::shared();
    let mut settings = cosmos_settings(&db, &emu);
    settings.etl.superseded_cleanup_interval_ms = 200;
    settings.etl.orphan_grace_ms = 500;
    let paused = {
        let mut s = settings.clone();
        // (The suite runs with the test aids; without them this test only has to build.)
        #[cfg(feature = "test-aids")]
        {
            s.testing.pause_stage = "sync".into();
            s.testing.pause_in_stage_ms = 60_000;
        }
        s.etl.sync_batch = 2;
        s
    };
    let app = spawn_app_on(db.clone(), Role::Serve, move |s| *s = settings).await;
    let base = app.url("");
    let reader = Reader::new(&emu, &db.name).await;
    let (v1, v2) = crate::datasets::rollback_and_diff(&app.client, &base, "BU-C").await;
    let m = reader.manifest("BU-C", "trial_balance").await.unwrap();
    assert_eq!(m["version"].as_i64(), Some(v1), "{m}");
    assert_eq!(m["generation"], 3, "{m}");
    let counter = crate::etl::counter(&db.pool).await;
    assert_eq!(reader.counter().await, Some(counter));
    assert_eq!(reader.version("BU-C", "trial_balance", v1).await.len(), 5);

    // The window ends for v2: its documents go.
    sqlx::query(
        "UPDATE superseded_versions SET superseded_at = now() - interval '25 hours' WHERE version = $1",
    )
    .bind(v2)
    .execute(&db.pool)
    .await
    .unwrap();
    wait_for(
        Duration::from_secs(30),
        "v2's documents deleted",
        || async {
            reader
                .version("BU-C", "trial_balance", v2)
                .await
                .is_empty()
                .then_some(())
        },
    )
    .await;
    assert_eq!(reader.version("BU-C", "trial_balance", v1).await.len(), 5);

    // A job cancelled inside sync (some documents written): reclaimed after the grace period.
    // The first app stops first, or its worker (which does not pause) could take the job.
    app.stop().await;
    let other = spawn_app_on(db.clone(), Role::Serve, move |s| *s = paused).await;
    let job = crate::datasets::promote_async(&other.client, &other.url(""), "BU-X").await;
    wait_for(
        Duration::from_secs(30),
        "documents of the paused sync",
        || async {
            (!reader
                .version("BU-X", "trial_balance", job)
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    let (s, b) = other
        .post(&format!("/v1/jobs/{job}/cancel"), serde_json::json!({}))
        .await;
    assert_eq!(s, 200, "{b}");
    wait_for(
        Duration::from_secs(30),
        "the cancelled job's documents and run files reclaimed",
        || async {
            // The cleaner deletes the documents, then the run files: wait for both.
            (reader
                .version("BU-X", "trial_balance", job)
                .await
                .is_empty()
                && !db.blob_dir().join(format!("runs/{job}")).exists())
            .then_some(())
        },
    )
    .await;
    other.stop().await;
}
