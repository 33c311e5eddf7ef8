//! The README's `sh` blocks run as typed (scripts/readme-examples) against a fresh database and
//! the release binary, and the job ids its comments name are the ones the commands create.

use std::process::Command;

use crate::helpers::*;

#[tokio::test]
async fn readme_examples_run_as_typed() {
    let db = TestDb::new().await;
    let repo = env!("CARGO_MANIFEST_DIR");
    let out = Command::new("bash")
        .arg(format!("{repo}/scripts/readme-examples"))
        .env("ETLQ_RELEASE_BIN", crate::release::release_bin())
        .env("DATABASE_URL", &db.url)
        .env_remove("ETLQ_CONFIG")
        .output()
        .unwrap();
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "README examples failed:\n{transcript}"
    );

    // What the comments promise: job 1 the CLI upload, 2 the REST upload, 3 the blob-store
    // job, 4 the upload that does not fit its connector; then 1,000 noop jobs; then the file
    // dropped into the `inbox` source, taken once however often it is listed.
    let jobs: Vec<(i64, String, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT id, state::text, payload->>'bu_id', payload->>'connector'
         FROM jobs WHERE kind = 'etl' ORDER BY id",
    )
    .fetch_all(&db.pool)
    .await
    .unwrap();
    let shape: Vec<(i64, &str, &str)> = jobs
        .iter()
        .map(|(id, _, bu, c)| (*id, bu.as_deref().unwrap(), c.as_deref().unwrap()))
        .collect();
    assert_eq!(
        shape,
        [
            (1, "BU-1000", "sap_fbl3n"),
            (2, "BU-1000", "trial_balance"),
            (3, "BU-2000", "trial_balance"),
            (4, "BU-3000", "sap_fbl3n"),
            (1005, "BU-4000", "trial_balance"),
        ],
        "{transcript}"
    );
    let ledger: Vec<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT source, blob_key, job_id FROM ingest_ledger")
            .fetch_all(&db.pool)
            .await
            .unwrap();
    assert_eq!(
        ledger,
        [(
            "inbox".to_string(),
            "inbox/BU-4000/tb.xlsx".to_string(),
            Some(1005)
        )],
        "{transcript}"
    );
    assert_eq!(jobs[0].1, "succeeded");
    let noop: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs WHERE kind = 'noop'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(noop, 1000);
    // Job 4 went dead, was retried over REST, died again, and was retried by filter.
    let retries: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM dead_letters WHERE job_id = 4 AND retried_at IS NOT NULL",
    )
    .fetch_one(&db.pool)
    .await
    .unwrap();
    assert_eq!(retries, 2, "{transcript}");
    for expected in [
        "job 1 succeeded: 118 records, 2 rejected rows",
        "exit code 4",
        "did you mean worker.concurrency?",
        "exit code 2",
        "is SafeToStop",
        "inbox/BU-4000/tb.xlsx",
    ] {
        assert!(
            transcript.contains(expected),
            "{expected:?} missing:\n{transcript}"
        );
    }
}
