//! Pushing the images of an OCI layout to a registry so that it holds byte for byte the
//! manifests and blobs that were built: `push(&Layout, &PushOptions) -> PushReport`.
//!
//! This module owns the order of a push (tags checked first, then blobs, then manifests, then
//! tags) and the sharing of blobs between repositories of one push. It must never change a
//! byte of what the layout holds, and never print a credential.

pub mod auth;
pub mod client;
pub mod credentials;
pub mod layout;
pub mod manifest;
pub mod progress;
pub mod reference;
pub mod target;
pub mod upload;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use tokio::sync::{Semaphore, watch};

use self::client::{Client, RetryPolicy, Transport};
use self::layout::{ImagePlan, Layout};
use self::manifest::{manifest_digest, put_manifest};
use self::progress::{Progress, ProgressMode};
use self::target::check_name_component;
pub use self::target::{RegistryTarget, check_tag};
use self::upload::{BlobJob, BlobOutcome, UploadOptions};

/// Everything a push needs besides the layout.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub target: RegistryTarget,
    pub transport: Transport,
    /// Tags every pushed image gets (at least one).
    pub tags: Vec<String>,
    /// Image names to push; empty pushes every named image of the layout.
    pub images: Vec<String>,
    /// Blob operations at once.
    pub jobs: usize,
    pub chunk_size: u64,
    pub retry: RetryPolicy,
    pub progress: ProgressMode,
}

impl PushOptions {
    /// Defaults: tag `latest`, 4 jobs, 16 MiB chunks, 5 retries from 200 ms.
    pub fn new(target: RegistryTarget, transport: Transport) -> PushOptions {
        PushOptions {
            target,
            transport,
            tags: vec!["latest".into()],
            images: Vec::new(),
            jobs: 4,
            chunk_size: 16 << 20,
            retry: RetryPolicy {
                retries: 5,
                base_delay: Duration::from_millis(200),
                max_delay: Duration::from_secs(10),
            },
            progress: ProgressMode::Lines,
        }
    }
}

/// What happened to one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ImageOutcome {
    /// Every tag already named this digest: one HEAD per tag, nothing else.
    Unchanged,
    /// The manifest was there; only tags were written.
    Tagged,
    /// Blobs and manifests were pushed.
    Pushed,
}

/// One pushed image, as the registry now holds it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    pub name: String,
    pub repository: String,
    pub digest: String,
    /// `HOST/REPOSITORY@DIGEST`: the pinned reference to deploy.
    pub reference: String,
    /// `HOST/REPOSITORY:TAG` for each tag.
    pub tags: Vec<String>,
    pub outcome: ImageOutcome,
}

/// The result of a push, printed with `--json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PushReport {
    pub registry: String,
    pub images: Vec<ImageReport>,
    pub blobs_present: u64,
    pub blobs_mounted: u64,
    pub blobs_uploaded: u64,
    /// Bytes of the blobs uploaded.
    pub bytes_uploaded: u64,
    /// Body bytes sent, resends after failures included.
    pub bytes_sent: u64,
    pub resumes: u64,
    pub restarts: u64,
    pub seconds: f64,
}

/// Pushes the images of `layout` chosen by `options`; see the module doc. It runs its own
/// async runtime: call `push_async` from async code.
pub fn push(layout: &Layout, options: &PushOptions) -> Result<PushReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(push_async(layout, options))
}

/// `push` for callers that already run inside a tokio runtime.
pub async fn push_async(layout: &Layout, options: &PushOptions) -> Result<PushReport> {
    if options.tags.is_empty() {
        bail!("push needs at least one tag");
    }
    for tag in &options.tags {
        check_tag(tag)?;
    }
    let plans = layout.plans(&options.images)?;
    if plans.is_empty() {
        bail!(
            "the layout names no image (no {} annotation in index.json)",
            layout::REF_NAME
        );
    }
    for plan in &plans {
        check_name_component(&plan.name)
            .with_context(|| format!("image name {:?} cannot be a repository", plan.name))?;
    }
    let credentials = credentials::resolve(&options.target.host)?;
    if let Some((_, source)) = &credentials {
        eprintln!(
            "registry {}: using credentials from {source:?}",
            options.target.host
        );
    }
    if options.transport == Transport::PlainHttp {
        eprintln!(
            "warning: pushing to {} over plain HTTP: nothing is encrypted or authenticated",
            options.target.host
        );
    }
    let client = Client::new(
        &options.target.host,
        &options.transport,
        credentials.map(|(c, _)| c),
        options.retry,
    )?;
    let holders = other_holders(layout, &plans, &options.target);
    push_all(layout, client, plans, holders, options).await
}

/// For each blob, the repositories of layout images NOT pushed this time that contain it:
/// mount sources for a partial push (`push api` after `push gateway`). A candidate that turns
/// out not to hold the blob costs nothing: the registry answers a failed mount by opening the
/// upload session the push needed anyway.
fn other_holders(
    layout: &Layout,
    pushed: &[ImagePlan],
    target: &RegistryTarget,
) -> HashMap<String, Vec<String>> {
    let mut holders: HashMap<String, Vec<String>> = HashMap::new();
    // Images left out of this push are only read for their blob lists: a broken one must not
    // stop the push of the others.
    let Ok(all) = layout.plans(&[]) else {
        return holders;
    };
    for plan in all
        .iter()
        .filter(|p| pushed.iter().all(|q| q.name != p.name))
    {
        for blob in &plan.blobs {
            holders
                .entry(blob.digest.clone())
                .or_default()
                .push(target.repository(&plan.name));
        }
    }
    holders
}

/// Shared by every task of one push.
struct Push {
    client: Client,
    layout: Layout,
    options: PushOptions,
    progress: Progress,
    permits: Semaphore,
    ledger: Ledger,
    /// Mount candidates outside this push, by blob digest.
    holders: HashMap<String, Vec<String>>,
    totals: Mutex<PushReport>,
}

async fn push_all(
    layout: &Layout,
    client: Client,
    plans: Vec<ImagePlan>,
    holders: HashMap<String, Vec<String>>,
    options: &PushOptions,
) -> Result<PushReport> {
    let started = Instant::now();
    client.ping().await?;
    let push = Arc::new(Push {
        client,
        layout: layout.clone(),
        options: options.clone(),
        progress: Progress::new(options.progress),
        permits: Semaphore::new(options.jobs.max(1)),
        ledger: Ledger::default(),
        holders,
        totals: Mutex::new(PushReport {
            registry: options.target.host.clone(),
            ..PushReport::default()
        }),
    });
    let mut tasks = tokio::task::JoinSet::new();
    for (index, plan) in plans.into_iter().enumerate() {
        let push = push.clone();
        tasks.spawn(async move { (index, push_image(&push, plan).await) });
    }
    let mut images = Vec::new();
    let mut failures = Vec::new();
    while let Some(joined) = tasks.join_next().await {
        let (index, result) = joined.context("an image push task panicked")?;
        match result {
            Ok(report) => images.push((index, report)),
            Err(err) => failures.push(format!("{err:#}")),
        }
    }
    if !failures.is_empty() {
        bail!("push failed:\n  {}", failures.join("\n  "));
    }
    images.sort_by_key(|(index, _)| *index);
    let mut report = push
        .totals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    report.images = images.into_iter().map(|(_, image)| image).collect();
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

async fn push_image(push: &Arc<Push>, plan: ImagePlan) -> Result<ImageReport> {
    let repository = push.options.target.repository(&plan.name);
    let root = plan.root().clone();
    let digest = root.descriptor.digest.clone();
    let mut stale_tags = Vec::new();
    for tag in &push.options.tags {
        if manifest_digest(&push.client, &repository, tag)
            .await?
            .as_deref()
            != Some(digest.as_str())
        {
            stale_tags.push(tag.clone());
        }
    }
    let outcome = if stale_tags.is_empty() {
        ImageOutcome::Unchanged
    } else if manifest_digest(&push.client, &repository, &digest)
        .await?
        .is_some()
    {
        ImageOutcome::Tagged
    } else {
        push_blobs(push, &repository, &plan).await?;
        for child in &plan.manifests[..plan.manifests.len() - 1] {
            put_manifest(&push.client, &repository, &child.descriptor.digest, child).await?;
        }
        ImageOutcome::Pushed
    };
    for tag in &stale_tags {
        put_manifest(&push.client, &repository, tag, &root).await?;
    }
    let host = &push.options.target.host;
    push.progress.line(&format!(
        "{host}/{repository}@{digest} {} ({})",
        match outcome {
            ImageOutcome::Unchanged => "unchanged",
            ImageOutcome::Tagged => "tagged",
            ImageOutcome::Pushed => "pushed",
        },
        push.options.tags.join(", ")
    ));
    Ok(ImageReport {
        name: plan.name.clone(),
        reference: format!("{host}/{repository}@{digest}"),
        tags: push
            .options
            .tags
            .iter()
            .map(|tag| format!("{host}/{repository}:{tag}"))
            .collect(),
        repository,
        digest,
        outcome,
    })
}

/// Pushes every blob of `plan` into `repository`, `jobs` at a time across the whole push.
async fn push_blobs(push: &Arc<Push>, repository: &str, plan: &ImagePlan) -> Result<()> {
    let mut tasks = tokio::task::JoinSet::new();
    for descriptor in &plan.blobs {
        let push = push.clone();
        let job = BlobJob {
            repository: repository.to_owned(),
            path: push.layout.blob_path(&descriptor.digest),
            descriptor: descriptor.clone(),
            mount_from: None,
        };
        tasks.spawn(async move { push_shared_blob(&push, job).await });
    }
    while let Some(joined) = tasks.join_next().await {
        joined.context("a blob upload task panicked")??;
    }
    Ok(())
}

/// Pushes one blob, once per push: the first repository that needs a blob uploads it, the
/// others wait for it and mount it from there.
async fn push_shared_blob(push: &Push, mut job: BlobJob) -> Result<()> {
    match push.ledger.claim(&job.descriptor.digest) {
        Claim::Follow(mut holder) => {
            // A closed channel (the leader's task died) reads as "nobody holds it".
            let source = holder
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|announced| announced.clone().flatten());
            job.mount_from = source.filter(|repository| *repository != job.repository);
            push_one_blob(push, &job).await.map(|_| ())
        }
        Claim::Lead(sender) => {
            job.mount_from = push
                .holders
                .get(&job.descriptor.digest)
                .and_then(|repositories| repositories.first().cloned());
            let outcome = push_one_blob(push, &job).await;
            let holder = outcome.as_ref().ok().map(|_| job.repository.clone());
            sender.send_replace(Some(holder));
            outcome.map(|_| ())
        }
    }
}

async fn push_one_blob(push: &Push, job: &BlobJob) -> Result<BlobOutcome> {
    let _permit = push
        .permits
        .acquire()
        .await
        .context("upload slots closed")?;
    let display = push
        .progress
        .blob(&job.repository, &job.descriptor.digest, job.descriptor.size);
    let options = UploadOptions {
        chunk_size: push.options.chunk_size,
    };
    let outcome = upload::push_blob(&push.client, job, options, &display).await?;
    let mut totals = push.totals.lock().unwrap_or_else(|e| e.into_inner());
    match &outcome {
        BlobOutcome::Present => {
            totals.blobs_present += 1;
            display.finish("already there");
        }
        BlobOutcome::Mounted { from } => {
            totals.blobs_mounted += 1;
            display.finish(&format!("mounted from {from}"));
        }
        BlobOutcome::Uploaded {
            bytes_sent,
            resumed,
            restarted,
        } => {
            totals.blobs_uploaded += 1;
            totals.bytes_uploaded += job.descriptor.size;
            totals.bytes_sent += bytes_sent;
            totals.resumes += u64::from(*resumed);
            totals.restarts += u64::from(*restarted);
            display.finish("uploaded");
        }
    }
    Ok(outcome)
}

/// Which repository of this push holds each blob, so later repositories mount it.
#[derive(Default)]
struct Ledger {
    holders: Mutex<HashMap<String, watch::Receiver<Option<Option<String>>>>>,
}

enum Claim {
    /// This task pushes the blob first and announces where it landed (`None` on failure).
    Lead(watch::Sender<Option<Option<String>>>),
    /// Another task leads; wait for its announcement.
    Follow(watch::Receiver<Option<Option<String>>>),
}

impl Ledger {
    fn claim(&self, digest: &str) -> Claim {
        let mut holders = self.holders.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(receiver) = holders.get(digest) {
            return Claim::Follow(receiver.clone());
        }
        let (sender, receiver) = watch::channel(None);
        holders.insert(digest.to_owned(), receiver);
        Claim::Lead(sender)
    }
}
