//! Bounded HTTP and clean input errors: slow clients cannot hold a shutdown, a stalled upload
//! is cut off and leaves nothing, every bad input is a 400/422 JSON error naming the field
//! (never a 500, never database text or a server path), an upload and its audit row commit
//! together or not at all.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::etl::{sample_file, upload, upload_ok};
use crate::helpers::*;
use etlq::startup::Role;

/// Every file under `dir` (staged multipart parts included).
fn files_under(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

/// An upload whose file arrives at one byte per second.
async fn slow_upload(addr: String, stop: tokio_util::sync::CancellationToken) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    let head = "--XyZ\r\nContent-Disposition: form-data; name=\"bu_id\"\r\n\r\nBU-SLOW\r\n--XyZ\r\nContent-Disposition: form-data; name=\"connector\"\r\n\r\nsap_fbl3n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"slow.xlsx\"\r\n\r\nPK\x03\x04";
    let req = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 1000000\r\n\r\n{head}"
    );
    if s.write_all(req.as_bytes()).await.is_err() {
        return;
    }
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(900)) => {}
        }
        if s.write_all(b"x").await.is_err() {
            return;
        }
    }
}

/// A request whose headers arrive at one byte per second.
async fn slow_headers(addr: String, stop: tokio_util::sync::CancellationToken) {
    let Ok(mut s) = TcpStream::connect(&addr).await else {
        return;
    };
    for b in format!("GET /v1/jobs HTTP/1.1\r\nHost: {addr}\r\nX-Slow: ")
        .bytes()
        .cycle()
    {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(900)) => {}
        }
        if s.write_all(&[b]).await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_cannot_hold_a_shutdown_and_leave_no_staged_blobs() {
    let db = TestDb::new().await;
    let mut env = process_env(&db.url, "v1");
    for (k, v) in [
        ("ETLQ__WORKER__DRAIN_TIMEOUT_MS", "2000"),
        ("ETLQ__API__SHUTDOWN_GRACE_MS", "1000"),
        // Long enough that only the shutdown can end these requests.
        ("ETLQ__API__BODY_READ_TIMEOUT_MS", "60000"),
        ("ETLQ__API__HEADER_READ_TIMEOUT_MS", "60000"),
    ] {
        env.push((k.into(), v.into()));
    }
    let mut p = spawn_process("serve", &env);
    let addr = host_port(&p.base);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut clients = Vec::new();
    for _ in 0..25 {
        clients.push(tokio::spawn(slow_upload(addr.clone(), stop.clone())));
    }
    clients.push(tokio::spawn(slow_headers(addr.clone(), stop.clone())));
    // Each slow upload has a staged file in the blob store by now.
    let blobs = db.blob_dir();
    wait_for(
        Duration::from_secs(20),
        "the uploads to be staged",
        || async { (files_under(&blobs.join("uploads")).len() >= 25).then_some(()) },
    )
    .await;
    let t = Instant::now();
    p.signal("TERM");
    let code = p.wait_exit(Duration::from_secs(30)).await;
    let took = t.elapsed();
    assert_eq!(code, Some(0));
    // drain_timeout (2 s, nothing in flight: immediate) + shutdown grace (1 s) + slack.
    assert!(
        took < Duration::from_secs(6),
        "SIGTERM to exit took {took:?} with slow clients open"
    );
    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
    let left = files_under(&blobs);
    assert!(left.is_empty(), "staged blobs left behind: {left:?}");
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_bodies_and_headers_are_cut_off_by_their_timeouts() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Api, |s| {
        s.api.body_read_timeout_ms = 500;
        s.api.header_read_timeout_ms = 500;
    })
    .await;
    let addr = app.addr.to_string();
    // An upload that stops sending after its first bytes: 408 JSON, nothing stored.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = "--XyZ\r\nContent-Disposition: form-data; name=\"bu_id\"\r\n\r\nBU-1\r\n--XyZ\r\nContent-Disposition: form-data; name=\"connector\"\r\n\r\nsap_fbl3n\r\n--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.xlsx\"\r\n\r\nPK\x03\x04abc";
    let req = format!(
        "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nContent-Length: 100000\r\n\r\n{head}"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"code\":\"request_timeout\""), "{answer}");
    assert!(answer.contains("api.body_read_timeout_ms"), "{answer}");
    let blobs = app.db.blob_dir();
    wait_for(
        Duration::from_secs(5),
        "the partial upload to be removed",
        || async { files_under(&blobs).is_empty().then_some(()) },
    )
    .await;
    // Headers that never finish: the connection is closed.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /v1/jobs HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "the server closed the connection");
    // A kept-alive connection idle past the same limit is closed too.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(r.is_ok(), "idle keep-alive connection closed");
    assert!(String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    app.stop().await;
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

/// A response must not carry database text or server paths.
fn assert_clean(what: &str, body: &Value, blob_dir: &Path) {
    let text = body.to_string();
    for leak in [
        "SQLSTATE",
        "sqlx",
        "database error",
        "unsupported Unicode escape",
        "out of range",
        "invalid byte sequence",
        blob_dir.to_str().unwrap(),
        "/tmp/",
    ] {
        assert!(!text.contains(leak), "{what}: leaks {leak:?}: {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_on_every_endpoint_is_a_clean_client_error() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Api, |s| {
        s.etl.max_upload_bytes = 1024 * 1024;
    })
    .await;
    let blobs = app.db.blob_dir();
    let gets = [
        "/v1/jobs?bu_id=%00",
        "/v1/jobs?kind=a%00b",
        "/v1/jobs?state=nope",
        "/v1/jobs?cursor=-1",
        "/v1/jobs/0",
        "/v1/dead-letters?bu_id=%00",
        "/v1/dead-letters?since=-200000-01-01T00:00:00Z",
        "/v1/dead-letters?since=not-a-date",
    ];
    for path in gets {
        let (s, b) = app.get(path).await;
        assert!(matches!(s, 400 | 422), "{path}: {s} {b}");
        assert!(!code(&b).is_empty(), "{path}: JSON error: {b}");
        assert_clean(path, &b, &blobs);
    }
    let posts = [
        (
            "/v1/jobs",
            json!({"kind": "noop", "payload": {"s": "a\u{0}b"}}),
            "payload.s",
        ),
        (
            "/v1/jobs",
            json!({"kind": "noop", "payload": {"k\u{0}": 1}}),
            "payload",
        ),
        ("/v1/jobs", json!({"kind": "no\u{0}op"}), "kind"),
        (
            "/v1/jobs",
            json!({"kind": "noop", "idempotency_key": "a\u{0}"}),
            "idempotency_key",
        ),
        (
            "/v1/jobs",
            json!({"kind": "noop", "delay_ms": 18446744073709551615u64}),
            "delay_ms",
        ),
        (
            "/v1/jobs",
            json!({"kind": "noop", "max_attempts": 0}),
            "max_attempts",
        ),
        (
            "/v1/jobs",
            json!({"kind": "noop", "priority": 99999}),
            "priority",
        ),
        (
            "/v1/jobs",
            json!({"bu_id": "B\u{0}", "connector": "sap_fbl3n", "source_blob": "a.xlsx"}),
            "bu_id",
        ),
        (
            "/v1/jobs",
            json!({"bu_id": "B", "connector": "sap\u{0}", "source_blob": "a.xlsx"}),
            "connector",
        ),
        (
            "/v1/jobs",
            json!({"bu_id": "B", "connector": "sap_fbl3n", "source_blob": "a\u{0}.xlsx"}),
            "source_blob",
        ),
        ("/v1/dead-letters/retry", json!({"bu_id": "\u{0}"}), "bu_id"),
        ("/v1/dead-letters/retry", json!({"kind": "x\u{0}"}), "kind"),
        (
            "/v1/dead-letters/retry",
            json!({"since": "-200000-01-01T00:00:00Z"}),
            "since",
        ),
    ];
    for (path, body, field) in posts {
        let (s, b) = app.post(path, body.clone()).await;
        assert!(matches!(s, 400 | 422), "{body}: {s} {b}");
        let msg = b["error"]["message"].as_str().unwrap_or("");
        assert!(
            msg.contains(field),
            "{body}: the message names {field}: {b}"
        );
        assert_clean(&body.to_string(), &b, &blobs);
    }
    // Multipart: NUL in a text field, a bad boundary, a missing one, fields past the limit.
    let gl = sample_file("sap_fbl3n.xlsx");
    for (field, value) in [
        ("bu_id", "B\u{0}"),
        ("connector", "x\u{0}"),
        ("idempotency_key", "k\u{0}"),
    ] {
        let mut fields = vec![("bu_id", "BU-1"), ("connector", "sap_fbl3n")];
        fields.retain(|(k, _)| *k != field);
        fields.push((field, value));
        let (s, b) = upload(&app.client, &app.url(""), gl.clone(), "a.xlsx", &fields).await;
        assert!(matches!(s, 400 | 422), "{field}: {s} {b}");
        assert!(
            b["error"]["message"].as_str().unwrap().contains(field),
            "{b}"
        );
    }
    for content_type in [
        "multipart/form-data; boundary=",
        "multipart/form-data",
        "multipart/form-data; boundary=\"unterminated",
    ] {
        let r = app
            .client
            .post(app.url("/v1/uploads"))
            .header("content-type", content_type)
            .body("--x\r\n\r\n")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "{content_type}");
        assert!(
            r.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{content_type}"
        );
    }
    // 2 MiB of repeated text fields, chunked, against a 1 MiB upload limit: every part
    // counts. (Raw TCP: the server answers before the client has finished sending.)
    let part = format!(
        "--XyZ\r\nContent-Disposition: form-data; name=\"bu_id\"\r\n\r\n{}\r\n",
        "x".repeat(1000)
    );
    let body = part.repeat(2048);
    let mut s = TcpStream::connect(app.addr).await.unwrap();
    let (mut rd, mut wr) = s.split();
    let send = async {
        let head = "POST /v1/uploads HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=XyZ\r\nTransfer-Encoding: chunked\r\n\r\n";
        let _ = wr.write_all(head.as_bytes()).await;
        for chunk in body.as_bytes().chunks(16 * 1024) {
            let framed = [format!("{:x}\r\n", chunk.len()).as_bytes(), chunk, b"\r\n"].concat();
            if wr.write_all(&framed).await.is_err() {
                return;
            }
        }
    };
    let mut answer = Vec::new();
    let read = async {
        let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut answer)).await;
    };
    tokio::join!(send, read);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(
        answer.contains("\"code\":\"payload_too_large\""),
        "{answer}"
    );
    // A blob-store failure: a 503 with an error id, no server path.
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(blobs.join("uploads"), b"a file where a directory should be").unwrap();
    let fields = [("bu_id", "BU-1"), ("connector", "sap_fbl3n")];
    let (s, b) = upload(&app.client, &app.url(""), gl.clone(), "a.xlsx", &fields).await;
    assert_eq!((s, code(&b)), (503, "blob_store_unavailable"), "{b}");
    assert!(
        b["error"]["message"].as_str().unwrap().contains("error id"),
        "{b}"
    );
    assert_clean("blob store failure", &b, &blobs);
    std::fs::remove_file(blobs.join("uploads")).unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(&app.db.pool)
        .await
        .unwrap();
    assert_eq!(n, 0, "nothing was enqueued");
    app.stop().await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Api, |s| {
        s.api
            .tokens
            .insert("deployer".into(), "0123456789abcdef0123".into());
    })
    .await;
    for scheme in ["Bearer", "bearer", "BEARER"] {
        let r = app
            .client
            .post(app.url("/v1/jobs"))
            .header("authorization", format!("{scheme} 0123456789abcdef0123"))
            .json(&json!({"kind": "noop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 202, "{scheme}");
    }
    let r = app
        .client
        .post(app.url("/v1/jobs"))
        .header("authorization", "Basic 0123456789abcdef0123")
        .json(&json!({"kind": "noop"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    app.stop().await;
}

/// The job and its audit row commit together: when the audit insert fails, no job exists and
/// the stored file is removed; when it works, the job's file is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_and_its_audit_row_commit_together_or_not_at_all() {
    let app = spawn_app_on(std::sync::Arc::new(TestDb::new().await), Role::Api, |_| {}).await;
    let pool = &app.db.pool;
    sqlx::query(
        "CREATE FUNCTION refuse_audit() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'audit log full'; END $$",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query("CREATE TRIGGER refuse BEFORE INSERT ON audit_log FOR EACH ROW EXECUTE FUNCTION refuse_audit()")
        .execute(pool)
        .await
        .unwrap();
    let gl = sample_file("sap_fbl3n.xlsx");
    let fields = [("bu_id", "BU-A"), ("connector", "sap_fbl3n")];
    let (s, b) = upload(&app.client, &app.url(""), gl.clone(), "a.xlsx", &fields).await;
    assert!(s >= 500, "{s} {b}");
    assert!(
        !b.to_string().contains("audit log full"),
        "no database text: {b}"
    );
    let jobs: i64 = sqlx::query_scalar("SELECT count(*) FROM jobs")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(jobs, 0, "the job rolled back with its audit row");
    let blobs = app.db.blob_dir();
    wait_for(
        Duration::from_secs(5),
        "the refused upload's blob to go",
        || async { files_under(&blobs.join("uploads")).is_empty().then_some(()) },
    )
    .await;
    sqlx::query("DROP TRIGGER refuse ON audit_log")
        .execute(pool)
        .await
        .unwrap();
    let id = upload_ok(&app.client, &app.url(""), gl.clone(), "BU-A", "sap_fbl3n").await;
    let (key, audited): (String, i64) = sqlx::query_as(
        "SELECT j.payload->>'source_blob', (SELECT count(*) FROM audit_log a WHERE a.job_id = j.id) FROM jobs j WHERE j.id = $1",
    )
    .bind(id)
    .fetch_one(pool)
    .await
    .unwrap();
    assert_eq!(audited, 1);
    assert_eq!(std::fs::read(blobs.join(key)).unwrap(), gl);
    app.stop().await;
}

/// A body declared larger than `etl.max_upload_bytes` is refused at once, from its headers,
/// before any of it is sent (and so before anything is stored).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_declared_too_large_is_refused_before_its_body() {
    let app = spawn_app().await;
    let addr = app.addr.to_string();
    for path in ["/v1/uploads", "/v1/connectors/trial_balance/preview"] {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: multipart/form-data; boundary=x\r\nContent-Length: 999999999999\r\n\r\n"
        );
        s.write_all(req.as_bytes()).await.unwrap();
        // No body follows: an answer can only come from the headers.
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answered without waiting for the body")
            .unwrap();
        let head = String::from_utf8_lossy(&buf[..n]);
        assert!(head.starts_with("HTTP/1.1 413"), "{path}: {head}");
        assert!(head.contains("etl.max_upload_bytes"), "{path}: {head}");
    }
    let uploads = app.db.blob_dir().join("uploads");
    assert!(files_under(&uploads).is_empty(), "nothing stored");
    app.stop().await;
}
