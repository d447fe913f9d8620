//! Where the crawler's passes put what they find: each page of repositories, with the
//! crawl state, in one Kafka transaction.

use std::collections::HashSet;

use anyhow::bail;
use codelupe_runtime::consume::transaction::Transactions;
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::RepoUrl;

use crate::metrics::{CrawlerMetrics, IndexError};
use crate::state::CrawlState;

/// Publishes pages of discovered repositories with their state, transactionally.
pub struct Sink<'a> {
    publisher: &'a Transactions,
    pub state: CrawlState,
    output: &'a str,
    state_topic: &'a str,
    metrics: &'a CrawlerMetrics,
}

impl<'a> Sink<'a> {
    pub fn new(
        publisher: &'a Transactions,
        state: CrawlState,
        output: &'a str,
        state_topic: &'a str,
        metrics: &'a CrawlerMetrics,
    ) -> Self {
        Self {
            publisher,
            state,
            output,
            state_topic,
            metrics,
        }
    }

    /// Publishes the repositories that are news (new, or pushed since), with the
    /// cursor if given, in one transaction; returns how many were published.
    pub async fn publish(
        &mut self,
        repos: Vec<RepoUrl>,
        cursor: Option<(&str, i64)>,
    ) -> anyhow::Result<usize> {
        let mut seen = HashSet::new();
        let fresh: Vec<RepoUrl> = repos
            .into_iter()
            .filter(|r| self.state.is_news(r) && seen.insert(r.full_name.clone()))
            .collect();
        if fresh.is_empty() && cursor.is_none() {
            return Ok(0);
        }
        let mut batch = Vec::with_capacity(fresh.len() * 2 + 1);
        for repo in &fresh {
            match Outgoing::record(self.output, &repo.full_name, repo) {
                Ok(record) => batch.push(record),
                Err(e) => {
                    self.metrics.index_errors.inc(IndexError::Encode);
                    bail!("cannot encode {}: {e}", repo.full_name);
                }
            }
        }
        batch.extend(CrawlState::entries(self.state_topic, &fresh, cursor)?);
        if let Err(e) = self.publisher.send_batch(&batch).await {
            self.metrics.index_errors.inc(IndexError::Produce);
            return Err(e);
        }
        self.state.committed(&fresh, cursor);
        self.metrics.repos_indexed.inc_by(fresh.len() as u64);
        if let Some(last) = fresh.last() {
            self.metrics.last_repo_stars.set(last.stars as f64);
        }
        Ok(fresh.len())
    }
}
