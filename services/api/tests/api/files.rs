//! Upload, download, delete and ownership of files, on both storage backends: the local
//! directory and a real S3 server (s3s-fs).

use serde_json::Value;

use crate::support::llm::FakeLlm;
use crate::support::{Api, Client, Postgres, S3_ACCESS_KEY, S3_SECRET_KEY, S3Server};

async fn upload(client: &Client, name: &str, content_type: &str, bytes: Vec<u8>) -> (u16, Value) {
    let request = client
        .request(
            reqwest::Method::POST,
            &format!("/api/files?name={}", urlencode(name)),
        )
        .header("content-type", content_type)
        .body(bytes);
    client.send(request).await
}

fn urlencode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

/// Bytes that are not text and not all alike, so a mix-up would show.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| ((i * 7919) % 251) as u8).collect()
}

/// The whole round trip on whatever backend `api` uses; returns the stored file's object key.
async fn round_trip(api: &Api) -> String {
    let anon = Client::new(api);
    let ann = anon.register("ann@example.org", "correct horse").await;
    let eve = anon.register("eve@example.org", "eavesdropper").await;
    let bytes = payload(700_000);
    let (status, file) = upload(&ann, "scan 01.pdf", "application/pdf", bytes.clone()).await;
    assert_eq!(status, 201, "{file}");
    assert_eq!(file["size_bytes"], 700_000);
    let id = file["id"].as_str().expect("id").to_owned();
    let (_, me) = ann.get("/api/auth/me").await;

    let response = ann
        .request(reqwest::Method::GET, &format!("/api/files/{id}"))
        .send()
        .await
        .expect("download");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/pdf");
    assert_eq!(
        response.headers()["content-disposition"],
        "attachment; filename=\"scan 01.pdf\""
    );
    assert_eq!(response.bytes().await.expect("bytes").to_vec(), bytes);

    let (_, listed) = ann.get("/api/files").await;
    assert_eq!(listed["files"][0]["id"], id.as_str());
    let (_, theirs) = eve.get("/api/files").await;
    assert_eq!(theirs["files"].as_array().map(Vec::len), Some(0));
    let (status, denied) = eve.get(&format!("/api/files/{id}")).await;
    assert_eq!(
        (status, denied["error"]["code"].as_str()),
        (403, Some("forbidden"))
    );
    assert_eq!(eve.delete(&format!("/api/files/{id}")).await.0, 403);

    // Limits: type, name, size (the test api allows 1 MiB).
    let (status, body) = upload(&ann, "tool.exe", "application/x-msdownload", payload(10)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let (status, _) = upload(&ann, "../../etc/passwd", "text/plain", payload(10)).await;
    assert_eq!(status, 422);
    let (status, body) = upload(&ann, "big.pdf", "application/pdf", payload(1_100_000)).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (413, Some("payload_too_large"))
    );
    let (_, listed) = ann.get("/api/files").await;
    assert_eq!(
        listed["files"].as_array().map(Vec::len),
        Some(1),
        "refused uploads left nothing: {listed}"
    );

    let key = format!("files/{}/{id}", me["id"].as_str().expect("user id"));
    let (status, _) = ann.delete(&format!("/api/files/{id}")).await;
    assert_eq!(status, 204);
    assert_eq!(ann.get(&format!("/api/files/{id}")).await.0, 404);
    key
}

const UPLOAD_LIMIT: (&str, &str) = ("API_MAX_UPLOAD_BYTES", "1048576");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_the_local_directory() {
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(&pg.url, &llm.base, &[UPLOAD_LIMIT]);
    let key = round_trip(&api).await;
    assert!(
        !api.storage_dir.path().join(&key).exists(),
        "deleted from disk"
    );
    let user_dir = api
        .storage_dir
        .path()
        .join(key.rsplit_once('/').expect("dir").0);
    assert!(user_dir.exists(), "the upload went to STORAGE_DIR");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_on_s3() {
    let Some(s3) = S3Server::start() else { return };
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let api = Api::start(
        &pg.url,
        &llm.base,
        &[
            UPLOAD_LIMIT,
            ("STORAGE_BACKEND", "s3"),
            ("S3_ENDPOINT", &s3.endpoint),
            ("S3_BUCKET", &s3.bucket),
            ("S3_REGION", "us-east-1"),
            ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
        ],
    );
    let (status, ready) = Client::new(&api).get("/api/health/ready").await;
    assert_eq!(status, 200, "{ready}");
    let key = round_trip(&api).await;
    let stored = s3.root.join(&s3.bucket).join(&key);
    assert!(!stored.exists(), "deleted from the S3 server");
    let user_dir = stored.parent().expect("parent").to_owned();
    assert!(
        user_dir.exists(),
        "the upload went to the S3 server's bucket: {}",
        user_dir.display()
    );
    assert!(
        !api.storage_dir.path().join("files").exists(),
        "nothing written locally"
    );
}

/// Readiness tells a missing bucket and a refused key apart, by code only; the one log line
/// names the cause and the bucket, never the secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_bucket_or_a_refused_key_makes_the_api_unready() {
    let Some(s3) = S3Server::start() else { return };
    let Some(pg) = Postgres::start() else { return };
    let llm = FakeLlm::start().await;
    let logs = tempfile::tempdir().expect("tempdir");
    for (case, bucket, key_id, secret, code, cause) in [
        (
            "present",
            s3.bucket.as_str(),
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            "ok",
            "",
        ),
        (
            "missing-bucket",
            "cairn-no-such-bucket",
            S3_ACCESS_KEY,
            S3_SECRET_KEY,
            "storage_bucket_missing",
            "does not exist",
        ),
        (
            "wrong-secret",
            s3.bucket.as_str(),
            S3_ACCESS_KEY,
            "not-the-secret",
            "storage_access_denied",
            "refuses the key",
        ),
        (
            "unknown-key",
            s3.bucket.as_str(),
            "cairn-unknown-access",
            S3_SECRET_KEY,
            "storage_access_denied",
            "refuses the key",
        ),
    ] {
        let log = logs.path().join(format!("{case}.log"));
        let api = Api::start_logged(
            &pg.url,
            &llm.base,
            &[
                ("STORAGE_BACKEND", "s3"),
                ("S3_ENDPOINT", &s3.endpoint),
                ("S3_BUCKET", bucket),
                ("S3_REGION", "us-east-1"),
                ("AWS_ACCESS_KEY_ID", key_id),
                ("AWS_SECRET_ACCESS_KEY", secret),
            ],
            &log,
        );
        let (status, ready) = Client::new(&api).get("/api/health/ready").await;
        assert_eq!(ready["checks"]["storage"], code, "{case}: {ready}");
        assert_eq!(
            status,
            if code == "ok" { 200 } else { 503 },
            "{case}: {ready}"
        );
        let shown = ready.to_string();
        assert!(
            !shown.contains(&s3.endpoint) && !shown.contains(bucket) && !shown.contains(secret),
            "{case}: readiness answers carry codes only: {shown}"
        );
        drop(api);
        let log = std::fs::read_to_string(&log).expect("api log");
        if code == "ok" {
            assert!(!log.contains("not ready"), "{case}: {log}");
            continue;
        }
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("not ready")).collect();
        assert_eq!(
            lines.len(),
            1,
            "{case}: one line per readiness round: {log}"
        );
        assert!(
            lines[0].contains(code) && lines[0].contains(cause) && lines[0].contains(bucket),
            "{case}: the log names the cause and the bucket: {log}"
        );
        assert!(
            !log.contains("not-the-secret") && !log.contains(S3_SECRET_KEY),
            "{case}: {log}"
        );
    }
}
