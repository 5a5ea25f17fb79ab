//! Manifests in the registry: which digest a tag or digest names (HEAD), and writing a
//! manifest under a tag or digest with the exact bytes of the layout (PUT), checking that the
//! registry computed the digest cairn built; and resolving an upstream tag to its digest (`pin`).
//!
//! It never parses or re-serialises a manifest: bytes in, bytes out.

use anyhow::{Result, bail};
use bytes::Bytes;
use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use sha2::{Digest as _, Sha256};

use super::auth::{self, Access};
use super::client::{Client, Request};
use super::layout::ManifestBlob;

/// The manifest media types a registry may hold for an image.
const MANIFEST_TYPES: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// HEAD `/v2/<repo>/manifests/<reference>`: the digest the registry holds under it, if any.
pub async fn manifest_digest(
    client: &Client,
    repository: &str,
    reference: &str,
) -> Result<Option<String>> {
    head_digest(client, repository, reference, Access::PullPush).await
}

/// The digest of the manifest `repository:tag` names, asking only for pull access (an
/// upstream image the user cannot push to). A registry that answers HEAD without
/// `Docker-Content-Digest` gets a GET, and the digest is that of the bytes it returns.
pub async fn resolve_tag(client: &Client, repository: &str, tag: &str) -> Result<Option<String>> {
    if let Some(digest) = head_digest(client, repository, tag, Access::Pull).await? {
        return Ok(Some(digest));
    }
    let request = Request::new(
        Method::GET,
        client.url(&format!("{repository}/manifests/{tag}"))?,
        vec![auth::scope(repository, Access::Pull)],
        format!("GET manifest {repository}:{tag}"),
    )
    .header(ACCEPT, MANIFEST_TYPES)?;
    let response = client.send(&request).await?;
    match response.status() {
        StatusCode::OK => {
            let bytes = response
                .bytes()
                .await
                .map_err(|err| anyhow::anyhow!("{}: reading the body: {err}", request.what))?;
            Ok(Some(format!("sha256:{:x}", Sha256::digest(&bytes))))
        }
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(client.status_error(&request, response).await),
    }
}

async fn head_digest(
    client: &Client,
    repository: &str,
    reference: &str,
    access: Access,
) -> Result<Option<String>> {
    let request = Request::new(
        Method::HEAD,
        client.url(&format!("{repository}/manifests/{reference}"))?,
        vec![auth::scope(repository, access)],
        format!("HEAD manifest {repository}:{reference}"),
    )
    .header(ACCEPT, MANIFEST_TYPES)?;
    let response = client.send(&request).await?;
    match response.status() {
        StatusCode::OK => Ok(response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)),
        StatusCode::NOT_FOUND => Ok(None),
        _ => Err(client.status_error(&request, response).await),
    }
}

/// PUT `/v2/<repo>/manifests/<reference>` with the manifest's exact bytes; checks that the
/// registry computed the same digest.
pub async fn put_manifest(
    client: &Client,
    repository: &str,
    reference: &str,
    manifest: &ManifestBlob,
) -> Result<()> {
    let media_type = if manifest.descriptor.media_type.is_empty() {
        "application/vnd.oci.image.manifest.v1+json"
    } else {
        &manifest.descriptor.media_type
    };
    let request = Request::new(
        Method::PUT,
        client.url(&format!("{repository}/manifests/{reference}"))?,
        vec![auth::scope(repository, Access::PullPush)],
        format!("PUT manifest {repository}:{reference}"),
    )
    .header(CONTENT_TYPE, media_type)?
    .body(Bytes::from(manifest.bytes.clone()));
    let response = client.send(&request).await?;
    if response.status() != StatusCode::CREATED {
        return Err(client.status_error(&request, response).await);
    }
    let stored = response
        .headers()
        .get("docker-content-digest")
        .and_then(|v| v.to_str().ok());
    if let Some(stored) = stored
        && stored != manifest.descriptor.digest
    {
        bail!(
            "registry {}: {repository}:{reference} stored as {stored}, built as {}",
            client.host(),
            manifest.descriptor.digest
        );
    }
    Ok(())
}
