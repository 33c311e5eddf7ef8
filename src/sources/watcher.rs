//! The source watcher: a service in every worker process that takes due slots and lists
//! prefixes. Which process lists is decided by a compare-and-set on the source's durable
//! schedule row, on the database's clock; no process holds leader state in memory. A process
//! that is not in Normal mode takes nothing (ADR 0012).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::ingest::{Candidate, Ingest, Origin};
use super::store::{Claim, Due, RunCounts, StoreError, Trigger};
use super::{Skip, Source, SourceKind};
use crate::configuration::MaintenanceSettings;
use crate::etl::payload::BlobKey;
use crate::lifecycle::{Lifecycle, Mode};
use crate::metrics::Metrics;
use crate::sources::eventgrid::normalize_etag;
use crate::storage::{BlobMeta, BlobStore};

/// Blobs recorded per transaction while listing: memory holds one page, whatever the prefix
/// holds.
pub const LIST_PAGE: usize = 1000;

#[derive(Debug, Clone)]
pub struct WatcherConfig {
    /// How often due slots are looked for.
    pub poll_interval: Duration,
    /// A listing's hold on its source, renewed after every page; a listing whose process
    /// died is taken over once it lapses.
    pub lease: Duration,
    pub page_size: usize,
    /// A pause after each page (test aid: lets a test kill a process mid-listing).
    pub page_delay: Duration,
}

impl WatcherConfig {
    pub fn from_settings(m: &MaintenanceSettings) -> Self {
        WatcherConfig {
            poll_interval: Duration::from_millis(m.source_poll_interval_ms),
            lease: Duration::from_millis(m.source_lease_ms),
            page_size: LIST_PAGE,
            page_delay: Duration::ZERO,
        }
    }
}

pub struct Watcher {
    sources: Vec<Source>,
    ingest: Ingest,
    blobs: BlobStore,
    lifecycle: Lifecycle,
    metrics: Arc<Metrics>,
    /// This process's worker id: the lease owner.
    owner: String,
    config: WatcherConfig,
}

impl Watcher {
    pub fn new(
        sources: Vec<Source>,
        ingest: Ingest,
        blobs: BlobStore,
        lifecycle: Lifecycle,
        metrics: Arc<Metrics>,
        owner: String,
        config: WatcherConfig,
    ) -> Self {
        Watcher {
            sources: sources.into_iter().filter(|s| s.enabled).collect(),
            ingest,
            blobs,
            lifecycle,
            metrics,
            owner,
            config,
        }
    }

    pub async fn run(self, stop: CancellationToken) {
        if self.sources.is_empty() {
            return;
        }
        let mut synced = false;
        loop {
            if !synced {
                synced = self.sync().await;
            }
            // A draining or drained process takes no slot: a deploy must not start listings
            // it will not finish.
            if synced && self.lifecycle.mode() == Mode::Normal {
                self.poll_once(&stop).await;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
    }

    /// Creates or updates each source's schedule row; false when PostgreSQL did not answer.
    async fn sync(&self) -> bool {
        for s in &self.sources {
            if let Err(e) = super::ensure_schedule(self.ingest.store(), s).await {
                tracing::warn!(source = %s.name, error = %e, "cannot write the source's schedule");
                return false;
            }
        }
        true
    }

    /// Takes every due slot this process wins, one listing after another; returns how many
    /// listings ran.
    pub async fn poll_once(&self, stop: &CancellationToken) -> usize {
        let names: Vec<String> = self.sources.iter().map(|s| s.name.clone()).collect();
        let due = match self.ingest.store().due(&names).await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(error = %e, "looking for due sources failed");
                return 0;
            }
        };
        let mut ran = 0;
        for d in due {
            if stop.is_cancelled() || self.lifecycle.mode() != Mode::Normal {
                break;
            }
            let Some(source) = self.sources.iter().find(|s| s.name == d.source) else {
                continue;
            };
            match self.claim(source, &d).await {
                Ok(Some(claim)) => {
                    self.list(source, claim, stop).await;
                    ran += 1;
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(source = %source.name, error = %e, "claiming a slot failed")
                }
            }
        }
        ran
    }

    async fn claim(&self, source: &Source, d: &Due) -> Result<Option<Claim>, StoreError> {
        let trigger = match source.kind {
            SourceKind::Watch => Trigger::Schedule,
            SourceKind::Eventgrid => Trigger::Reconcile,
        };
        let listing = source.listing.clone();
        self.ingest
            .store()
            .claim(
                d,
                trigger,
                |now| listing.as_ref()?.next_after(now),
                &self.owner,
                self.config.lease,
            )
            .await
    }

    /// Lists the source's prefix page by page into the ledger, then closes the run.
    async fn list(&self, source: &Source, claim: Claim, stop: &CancellationToken) {
        tracing::info!(source = %source.name, run_id = claim.run_id, trigger = claim.trigger.as_str(), slot = %claim.slot, "listing");
        let mut counts = RunCounts::default();
        let outcome = self.list_pages(source, &claim, stop, &mut counts).await;
        let (error, hand_over) = match &outcome {
            Ok(()) => (None, false),
            Err(Stop::Stopped) => (
                Some(
                    "this process stopped before the listing finished; another takes it over"
                        .to_string(),
                ),
                true,
            ),
            Err(Stop::LeaseLost) => (
                Some("the listing's lease lapsed and another process took it over".to_string()),
                false,
            ),
            Err(Stop::Failed(e)) => (Some(e.clone()), true),
        };
        let label = if error.is_none() { "ok" } else { "failed" };
        self.metrics
            .source_tick(&source.name, claim.trigger.as_str(), label);
        self.metrics.source_blobs(
            &source.name,
            &[
                ("listed", counts.listed),
                ("new", counts.new),
                ("duplicate", counts.duplicate),
                ("skipped", counts.skipped),
            ],
        );
        if let Err(e) = self
            .ingest
            .store()
            .finish_run(
                &source.name,
                &self.owner,
                claim.run_id,
                &counts,
                error.as_deref(),
                hand_over,
            )
            .await
        {
            // The lease lapses by itself and the next listing is a `resume`.
            tracing::warn!(source = %source.name, error = %e, "closing the listing's run failed");
        }
        match error {
            None => tracing::info!(
                source = %source.name, run_id = claim.run_id, listed = counts.listed,
                new = counts.new, duplicate = counts.duplicate, skipped = counts.skipped,
                "listing finished"
            ),
            Some(e) => {
                tracing::warn!(source = %source.name, run_id = claim.run_id, error = %e, "listing stopped")
            }
        }
    }

    async fn list_pages(
        &self,
        source: &Source,
        claim: &Claim,
        stop: &CancellationToken,
        counts: &mut RunCounts,
    ) -> Result<(), Stop> {
        let origin = Origin::Listing {
            run_id: claim.run_id,
            found_by: source.listing_found_by(),
            slot: claim.slot,
        };
        let mut stream = self
            .blobs
            .list_meta(source.matcher.prefix())
            .chunks(self.config.page_size);
        while let Some(page) = stream.next().await {
            if stop.is_cancelled() {
                return Err(Stop::Stopped);
            }
            let mut cands = Vec::with_capacity(page.len());
            for meta in page {
                let meta = meta.map_err(|e| Stop::Failed(format!("listing: {e}")))?;
                counts.listed += 1;
                match candidate(source, claim, meta) {
                    Ok(c) => cands.push(c),
                    Err((skip, key)) => counts.skip(skip.as_str(), &key),
                }
            }
            self.ingest
                .record(source, origin, cands, counts)
                .await
                .map_err(|e| Stop::Failed(format!("recording: {e}")))?;
            if !self.config.page_delay.is_zero() {
                tokio::time::sleep(self.config.page_delay).await;
            }
            match self
                .ingest
                .store()
                .renew(&source.name, &self.owner, self.config.lease)
                .await
            {
                Ok(true) => {}
                Ok(false) => return Err(Stop::LeaseLost),
                Err(e) => return Err(Stop::Failed(format!("renewing the lease: {e}"))),
            }
        }
        Ok(())
    }
}

enum Stop {
    Stopped,
    LeaseLost,
    Failed(String),
}

/// A listed blob as a candidate, or why it is skipped.
fn candidate(source: &Source, claim: &Claim, m: BlobMeta) -> Result<Candidate, (Skip, String)> {
    let (key, bu_id): (BlobKey, _) = source
        .matcher
        .take(&m.key)
        .map_err(|s| (s, m.key.clone()))?;
    if m.size == 0 {
        return Err((Skip::Empty, m.key));
    }
    let age = claim.at - m.last_modified;
    if age.num_milliseconds() < source.min_age.as_millis() as i64 {
        return Err((Skip::TooRecent, m.key));
    }
    let Some(etag) = m
        .etag
        .as_deref()
        .map(normalize_etag)
        .filter(|e| !e.is_empty())
    else {
        return Err((Skip::NoEtag, m.key));
    };
    Ok(Candidate {
        key,
        bu_id,
        etag,
        size: m.size as i64,
        last_modified: Some(m.last_modified),
        event_id: None,
    })
}
