//! The downloader's side of the clone store (`codelupe_clone_store`): a
//! marker per repository (which pack holds it at which commit, so an unchanged
//! repository is published again without the network), the byte budget uploads wait
//! for, and retention.
//!
//! Markers live at `markers/<host>/<owner>/<name>.json`, each part lowercased and
//! checked (no empty, `.` or `..` parts, no separators), so `a-b/c` and `a/b-c` cannot
//! collide and nothing lands outside the store.
//!
//! Retention: a sweep never deletes a pack that a `repo-clones` record not yet
//! committed by a reader group (the processor's) references: it reads those records
//! from each group's committed offsets, so the readers' progress decides, not a guess.
//! Of the others it deletes those past the retention period, then the oldest while the
//! store is over its budget; packs written within the grace period are kept whatever
//! the budget (their record may still be on its way). While the store is over budget
//! an upload waits: the downloader pauses, never deletes unread work. Deletes are
//! idempotent, so replicas sweeping at once cannot break each other.

use std::collections::{BTreeMap, HashSet};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use codelupe_clone_store::{CloneStore, PackRef, StoredPack};
use codelupe_runtime::codec::AvroRecord as _;
use codelupe_runtime::kafka::{read_from, KafkaClients, LagReader};
use codelupe_runtime::records::RepoClone;
use prometheus::IntGauge;
use rdkafka::Offset;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// What the store holds of one repository, written after its pack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Marker {
    pub full_name: String,
    pub commit_id: String,
    pub default_branch: Option<String>,
    pub pushed_at_ms: Option<i64>,
    pub size_bytes: i64,
    pub file_count: i64,
    pub lines_by_language: BTreeMap<String, i64>,
    pub cloned_at_ms: i64,
    pub pack_uri: String,
    pub pack_bytes: i64,
    pub pack_sha256: String,
}

impl Marker {
    /// Whether this marker is `repo` as it is now (nothing pushed since it was made).
    pub fn is_current_for(&self, repo: &codelupe_runtime::records::RepoUrl) -> bool {
        let unchanged = match (self.pushed_at_ms, repo.pushed_at_ms) {
            (Some(had), Some(now)) => had >= now,
            (_, None) => true,
            (None, Some(_)) => false,
        };
        unchanged && self.full_name == repo.full_name
    }

    pub fn pack(&self) -> PackRef {
        PackRef {
            uri: self.pack_uri.clone(),
            bytes: self.pack_bytes,
            sha256: self.pack_sha256.clone(),
        }
    }
}

const MARKERS: &str = "markers";

/// Where the marker of `full_name` from `host` lives; None if a part is unsafe.
pub fn marker_key(host: &str, full_name: &str) -> Option<String> {
    let (owner, name) = full_name.split_once('/')?;
    let name = name.strip_suffix(".git").unwrap_or(name);
    Some(format!(
        "{MARKERS}/{}/{}/{}.json",
        safe_part(host)?,
        safe_part(owner)?,
        safe_part(name)?
    ))
}

/// A path part that is safe and unambiguous: lowercased ASCII letters, digits, `-`,
/// `_` and `.`, not `.` or `..`, not starting with `.`.
fn safe_part(part: &str) -> Option<String> {
    let ok = !part.is_empty()
        && part.len() <= 100
        && !part.starts_with('.')
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    ok.then(|| part.to_ascii_lowercase())
}

#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub max_age: Duration,
    pub budget_bytes: Option<u64>,
    pub grace: Duration,
}

/// The packs a sweep deletes, oldest first, and the bytes the store keeps: never one
/// in `unread`, nor one written within the grace period; of the rest those past
/// `max_age`, then the oldest while the store holds more than the budget with room for
/// the `wanted` bytes of uploads waiting.
pub fn plan(
    packs: &[StoredPack],
    unread: &HashSet<String>,
    wanted: u64,
    now_ms: i64,
    retention: &Retention,
) -> (Vec<String>, u64) {
    let mut packs: Vec<&StoredPack> = packs.iter().collect();
    packs.sort_by_key(|p| p.modified_ms);
    let mut kept: u64 = packs.iter().map(|p| p.bytes).sum();
    let mut deleted = Vec::new();
    for pack in packs {
        let age_ms = now_ms - pack.modified_ms;
        if unread.contains(&pack.uri) || age_ms < retention.grace.as_millis() as i64 {
            continue;
        }
        let expired = age_ms > retention.max_age.as_millis() as i64;
        let over_budget = retention.budget_bytes.is_some_and(|b| kept + wanted > b);
        if expired || over_budget {
            kept -= pack.bytes;
            deleted.push(pack.uri.clone());
        }
    }
    (deleted, kept)
}

/// The packs that records not yet committed by every one of `readers` reference.
pub async fn unread_packs(
    clients: &KafkaClients,
    topic: &str,
    readers: &[String],
) -> anyhow::Result<HashSet<String>> {
    let mut unread = HashSet::new();
    for group in readers {
        let (clients_c, group_c, topic_c) = (clients.clone(), group.clone(), topic.to_string());
        let positions = tokio::task::spawn_blocking(move || {
            LagReader::new(&clients_c, &group_c, &topic_c)?.unread()
        })
        .await??;
        let starts: Vec<(i32, Offset)> = positions
            .into_iter()
            .filter(|&(_, from, high)| from < high)
            .map(|(p, from, _)| (p, Offset::Offset(from)))
            .collect();
        if starts.is_empty() {
            continue;
        }
        unread = read_from(
            clients,
            topic,
            Some(starts),
            unread,
            |unread, _, payload| {
                // A record that does not decode references nothing this sweep could keep.
                if let Some(clone) = payload.and_then(|p| RepoClone::decode(p).ok()) {
                    unread.insert(clone.clone_uri);
                }
                Ok(ControlFlow::Continue(()))
            },
        )
        .await?;
    }
    Ok(unread)
}

/// The bytes the store holds as of the last sweep plus what was written since, and
/// the gate an upload waits at while that is over the budget.
pub struct Budget {
    pub budget_bytes: Option<u64>,
    stored: AtomicU64,
    /// Bytes of uploads let through and not finished yet.
    uploading: AtomicU64,
    /// Bytes written since the running sweep began listing: its listing may miss them.
    written_since_listing: AtomicU64,
    /// Bytes of the uploads waiting for room.
    wanted: AtomicU64,
    /// Asks the sweeper for a sweep now (an upload is waiting for room).
    pub sweep_now: Notify,
}

impl Budget {
    pub fn new(budget_bytes: Option<u64>) -> Self {
        Self {
            budget_bytes,
            stored: AtomicU64::new(0),
            uploading: AtomicU64::new(0),
            written_since_listing: AtomicU64::new(0),
            wanted: AtomicU64::new(0),
            sweep_now: Notify::new(),
        }
    }

    pub fn stored(&self) -> u64 {
        self.stored.load(Ordering::Relaxed)
    }

    /// A sweep is about to list the store.
    pub fn listing(&self) {
        self.written_since_listing.store(0, Ordering::Relaxed);
    }

    /// What the sweep's listing left in the store, and what was written since it began
    /// (counted twice if the listing saw it too: an estimate on the safe side, which
    /// the next sweep corrects).
    pub fn swept(&self, kept: u64) {
        let since = self.written_since_listing.load(Ordering::Relaxed);
        self.stored.store(kept + since, Ordering::Relaxed);
    }

    pub fn wanted(&self) -> u64 {
        self.wanted.load(Ordering::Relaxed)
    }

    /// Waits until an upload of `bytes` fits, asking the sweeper for room meanwhile
    /// (counted in `wanted` until it fits or the wait is abandoned); `waiting` is
    /// raised while it waits.
    pub async fn room_for(&self, bytes: u64, waiting: &IntGauge) -> Reservation<'_> {
        if let Some(reservation) = self.reserve(bytes) {
            return reservation;
        }
        tracing::info!(
            stored = self.stored(),
            bytes,
            "clone store over budget: waiting for the processor to finish packs"
        );
        let _waiting = Waiting::start(self, bytes, waiting);
        loop {
            self.sweep_now.notify_one();
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Some(reservation) = self.reserve(bytes) {
                return reservation;
            }
        }
    }

    /// Lets an upload of `bytes` through if it fits, counting it at once (so uploads
    /// checked together cannot all pass on the same room): always when the store
    /// holds and receives nothing, so a pack bigger than the whole budget goes in
    /// alone rather than never.
    pub fn reserve(&self, bytes: u64) -> Option<Reservation<'_>> {
        let fits = match self.budget_bytes {
            None => {
                self.uploading.fetch_add(bytes, Ordering::AcqRel);
                true
            }
            Some(budget) => self
                .uploading
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |uploading| {
                    let taken = self.stored.load(Ordering::Acquire) + uploading;
                    (taken == 0 || taken + bytes <= budget).then_some(uploading + bytes)
                })
                .is_ok(),
        };
        // Built only when it fits: dropping one gives its bytes back.
        fits.then(|| Reservation {
            budget: self,
            bytes,
            written: false,
        })
    }
}

/// Room reserved for one upload, given back when dropped: as stored bytes once
/// `written`, else (a failed upload, or one abandoned at shutdown) as room again.
pub struct Reservation<'a> {
    budget: &'a Budget,
    bytes: u64,
    written: bool,
}

impl Reservation<'_> {
    pub fn written(mut self) {
        self.written = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        let budget = self.budget;
        // Stored before it stops counting as uploading: a reservation checked between
        // the two sees the bytes twice (too little room for a moment), never nowhere
        // (the whole budget free while these bytes are in the store).
        if self.written {
            budget.stored.fetch_add(self.bytes, Ordering::AcqRel);
            budget
                .written_since_listing
                .fetch_add(self.bytes, Ordering::AcqRel);
        }
        budget.uploading.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

/// An upload waiting for room, counted while it lives.
struct Waiting<'a> {
    budget: &'a Budget,
    bytes: u64,
    gauge: &'a IntGauge,
}

impl<'a> Waiting<'a> {
    fn start(budget: &'a Budget, bytes: u64, gauge: &'a IntGauge) -> Self {
        budget.wanted.fetch_add(bytes, Ordering::Relaxed);
        gauge.inc();
        Self {
            budget,
            bytes,
            gauge,
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.budget.wanted.fetch_sub(self.bytes, Ordering::Relaxed);
        self.gauge.dec();
    }
}

/// Sweeps once: deletes what `plan` says in two passes (see [`reclaim`]) and old
/// markers, and returns (deleted, kept bytes). `readers` empty or no output topic:
/// nothing counts as unread.
pub async fn sweep(
    store: &CloneStore,
    clients: &KafkaClients,
    published: Option<&str>,
    readers: &[String],
    retention: &Retention,
    wanted: u64,
) -> anyhow::Result<(usize, u64)> {
    // Listed before the unread records are read: a pack written after the listing is
    // not considered at all, and one written before it whose record was published
    // after the read is inside the grace period.
    let packs = store.packs().await?;
    let unread = match published {
        Some(topic) => unread_packs(clients, topic, readers).await?,
        None => HashSet::new(),
    };
    let now = codelupe_runtime::records::now_ms();
    let (candidates, _) = plan(&packs, &unread, wanted, now, retention);
    let deleted = reclaim(store, &candidates, now, retention.grace).await?;
    let kept = packs
        .iter()
        .filter(|p| !deleted.contains(&p.uri))
        .map(|p| p.bytes)
        .sum();
    // A marker older than the retention period names a pack that is gone or about to
    // be: without it the repository is cloned again, which is what retention means.
    for (key, modified_ms) in store.list_json(MARKERS).await? {
        if now - modified_ms > retention.max_age.as_millis() as i64 {
            store.delete_json(&key).await?;
        }
    }
    Ok((deleted.len(), kept))
}

const DOOMED: &str = "doomed";

/// The note a sweep leaves on a pack it means to delete: `doomed/<sha256>.json`.
fn doom_key(pack_uri: &str) -> Option<String> {
    let name = pack_uri.rsplit('/').next()?.strip_suffix(".pack")?;
    Some(format!("{DOOMED}/{name}.json"))
}

/// Whether a sweep has marked the pack at `uri` for deletion, so publishing it again
/// without cloning could hand readers a pack about to go. A store that cannot say
/// counts as yes: cloning again is always safe.
pub async fn is_doomed(store: &CloneStore, uri: &str) -> bool {
    match doom_key(uri) {
        Some(key) => !matches!(store.read_json::<serde_json::Value>(&key).await, Ok(None)),
        None => true,
    }
}

/// Deletes candidates in two passes, so a pack a record was published for after the
/// sweep read the unread records is never deleted: a candidate is first marked; a
/// later sweep deletes it only if it is still a candidate and its mark is at least
/// `grace` old. The downloader's "already stored" shortcut never reuses a marked pack,
/// so a record it published either came before the mark (and is unread, or read, by
/// the time the mark is `grace` old) or cloned the pack afresh (a pack written again
/// since its mark is spared). A marked pack that is no candidate any more (unread
/// again, or written anew) loses its mark. Returns the packs deleted.
pub async fn reclaim(
    store: &CloneStore,
    candidates: &[String],
    now_ms: i64,
    grace: Duration,
) -> anyhow::Result<HashSet<String>> {
    let mut marks: BTreeMap<String, i64> = store.list_json(DOOMED).await?.into_iter().collect();
    let mut deleted = HashSet::new();
    for uri in candidates {
        let Some(mark) = doom_key(uri) else { continue };
        // Taken out: what is left of the marks afterwards names no candidate.
        match marks.remove(&mark) {
            None => {
                let note = serde_json::json!({ "pack_uri": uri });
                store.write_json(&mark, &note).await?;
            }
            Some(marked_ms) if now_ms - marked_ms < grace.as_millis() as i64 => {}
            Some(marked_ms) => {
                // Written again since it was marked (cloned afresh, same contents):
                // the listing this sweep planned from is stale for it.
                let rewritten = store
                    .pack_written_ms(uri)
                    .await
                    .is_none_or(|written| written > marked_ms);
                if !rewritten {
                    tracing::info!(%uri, "removing pack");
                    store.delete_pack(uri).await?;
                    deleted.insert(uri.clone());
                }
                store.delete_json(&mark).await?;
            }
        }
    }
    for mark in marks.keys() {
        store.delete_json(mark).await?;
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pack(name: &str, age_h: i64, bytes: u64, now: i64) -> StoredPack {
        StoredPack {
            uri: name.into(),
            bytes,
            modified_ms: now - age_h * 3_600_000,
        }
    }

    /// The race a one-pass sweep lost: it read the unread records, the shortcut then
    /// published a record for an old pack, and the sweep deleted that pack. Now a
    /// candidate is only marked; the shortcut never reuses a marked pack; a later
    /// sweep deletes what is still a candidate once its mark is `grace` old, and a pack
    /// that stopped being one (its record read again) keeps its place.
    #[tokio::test]
    async fn a_candidate_is_marked_first_and_deleted_only_by_a_later_sweep() {
        let dir = tempfile::tempdir().unwrap();
        let store = CloneStore::open(dir.path().to_str().unwrap()).unwrap();
        let put = |bytes: &'static [u8]| store.put_pack(bytes::Bytes::from_static(bytes));
        let (a, b) = (put(b"pack a").await.unwrap(), put(b"pack b").await.unwrap());
        let c = put(b"pack c").await.unwrap();
        let grace = Duration::from_secs(10);
        let now = codelupe_runtime::records::now_ms();
        let candidates = [a.uri.clone(), b.uri.clone(), c.uri.clone()];
        let first = reclaim(&store, &candidates, now, grace).await.unwrap();
        assert!(first.is_empty(), "deleted on the pass that chose them");
        assert!(store.has_pack(&a.uri).await && store.has_pack(&b.uri).await);
        assert!(
            is_doomed(&store, &b.uri).await,
            "the shortcut could reuse b"
        );
        // Still within the grace: nothing goes.
        let early = reclaim(&store, &candidates, now + 5_000, grace)
            .await
            .unwrap();
        assert!(early.is_empty());
        // b is read again (a record names it), c is cloned afresh into the same pack
        // (planned from a listing made before): only a goes, and the marks are lifted.
        tokio::time::sleep(Duration::from_millis(20)).await;
        put(b"pack c").await.unwrap();
        let picked = [a.uri.clone(), c.uri.clone()];
        let later = reclaim(&store, &picked, now + 11_000, grace).await.unwrap();
        assert_eq!(later, HashSet::from([a.uri.clone()]));
        assert!(!store.has_pack(&a.uri).await);
        for kept in [&b.uri, &c.uri] {
            assert!(store.has_pack(kept).await, "{kept}");
            assert!(!is_doomed(&store, kept).await, "{kept}");
        }
    }

    #[test]
    fn marker_keys_are_safe_and_do_not_collide() {
        let a = marker_key("github.com", "a-b/c").unwrap();
        let b = marker_key("github.com", "a/b-c").unwrap();
        assert_ne!(a, b);
        assert_eq!(
            marker_key("github.com", "Owner/Repo.git"),
            marker_key("github.com", "owner/repo")
        );
        for bad in [
            "../x",
            "a/..",
            "a/.git",
            "/etc/passwd",
            "a",
            "a/b/c",
            "a/",
            "a/b\\c",
        ] {
            assert_eq!(marker_key("github.com", bad), None, "{bad}");
        }
        assert_eq!(marker_key("..", "a/b"), None);
    }

    #[test]
    fn a_sweep_takes_expired_then_oldest_over_budget_but_never_unread_or_young() {
        let now = 1_000 * 3_600_000;
        let packs = [
            pack("old", 100, 10, now),
            pack("old-unread", 90, 10, now),
            pack("mid", 2, 600, now),
            pack("new", 1, 600, now),
            pack("young", 0, 600, now),
        ];
        let retention = Retention {
            max_age: Duration::from_secs(72 * 3600),
            budget_bytes: Some(1000),
            grace: Duration::from_secs(600),
        };
        let unread: HashSet<String> = ["old-unread".to_string()].into();
        let (deleted, kept) = plan(&packs, &unread, 0, now, &retention);
        // 72 h takes old; over budget, mid then new go; unread and young stay, even
        // though the store is still over its budget.
        assert_eq!(deleted, ["old", "mid", "new"]);
        assert_eq!(kept, 610);

        // Within the budget, a read pack stays, unless an upload waits for its room.
        let read = [pack("read", 2, 600, now)];
        assert!(plan(&read, &HashSet::new(), 0, now, &retention)
            .0
            .is_empty());
        let (deleted, kept) = plan(&read, &HashSet::new(), 500, now, &retention);
        assert_eq!((deleted.len(), kept), (1, 0));

        let everything_unread: HashSet<String> = packs.iter().map(|p| p.uri.clone()).collect();
        let (deleted, kept) = plan(&packs, &everything_unread, 10_000, now, &retention);
        assert!(deleted.is_empty());
        assert_eq!(kept, 1820);
    }

    #[test]
    fn the_budget_lets_a_pack_in_while_it_fits_or_the_store_is_empty() {
        let budget = Budget::new(Some(100));
        let alone = budget.reserve(500).expect("an empty store takes any pack");
        assert!(budget.reserve(1).is_none(), "nor anything beside it");
        drop(alone); // the upload failed: its room is free again
        let first = budget.reserve(60).unwrap();
        assert!(
            budget.reserve(41).is_none(),
            "reserved, not written yet: still taken"
        );
        first.written();
        budget.reserve(40).unwrap().written();
        assert!(budget.reserve(1).is_none());
        budget.listing();
        budget.swept(0);
        let late = budget.reserve(10).unwrap();
        // A sweep that began listing before that upload finished still counts it.
        budget.listing();
        late.written();
        budget.swept(0);
        assert!(budget.reserve(91).is_none());
        budget.listing();
        budget.swept(0);
        assert!(budget.reserve(91).is_some());
        assert!(Budget::new(None).reserve(u64::MAX / 2).is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn an_upload_waits_for_room_asks_for_a_sweep_and_gives_up_its_claim_when_abandoned() {
        let budget = Budget::new(Some(100));
        let waiting = IntGauge::new("waiting", "waiting").unwrap();
        budget.reserve(80).unwrap().written();
        let wait = budget.room_for(50, &waiting);
        tokio::pin!(wait);
        assert!(
            tokio::time::timeout(Duration::from_secs(2), &mut wait)
                .await
                .is_err(),
            "over budget, it went through"
        );
        assert_eq!((budget.wanted(), waiting.get()), (50, 1));
        budget.listing();
        budget.swept(0); // the processor finished the 80 bytes; a sweep reclaimed them
        wait.await.written();
        assert_eq!((budget.wanted(), waiting.get()), (0, 0));

        let abandoned = budget.room_for(80, &waiting);
        assert!(tokio::time::timeout(Duration::from_secs(2), abandoned)
            .await
            .is_err());
        assert_eq!(
            (budget.wanted(), waiting.get()),
            (0, 0),
            "a dropped wait still counts"
        );
    }
}
