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

/// Readiness: the store answers a metadata request (a missing object is an answer).
pub async fn ping(store: &dyn ObjectStore) -> Result<(), object_store::Error> {
    match store.head(&Path::from("readiness-probe")).await {
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(err) => Err(err),
    }
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
