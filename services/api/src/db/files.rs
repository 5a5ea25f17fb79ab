//! The `files` table: metadata of uploaded files. The bytes live in object storage under
//! [`FileRecord::object_key`].

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::sessions::Lookup;

#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize)]
pub struct FileRecord {
    pub id: Uuid,
    #[serde(skip)]
    pub user_id: Uuid,
    pub name: String,
    pub content_type: String,
    pub size_bytes: i64,
    pub created_at: DateTime<Utc>,
}

impl FileRecord {
    /// Where the bytes live in the object store.
    pub fn object_key(&self) -> String {
        object_key(self.user_id, self.id)
    }
}

pub fn object_key(user_id: Uuid, file_id: Uuid) -> String {
    format!("files/{user_id}/{file_id}")
}

macro_rules! columns {
    () => {
        "id, user_id, name, content_type, size_bytes, created_at"
    };
}

pub async fn insert(
    pool: &PgPool,
    id: Uuid,
    user_id: Uuid,
    name: &str,
    content_type: &str,
    size_bytes: i64,
) -> Result<FileRecord, sqlx::Error> {
    sqlx::query_as::<_, FileRecord>(concat!("INSERT INTO files (id, user_id, name, content_type, size_bytes) VALUES ($1, $2, $3, $4, $5) \
         RETURNING ", columns!()))
    .bind(id)
    .bind(user_id)
    .bind(name)
    .bind(content_type)
    .bind(size_bytes)
    .fetch_one(pool)
    .await
}

pub async fn list(pool: &PgPool, user_id: Uuid) -> Result<Vec<FileRecord>, sqlx::Error> {
    sqlx::query_as::<_, FileRecord>(concat!(
        "SELECT ",
        columns!(),
        " FROM files WHERE user_id = $1 ORDER BY created_at DESC, id"
    ))
    .bind(user_id)
    .fetch_all(pool)
    .await
}

pub async fn find(
    pool: &PgPool,
    user_id: Uuid,
    id: Uuid,
) -> Result<Lookup<FileRecord>, sqlx::Error> {
    let file = sqlx::query_as::<_, FileRecord>(concat!(
        "SELECT ",
        columns!(),
        " FROM files WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(match file {
        None => Lookup::NotFound,
        Some(f) if f.user_id != user_id => Lookup::OtherOwner,
        Some(f) => Lookup::Found(f),
    })
}

pub async fn delete(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM files WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .map(|_| ())
}
