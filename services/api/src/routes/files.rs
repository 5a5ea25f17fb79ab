//! `/api/files`: upload (`POST /api/files?name=NAME`, the raw bytes as the body, their type in
//! `Content-Type`), list, download (streamed from the store), delete. Only the owner reaches a
//! file. The body streams to the store as it arrives ([`storage::put_stream`]: one `put` under a
//! part, a multipart upload above), so an upload costs a few parts of memory whatever its size;
//! the size limit is enforced while streaming and a refused or broken upload is aborted, leaving
//! nothing. The bytes are written before the metadata row, and removed again when the row fails.

use axum::Json;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use futures_util::{StreamExt, TryStreamExt};
use object_store::ObjectStoreExt;
use object_store::path::Path;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::PathId;
use crate::app::AppState;
use crate::auth::AuthUser;
use crate::db::files::{self, FileRecord};
use crate::db::sessions::Lookup;
use crate::error::ApiError;
use crate::storage::{self, UploadError};

const MAX_NAME_CHARS: usize = 255;

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    name: String,
}

/// 422 unless `name` is a plain file name.
fn check_name(name: &str) -> Result<(), ApiError> {
    let plain = !name.trim().is_empty()
        && name.chars().count() <= MAX_NAME_CHARS
        && !name.contains(['/', '\\'])
        && !name.chars().any(char::is_control)
        && name != "."
        && name != "..";
    if plain {
        Ok(())
    } else {
        Err(ApiError::Unprocessable(format!(
            "name: {name:?} is not a file name (1 to {MAX_NAME_CHARS} characters, no slashes or control characters)"
        )))
    }
}

/// The upload's media type without parameters, if it is an allowed one.
fn allowed_type(headers: &HeaderMap, allowed: &[String]) -> Result<String, ApiError> {
    let raw = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::UnsupportedMediaType("Content-Type header is required".into()))?;
    let media = raw
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if allowed.contains(&media) {
        Ok(media)
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {media:?} is not allowed; allowed: {}",
            allowed.join(", ")
        )))
    }
}

/// Streams the body to `location`, never holding more than a few parts of it in memory; 413 as
/// soon as it passes `limit` bytes (the rest of the body is read and dropped, briefly, so the
/// client hears the 413). Nothing stays in the store when it fails.
async fn store_body(
    state: &AppState,
    location: &Path,
    body: Body,
    limit: usize,
) -> Result<u64, ApiError> {
    let mut stream = body.into_data_stream();
    let mut chunks = (&mut stream).map(|chunk| {
        chunk.map_err(|err| {
            // The router's DefaultBodyLimit ends the body with a length-limit error.
            if err.to_string().contains("length limit") {
                UploadError::TooLarge { limit }
            } else {
                UploadError::Body(err.to_string())
            }
        })
    });
    let stored = storage::put_stream(state.store.as_ref(), location, &mut chunks, limit).await;
    match stored {
        Ok(size) => Ok(size),
        Err(UploadError::TooLarge { limit }) => {
            lifecycle::linger::discard_rest(stream).await;
            Err(ApiError::PayloadTooLarge(format!(
                "upload larger than {limit} bytes"
            )))
        }
        Err(UploadError::Body(reason)) => Err(ApiError::BadRequest(format!(
            "reading the upload: {reason}"
        ))),
        Err(UploadError::Store(err)) => Err(err.into()),
    }
}

pub async fn upload(
    State(state): State<AppState>,
    caller: AuthUser,
    query: Result<Query<UploadQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<FileRecord>), ApiError> {
    let Query(query) = query?;
    check_name(&query.name)?;
    let content_type = allowed_type(&headers, &state.config.limits.upload_types)?;
    let limit = state.config.limits.upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|length| length > limit) {
        lifecycle::linger::discard_rest(body.into_data_stream()).await;
        return Err(ApiError::PayloadTooLarge(format!(
            "upload larger than {limit} bytes"
        )));
    }
    let id = Uuid::new_v4();
    let location = Path::from(files::object_key(caller.id, id));
    let size = store_body(&state, &location, body, limit).await?;
    let record = files::insert(
        &state.pool,
        id,
        caller.id,
        &query.name,
        &content_type,
        size as i64,
    )
    .await;
    match record {
        Ok(record) => Ok((StatusCode::CREATED, Json(record))),
        Err(err) => {
            let _ = state.store.delete(&location).await;
            Err(err.into())
        }
    }
}

pub async fn list(
    State(state): State<AppState>,
    caller: AuthUser,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        json!({ "files": files::list(&state.pool, caller.id).await? }),
    ))
}

async fn owned(state: &AppState, caller: AuthUser, id: Uuid) -> Result<FileRecord, ApiError> {
    match files::find(&state.pool, caller.id, id).await? {
        Lookup::Found(file) => Ok(file),
        Lookup::NotFound => Err(ApiError::NotFound(format!("file {id} not found"))),
        Lookup::OtherOwner => Err(ApiError::Forbidden(format!(
            "file {id} belongs to another user"
        ))),
    }
}

/// `Content-Disposition` for a stored name, safe whatever the name holds.
fn disposition(name: &str) -> HeaderValue {
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "._- ".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    HeaderValue::from_str(&format!("attachment; filename=\"{ascii}\""))
        .unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

pub async fn download(
    State(state): State<AppState>,
    caller: AuthUser,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let file = owned(&state, caller, id).await?;
    let object = state.store.get(&Path::from(file.object_key())).await?;
    let stream = object.into_stream().map_err(std::io::Error::other);
    let content_type = HeaderValue::from_str(&file.content_type)
        .unwrap_or_else(|_| HeaderValue::from_static("application/octet-stream"));
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, file.size_bytes)
        .header(header::CONTENT_DISPOSITION, disposition(&file.name))
        .header(header::X_CONTENT_TYPE_OPTIONS, "nosniff")
        .body(Body::from_stream(stream))
        .map_err(|err| ApiError::Internal(format!("building a download response: {err}")))
}

pub async fn delete(
    State(state): State<AppState>,
    caller: AuthUser,
    PathId(id): PathId,
) -> Result<StatusCode, ApiError> {
    let file = owned(&state, caller, id).await?;
    match state.store.delete(&Path::from(file.object_key())).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
        Err(err) => return Err(err.into()),
    }
    files::delete(&state.pool, file.id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_must_be_plain() {
        assert!(check_name("notes.txt").is_ok());
        assert!(check_name("'; DROP TABLE files; --.txt").is_ok());
        for bad in ["", "  ", "../etc/passwd", "a/b", "a\\b", "..", "a\nb"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_type_parameters_are_ignored_and_unknown_types_refused() {
        let allowed = vec!["text/plain".to_owned()];
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("Text/Plain; charset=utf-8"),
        );
        assert_eq!(
            allowed_type(&headers, &allowed).expect("allowed"),
            "text/plain"
        );
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/x-msdownload"),
        );
        assert!(matches!(
            allowed_type(&headers, &allowed),
            Err(ApiError::UnsupportedMediaType(_))
        ));
    }

    #[test]
    fn disposition_never_breaks_the_header() {
        let value = disposition("a\"b\r\nc.txt");
        assert_eq!(
            value.to_str().expect("ascii"),
            "attachment; filename=\"a_b__c.txt\""
        );
    }
}
