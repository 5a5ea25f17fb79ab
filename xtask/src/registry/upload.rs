//! Getting one blob into one repository with as few bytes on the wire as possible: a HEAD
//! first; a cross-repository mount when another repository of this push holds it; a
//! monolithic upload (POST, PUT) for a small blob; a chunked upload (POST, PATCH…, PUT) for a
//! large one that, after a dropped connection or a 5xx, asks the registry for the offset it
//! received and resumes there.
//!
//! It owns the blob protocol and never touches manifests or tags. It sends the layout's bytes
//! as they are: never re-compresses, never rewrites.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use reqwest::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName};
use reqwest::{Method, StatusCode, Url};
use tokio::io::{AsyncReadExt as _, AsyncSeekExt as _};

use super::auth::{self, Access};
use super::client::{Attempt, Client, Request};
use super::layout::Descriptor;
use super::progress::BlobProgress;

const CONTENT_RANGE: HeaderName = HeaderName::from_static("content-range");

/// One blob to get into one repository.
#[derive(Debug, Clone)]
pub struct BlobJob {
    pub repository: String,
    pub descriptor: Descriptor,
    pub path: PathBuf,
    /// A repository of this push that already holds the blob (mount source).
    pub mount_from: Option<String>,
}

/// How a blob got there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlobOutcome {
    /// The registry already had it in this repository (one HEAD).
    Present,
    /// Mounted from another repository: no bytes sent.
    Mounted { from: String },
    /// Uploaded; `bytes_sent` counts every body byte sent, resends included.
    Uploaded {
        bytes_sent: u64,
        resumed: u32,
        restarted: u32,
    },
}

/// Blobs up to `chunk_size` go in one PUT, larger ones in chunks of `chunk_size`.
#[derive(Debug, Clone, Copy)]
pub struct UploadOptions {
    pub chunk_size: u64,
}

/// Pushes one blob; see the module doc for the order of attempts.
pub async fn push_blob(
    client: &Client,
    job: &BlobJob,
    options: UploadOptions,
    progress: &BlobProgress,
) -> Result<BlobOutcome> {
    if blob_exists(client, &job.repository, &job.descriptor.digest).await? {
        return Ok(BlobOutcome::Present);
    }
    let session = match &job.mount_from {
        Some(from) => match mount(client, job, from).await? {
            Mount::Done => return Ok(BlobOutcome::Mounted { from: from.clone() }),
            Mount::Started(location) => location,
        },
        None => start_upload(client, &job.repository).await?,
    };
    let mut upload = Upload {
        client,
        job,
        options,
        progress,
        location: session,
        bytes_sent: 0,
        resumed: 0,
        restarted: 0,
        failures: 0,
    };
    if job.descriptor.size <= options.chunk_size {
        upload.monolithic().await?;
    } else {
        upload.chunked().await?;
    }
    Ok(BlobOutcome::Uploaded {
        bytes_sent: upload.bytes_sent,
        resumed: upload.resumed,
        restarted: upload.restarted,
    })
}

/// HEAD `/v2/<repo>/blobs/<digest>`.
pub async fn blob_exists(client: &Client, repository: &str, digest: &str) -> Result<bool> {
    let request = Request::new(
        Method::HEAD,
        client.url(&format!("{repository}/blobs/{digest}"))?,
        vec![auth::scope(repository, Access::PullPush)],
        format!("HEAD blob {repository}@{digest}"),
    );
    let response = client.send(&request).await?;
    match response.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(client.status_error(&request, response).await),
    }
}

enum Mount {
    Done,
    /// The registry declined the mount and opened an upload session instead.
    Started(Url),
}

async fn mount(client: &Client, job: &BlobJob, from: &str) -> Result<Mount> {
    let repository = &job.repository;
    let mut url = client.url(&format!("{repository}/blobs/uploads/"))?;
    url.query_pairs_mut()
        .append_pair("mount", &job.descriptor.digest)
        .append_pair("from", from);
    let request = Request::new(
        Method::POST,
        url,
        vec![
            auth::scope(repository, Access::PullPush),
            auth::scope(from, Access::Pull),
        ],
        format!(
            "mount {} from {from} into {repository}",
            job.descriptor.digest
        ),
    )
    .header(CONTENT_LENGTH, "0")?;
    let response = client.send(&request).await?;
    match response.status() {
        StatusCode::CREATED => Ok(Mount::Done),
        StatusCode::ACCEPTED => Ok(Mount::Started(client.location(&response)?)),
        _ => Err(client.status_error(&request, response).await),
    }
}

/// POST `/v2/<repo>/blobs/uploads/`: opens an upload session, returns its URL.
async fn start_upload(client: &Client, repository: &str) -> Result<Url> {
    let request = Request::new(
        Method::POST,
        client.url(&format!("{repository}/blobs/uploads/"))?,
        vec![auth::scope(repository, Access::PullPush)],
        format!("start upload to {repository}"),
    )
    .header(CONTENT_LENGTH, "0")?;
    let response = client.send(&request).await?;
    if response.status() != StatusCode::ACCEPTED {
        return Err(client.status_error(&request, response).await);
    }
    client.location(&response)
}

/// The state of one upload session.
struct Upload<'a> {
    client: &'a Client,
    job: &'a BlobJob,
    options: UploadOptions,
    progress: &'a BlobProgress,
    location: Url,
    bytes_sent: u64,
    resumed: u32,
    restarted: u32,
    failures: u32,
}

impl Upload<'_> {
    fn scopes(&self) -> Vec<String> {
        vec![auth::scope(&self.job.repository, Access::PullPush)]
    }

    fn digest(&self) -> &str {
        &self.job.descriptor.digest
    }

    /// One PUT with the whole blob. After a failure the same session is used again when the
    /// registry says it holds nothing of it, a fresh one otherwise; either way the blob is sent
    /// again whole (a small blob is at most one chunk, so that is the most a failure costs).
    async fn monolithic(&mut self) -> Result<()> {
        let body = read_range(&self.job.path, 0, self.job.descriptor.size).await?;
        loop {
            let request = self.finish_request(body.clone())?;
            self.bytes_sent += body.len() as u64;
            match self.client.send_once(&request).await? {
                Attempt::Answered(response) if response.status() == StatusCode::CREATED => {
                    return Ok(());
                }
                Attempt::Answered(response) => {
                    return Err(self.client.status_error(&request, response).await);
                }
                Attempt::Transient(reason) => {
                    self.fail(&reason).await?;
                    if self.committed().await? {
                        return Ok(());
                    }
                    if self.resume_offset().await? != 0 {
                        self.location = start_upload(self.client, &self.job.repository).await?;
                        self.restarted += 1;
                    }
                }
            }
        }
    }

    /// PATCH chunk after chunk, then PUT with the digest. After a failure the registry says
    /// how much it holds and the upload goes on from there.
    async fn chunked(&mut self) -> Result<()> {
        let size = self.job.descriptor.size;
        let mut offset = 0;
        while offset < size {
            let end = size.min(offset + self.options.chunk_size);
            let body = read_range(&self.job.path, offset, end).await?;
            let request = Request::new(
                Method::PATCH,
                self.location.clone(),
                self.scopes(),
                format!(
                    "PATCH {} bytes {offset}-{} of {}",
                    self.job.repository,
                    end - 1,
                    self.digest()
                ),
            )
            .header(CONTENT_TYPE, "application/octet-stream")?
            .header(CONTENT_RANGE, &format!("{offset}-{}", end - 1))?
            .body(body.clone());
            self.bytes_sent += body.len() as u64;
            match self.client.send_once(&request).await? {
                Attempt::Answered(response) if response.status() == StatusCode::ACCEPTED => {
                    self.location = self.client.location(&response)?;
                    offset = end;
                    self.progress.set_position(offset);
                }
                Attempt::Answered(response)
                    if response.status() == StatusCode::RANGE_NOT_SATISFIABLE =>
                {
                    self.fail("416 range not satisfiable").await?;
                    offset = self.resume_offset().await?;
                }
                Attempt::Answered(response) => {
                    return Err(self.client.status_error(&request, response).await);
                }
                Attempt::Transient(reason) => {
                    self.fail(&reason).await?;
                    offset = self.resume_offset().await?;
                }
            }
        }
        self.finish_chunked().await
    }

    /// The final PUT of a chunked upload (no body), retried through the status check.
    async fn finish_chunked(&mut self) -> Result<()> {
        loop {
            let request = self.finish_request(Bytes::new())?;
            match self.client.send_once(&request).await? {
                Attempt::Answered(response) if response.status() == StatusCode::CREATED => {
                    return Ok(());
                }
                Attempt::Answered(response) => {
                    return Err(self.client.status_error(&request, response).await);
                }
                Attempt::Transient(reason) => {
                    self.fail(&reason).await?;
                    if self.committed().await? {
                        return Ok(());
                    }
                    let offset = self.resume_offset().await?;
                    if offset < self.job.descriptor.size {
                        // The session was lost and restarted: upload the rest again.
                        return Box::pin(self.chunked()).await;
                    }
                }
            }
        }
    }

    fn finish_request(&self, body: Bytes) -> Result<Request> {
        let mut url = self.location.clone();
        url.query_pairs_mut().append_pair("digest", self.digest());
        let length = body.len().to_string();
        Ok(Request::new(
            Method::PUT,
            url,
            self.scopes(),
            format!("PUT blob {}@{}", self.job.repository, self.digest()),
        )
        .header(CONTENT_TYPE, "application/octet-stream")?
        .header(CONTENT_LENGTH, &length)?
        .body(body))
    }

    /// Counts a failure, gives up past the retry budget, and waits the backoff.
    async fn fail(&mut self, reason: &str) -> Result<()> {
        self.failures += 1;
        let retries = self.client.retry.retries;
        if self.failures > retries {
            bail!(
                "registry {}: uploading {} to {} failed {} times, last: {reason}",
                self.client.host(),
                self.digest(),
                self.job.repository,
                self.failures
            );
        }
        self.progress
            .note(&format!("{reason}; retrying ({}/{retries})", self.failures));
        tokio::time::sleep(self.client.retry.delay(self.failures)).await;
        Ok(())
    }

    /// True when the registry already has the blob (a final PUT whose answer was lost).
    async fn committed(&self) -> Result<bool> {
        blob_exists(self.client, &self.job.repository, self.digest()).await
    }

    /// Asks the registry how many bytes of the session it holds (GET on the upload URL) and
    /// returns the offset to go on from. A registry that lost or refuses the session (as
    /// distribution 2.8 does when a dropped PATCH left part of a chunk behind) gets a fresh
    /// session, from offset 0.
    async fn resume_offset(&mut self) -> Result<u64> {
        let request = Request::new(
            Method::GET,
            self.location.clone(),
            self.scopes(),
            format!("GET upload status {}", self.job.repository),
        );
        let response = self.client.send(&request).await?;
        if response.status() == StatusCode::NO_CONTENT {
            let offset = received_offset(
                response
                    .headers()
                    .get("range")
                    .and_then(|v| v.to_str().ok()),
            )
            .with_context(|| {
                format!(
                    "registry {}: upload status without a usable Range",
                    self.client.host()
                )
            })?;
            self.location = self.client.location(&response)?;
            self.resumed += 1;
            self.progress.note(&format!("resuming at byte {offset}"));
            self.progress.set_position(offset);
            return Ok(offset);
        }
        if matches!(
            response.status(),
            StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST
        ) {
            let answer = self.client.status_error(&request, response).await;
            self.progress.note(&format!(
                "session lost ({answer:#}); starting again from byte 0"
            ));
            self.location = start_upload(self.client, &self.job.repository).await?;
            self.restarted += 1;
            self.progress.set_position(0);
            return Ok(0);
        }
        Err(self.client.status_error(&request, response).await)
    }
}

/// The next offset from an upload status `Range: 0-<last>` header. Distribution answers
/// `0-0` for an empty session, so `0-0` reads as nothing received.
pub fn received_offset(range: Option<&str>) -> Option<u64> {
    let range = range?.trim();
    let range = range.strip_prefix("bytes=").unwrap_or(range);
    let (start, last) = range.split_once('-')?;
    let (start, last): (u64, u64) = (start.parse().ok()?, last.parse().ok()?);
    if start != 0 {
        return None;
    }
    Some(if last == 0 { 0 } else { last + 1 })
}

/// Reads bytes `[start, end)` of a blob file.
async fn read_range(path: &std::path::Path, start: u64, end: u64) -> Result<Bytes> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    file.seek(std::io::SeekFrom::Start(start))
        .await
        .with_context(|| format!("seeking {} to {start}", path.display()))?;
    let length = usize::try_from(end - start).context("chunk larger than memory")?;
    let mut buffer = vec![0; length];
    file.read_exact(&mut buffer)
        .await
        .with_context(|| format!("reading bytes {start}..{end} of {}", path.display()))?;
    Ok(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_from_range_headers() {
        assert_eq!(received_offset(Some("0-0")), Some(0));
        assert_eq!(received_offset(Some("0-1048575")), Some(1_048_576));
        assert_eq!(received_offset(Some("bytes=0-9")), Some(10));
        assert_eq!(received_offset(Some("5-9")), None);
        assert_eq!(received_offset(Some("junk")), None);
        assert_eq!(received_offset(None), None);
    }
}
