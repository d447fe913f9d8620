//! What the crawler has published and how far each query got, kept in the compacted
//! `crawler-state` topic and written in the same transaction as the `repo-urls`
//! records it describes, so the two never disagree after a crash.

use std::collections::HashMap;
use std::ops::ControlFlow;

use codelupe_runtime::kafka::{self, KafkaClients};
use codelupe_runtime::publish::Outgoing;
use codelupe_runtime::records::{now_ms, CrawlerState, RepoUrl};
use codelupe_runtime::AvroRecord;

const REPO_PREFIX: &str = "repo/";
const CURSOR_PREFIX: &str = "cursor/";

#[derive(Debug, Default)]
pub struct CrawlState {
    /// Published repositories and the pushed_at they were published with.
    published: HashMap<String, Option<i64>>,
    cursors: HashMap<String, i64>,
}

impl CrawlState {
    /// Reads the state topic to its end (read_committed: aborted batches are invisible).
    /// Call after the transactional producer is initialised, which aborts whatever a
    /// crashed predecessor left open.
    pub async fn load(clients: &KafkaClients, topic: &str) -> anyhow::Result<Self> {
        let label = topic.to_string();
        let state = kafka::read_to_end(
            clients,
            topic,
            None,
            Self::default(),
            move |state, key, payload| {
                let key = String::from_utf8_lossy(key);
                match payload {
                    // A tombstone forgets the entry.
                    None => state.forget(&key),
                    // Anyone with produce rights can write here: an entry that does
                    // not decode is skipped (at worst its repository is published
                    // again) rather than keeping the crawler from starting.
                    Some(payload) => match CrawlerState::decode(payload) {
                        Ok(entry) => state.apply(&key, &entry),
                        Err(e) => {
                            tracing::error!(topic = %label, %key, error = %e, "undecodable state entry skipped")
                        }
                    },
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
        tracing::info!(
            repositories = state.published.len(),
            cursors = state.cursors.len(),
            "crawl state loaded"
        );
        Ok(state)
    }

    fn apply(&mut self, key: &str, entry: &CrawlerState) {
        if let Some(name) = key.strip_prefix(REPO_PREFIX) {
            self.published.insert(name.to_string(), entry.pushed_at_ms);
        } else if let (Some(query), Some(done)) =
            (key.strip_prefix(CURSOR_PREFIX), entry.done_until_ms)
        {
            self.cursors.insert(query.to_string(), done);
        }
    }

    fn forget(&mut self, key: &str) {
        if let Some(name) = key.strip_prefix(REPO_PREFIX) {
            self.published.remove(name);
        } else if let Some(query) = key.strip_prefix(CURSOR_PREFIX) {
            self.cursors.remove(query);
        }
    }

    /// Never published, or pushed since it was.
    pub fn is_news(&self, repo: &RepoUrl) -> bool {
        match self.published.get(&repo.full_name) {
            None => true,
            Some(before) => matches!((before, repo.pushed_at_ms), (Some(b), Some(now)) if now > *b),
        }
    }

    pub fn cursor(&self, query: &str) -> Option<i64> {
        self.cursors.get(query).copied()
    }

    pub fn published_count(&self) -> usize {
        self.published.len()
    }

    /// State records for a batch: one per published repository, plus the cursor.
    pub fn entries(
        state_topic: &str,
        repos: &[RepoUrl],
        cursor: Option<(&str, i64)>,
    ) -> Result<Vec<Outgoing>, codelupe_runtime::codec::CodecError> {
        let now = now_ms();
        let mut out = Vec::with_capacity(repos.len() + 1);
        for repo in repos {
            let entry = CrawlerState {
                pushed_at_ms: repo.pushed_at_ms,
                done_until_ms: None,
                updated_at_ms: now,
            };
            out.push(Outgoing::record(
                state_topic,
                &format!("{REPO_PREFIX}{}", repo.full_name),
                &entry,
            )?);
        }
        if let Some((query, done)) = cursor {
            let entry = CrawlerState {
                pushed_at_ms: None,
                done_until_ms: Some(done),
                updated_at_ms: now,
            };
            out.push(Outgoing::record(
                state_topic,
                &format!("{CURSOR_PREFIX}{query}"),
                &entry,
            )?);
        }
        Ok(out)
    }

    /// After the batch's transaction committed.
    pub fn committed(&mut self, repos: &[RepoUrl], cursor: Option<(&str, i64)>) {
        for repo in repos {
            self.published
                .insert(repo.full_name.clone(), repo.pushed_at_ms);
        }
        if let Some((query, done)) = cursor {
            self.cursors.insert(query.to_string(), done);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(name: &str, pushed: Option<i64>) -> RepoUrl {
        RepoUrl {
            full_name: name.into(),
            clone_url: String::new(),
            default_branch: None,
            language: None,
            stars: 0,
            forks: 0,
            size_kb: 0,
            topics: vec![],
            license_spdx: None,
            archived: false,
            fork: false,
            created_at_ms: None,
            pushed_at_ms: pushed,
            description: None,
            source: "test".into(),
            discovered_at_ms: 0,
        }
    }

    #[test]
    fn republishes_only_when_pushed_at_moved_on() {
        let mut state = CrawlState::default();
        assert!(state.is_news(&repo("a/b", Some(10))));
        state.committed(&[repo("a/b", Some(10)), repo("c/d", None)], Some(("q", 99)));
        assert!(!state.is_news(&repo("a/b", Some(10))));
        assert!(!state.is_news(&repo("a/b", Some(9))));
        assert!(state.is_news(&repo("a/b", Some(11))));
        assert!(!state.is_news(&repo("c/d", None)));
        assert_eq!(state.cursor("q"), Some(99));
    }

    #[test]
    fn entries_round_trip_through_apply() {
        let repos = [repo("a/b", Some(5))];
        let entries = CrawlState::entries("s", &repos, Some(("github/x", 42))).unwrap();
        let mut state = CrawlState::default();
        for e in &entries {
            let key = String::from_utf8(e.key.clone()).unwrap();
            state.apply(&key, &CrawlerState::decode(&e.payload).unwrap());
        }
        assert_eq!(state.cursor("github/x"), Some(42));
        assert!(!state.is_news(&repos[0]));
    }
}
