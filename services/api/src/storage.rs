//! Object storage for uploaded files through `object_store`: a local directory (the embedded
//! default) or an S3-compatible server. It owns building the store from configuration and the
//! readiness probe; it knows nothing of users or HTTP.

use std::sync::Arc;

use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

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
