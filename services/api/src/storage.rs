//! Object storage for uploaded files through `object_store`: a local directory (the embedded
//! default) or an S3-compatible server. It owns building the store from configuration, writing
//! a stream into it with a size limit ([`put_stream`]) and the readiness probe; it knows nothing
//! of users or HTTP.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

/// Size of one part of a multipart upload: S3's minimum for every part but the last.
pub const PART_BYTES: usize = 5 * 1024 * 1024;
/// Parts in flight at once per upload; with the one being filled, an upload holds at most
/// `(PARTS_IN_FLIGHT + 1) × PART_BYTES` in memory whatever its size.
const PARTS_IN_FLIGHT: usize = 2;

/// Why [`put_stream`] stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("upload larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The client's body broke off or could not be read.
    #[error("reading the upload: {0}")]
    Body(String),
    #[error("object storage: {0}")]
    Store(#[from] object_store::Error),
}

use crate::config::StorageConfig;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("creating the storage directory {dir}: {source}")]
    CreateDir { dir: String, source: std::io::Error },
    #[error("configuring object storage: {0}")]
    Configure(#[from] object_store::Error),
}

pub type Store = Arc<dyn ObjectStore>;

/// Builds the configured store. A local directory is created when missing.
pub fn open(config: &StorageConfig) -> Result<Store, StorageError> {
    match config {
        StorageConfig::Local { dir } => {
            std::fs::create_dir_all(dir).map_err(|source| StorageError::CreateDir {
                dir: dir.display().to_string(),
                source,
            })?;
            Ok(Arc::new(LocalFileSystem::new_with_prefix(dir)?))
        }
        StorageConfig::S3 {
            endpoint,
            bucket,
            region,
            access_key_id,
            secret_access_key,
        } => Ok(Arc::new(
            AmazonS3Builder::new()
                .with_endpoint(endpoint)
                .with_bucket_name(bucket)
                .with_region(region)
                .with_access_key_id(access_key_id)
                .with_secret_access_key(secret_access_key)
                .with_allow_http(endpoint.starts_with("http://"))
                .build()?,
        )),
    }
}

/// Why the store is not ready: each cause has its readiness code ([`ProbeError::code`]). The
/// messages name the bucket and the S3 error code, never a key.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("the S3 bucket {bucket:?} does not exist (S3_BUCKET)")]
    BucketMissing { bucket: String },
    #[error(
        "the S3 server refuses the key for bucket {bucket:?} ({reason}): check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
    )]
    AccessDenied { bucket: String, reason: String },
    #[error("{0}")]
    Unavailable(object_store::Error),
}

impl ProbeError {
    /// The code readiness answers with.
    pub fn code(&self) -> &'static str {
        match self {
            ProbeError::BucketMissing { .. } => "storage_bucket_missing",
            ProbeError::AccessDenied { .. } => "storage_access_denied",
            ProbeError::Unavailable(_) => "storage_unavailable",
        }
    }
}

/// S3 error codes that mean the server does not accept the key.
const REFUSED_KEY_CODES: &[&str] = &[
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidSecurity",
    "NotSignedUp",
];

/// Readiness: the store lists the (empty) `readiness-probe/` prefix. A listing, unlike a
/// metadata request for a missing object, is refused when the bucket itself is missing.
pub async fn ping(store: &dyn ObjectStore, config: &StorageConfig) -> Result<(), ProbeError> {
    match store
        .list_with_delimiter(Some(&Path::from("readiness-probe")))
        .await
    {
        Ok(_) => Ok(()),
        Err(err) => Err(classify(err, config)),
    }
}

/// Sorts a failed probe by its cause. `object_store` keeps the S3 status and error body only
/// in its messages (its request error types are private), so they are read from there.
fn classify(err: object_store::Error, config: &StorageConfig) -> ProbeError {
    let StorageConfig::S3 { bucket, .. } = config else {
        return ProbeError::Unavailable(err);
    };
    let bucket = bucket.clone();
    let mut text = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(cause) = source {
        text.push('\n');
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    let code = s3_error_code(&text);
    let refused_status = matches!(
        err,
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. }
    ) || text.contains("status code: 403")
        || text.contains("status code: 401");
    match code {
        Some("NoSuchBucket") => ProbeError::BucketMissing { bucket },
        Some(code) if REFUSED_KEY_CODES.contains(&code) => ProbeError::AccessDenied {
            bucket,
            reason: code.to_owned(),
        },
        _ if refused_status => ProbeError::AccessDenied {
            bucket,
            reason: code.map_or_else(|| "HTTP 403".to_owned(), str::to_owned),
        },
        _ => ProbeError::Unavailable(err),
    }
}

/// The `<Code>` of an S3 XML error body within `text`.
fn s3_error_code(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("<Code>")?;
    let (code, _) = rest.split_once("</Code>")?;
    Some(code.trim())
}

/// Writes `body` to `location` as it arrives, failing with [`UploadError::TooLarge`] as soon as
/// it passes `limit` bytes; returns the size stored. A body shorter than one part goes up in one
/// `put`; a longer one as a multipart upload, part by part (a staging file for the local store).
/// On any failure the partial upload is aborted, so nothing stays at `location`.
pub async fn put_stream<S>(
    store: &dyn ObjectStore,
    location: &Path,
    body: &mut S,
    limit: usize,
) -> Result<u64, UploadError>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    let mut body = Counted {
        body,
        size: 0,
        limit,
    };
    let mut first = Vec::new();
    let mut buffered = 0usize;
    while buffered < PART_BYTES {
        match body.next().await? {
            Some(chunk) => {
                buffered += chunk.len();
                first.push(chunk);
            }
            None => {
                store.put(location, PutPayload::from_iter(first)).await?;
                return Ok(body.size);
            }
        }
    }
    let mut writer =
        WriteMultipart::new_with_chunk_size(store.put_multipart(location).await?, PART_BYTES);
    for chunk in first {
        writer.put(chunk);
    }
    loop {
        let step = match writer.wait_for_capacity(PARTS_IN_FLIGHT).await {
            Ok(()) => body.next().await,
            Err(err) => Err(err.into()),
        };
        match step {
            Ok(Some(chunk)) => writer.put(chunk),
            Ok(None) => break,
            Err(err) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%location, error = %abort, "aborting a refused upload failed");
                }
                return Err(err);
            }
        }
    }
    writer.finish().await?;
    Ok(body.size)
}

/// A body stream that counts its bytes and fails once they pass the limit.
struct Counted<'a, S> {
    body: &'a mut S,
    size: u64,
    limit: usize,
}

impl<S> Counted<'_, S>
where
    S: Stream<Item = Result<Bytes, UploadError>> + Unpin,
{
    async fn next(&mut self) -> Result<Option<Bytes>, UploadError> {
        let Some(chunk) = self.body.next().await.transpose()? else {
            return Ok(None);
        };
        self.size += chunk.len() as u64;
        if self.size > self.limit as u64 {
            return Err(UploadError::TooLarge { limit: self.limit });
        }
        Ok(Some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3() -> StorageConfig {
        StorageConfig::S3 {
            endpoint: "http://s3:3900".into(),
            bucket: "cairn-files".into(),
            region: "garage".into(),
            access_key_id: "GK-id".into(),
            secret_access_key: "very-secret".into(),
        }
    }

    /// The message `object_store` gives for a refused listing.
    fn refused(status: &str, body: &str) -> object_store::Error {
        object_store::Error::Generic {
            store: "S3",
            source: format!(
                "Error performing list request: Error performing GET http://s3:3900/cairn-files?list-type=2 in 2ms - Server returned non-2xx status code: {status}: {body}"
            )
            .into(),
        }
    }

    fn body(code: &str) -> String {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{code}</Code><Message>m</Message></Error>"
        )
    }

    #[test]
    fn a_missing_bucket_and_a_refused_key_have_their_own_codes() {
        let missing = classify(refused("404 Not Found", &body("NoSuchBucket")), &s3());
        assert_eq!(missing.code(), "storage_bucket_missing");
        assert!(missing.to_string().contains("\"cairn-files\""), "{missing}");
        for code in [
            "InvalidAccessKeyId",
            "SignatureDoesNotMatch",
            "AccessDenied",
        ] {
            let denied = classify(refused("403 Forbidden", &body(code)), &s3());
            assert_eq!(denied.code(), "storage_access_denied", "{code}");
            let shown = denied.to_string();
            assert!(
                shown.contains(code) && !shown.contains("very-secret"),
                "{shown}"
            );
        }
        let bare = classify(refused("403 Forbidden", ""), &s3());
        assert_eq!(bare.code(), "storage_access_denied");
        let other = classify(
            refused("500 Internal Server Error", &body("InternalError")),
            &s3(),
        );
        assert_eq!(other.code(), "storage_unavailable");
    }

    #[test]
    fn a_local_store_is_only_ever_unavailable() {
        let local = StorageConfig::Local {
            dir: "/nowhere".into(),
        };
        let err = classify(refused("404 Not Found", &body("NoSuchBucket")), &local);
        assert_eq!(err.code(), "storage_unavailable");
    }

    #[tokio::test]
    async fn a_local_directory_is_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = StorageConfig::Local {
            dir: dir.path().to_owned(),
        };
        let store = open(&config).expect("open");
        ping(store.as_ref(), &config).await.expect("ready");
    }
}
