//! The dataset in its object store: `data/<language>/<file>.parquet`,
//! `repositories/<file>.parquet` and `near-duplicates/<file>.parquet`, each file named
//! after the input partition and offset range its rows came from
//! (`p003-000000001000-000000001999.parquet`) and put whole. A file whose first offset
//! the group has not committed belongs to a flush that crashed before its commit: it is
//! deleted when the partition is next assigned, and the range exported again.

use std::sync::Arc;

use anyhow::Context as _;
use futures::TryStreamExt as _;
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};

use serde::de::DeserializeOwned;
use serde::Serialize;

/// Each file's figures, at the same place under this folder (`.json`).
pub const STATS: &str = "stats";
/// The dataset card.
pub const CARD: &str = "README.md";

/// A file's place: its folder under the dataset's root (`data/python`,
/// `repositories`), and the input partition and offsets its rows came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataFile {
    pub folder: String,
    pub partition: i32,
    pub first: i64,
    pub last: i64,
}

impl DataFile {
    pub fn key(&self) -> Path {
        Path::from(format!(
            "{}/p{:03}-{:012}-{:012}.parquet",
            self.folder, self.partition, self.first, self.last
        ))
    }

    /// Where its figures for the card are kept.
    pub fn stats_key(&self) -> Path {
        Path::from(format!(
            "{STATS}/{}/p{:03}-{:012}-{:012}.json",
            self.folder, self.partition, self.first, self.last
        ))
    }

    /// The file a key names; None for anything else.
    pub fn parse(key: &Path) -> Option<Self> {
        let (folder, name) = key.as_ref().rsplit_once('/')?;
        let stem = name.strip_prefix('p')?.strip_suffix(".parquet")?;
        let mut numbers = stem.split('-');
        let file = DataFile {
            folder: folder.to_string(),
            partition: numbers.next()?.parse().ok()?,
            first: numbers.next()?.parse().ok()?,
            last: numbers.next()?.parse().ok()?,
        };
        numbers.next().is_none().then_some(file)
    }
}

pub struct DatasetStore {
    objects: Arc<dyn ObjectStore>,
    url: String,
}

impl DatasetStore {
    pub fn open(location: &str) -> anyhow::Result<Self> {
        let (objects, url) = codelupe_objects::open(location, "dataset")?;
        Ok(Self { objects, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Puts a file whole: a reader sees all of it or none.
    pub async fn put(&self, key: &Path, bytes: Vec<u8>) -> anyhow::Result<()> {
        self.objects
            .put(key, PutPayload::from(bytes))
            .await
            .with_context(|| format!("cannot write {}/{key}", self.url))?;
        Ok(())
    }

    /// Every file of one table: under `root` (`data`, `repositories`).
    pub async fn files(&self, root: &str) -> anyhow::Result<Vec<DataFile>> {
        let listed: Vec<_> = self
            .objects
            .list(Some(&Path::from(root)))
            .try_collect()
            .await
            .with_context(|| format!("cannot list {}/{root}", self.url))?;
        Ok(listed
            .iter()
            .filter_map(|meta| DataFile::parse(&meta.location))
            .collect())
    }

    /// Deletes the files under `root` of `partition` from offset `from` on (a flush
    /// the group never committed), and their figures; returns how many files. What a
    /// put of theirs killed midway left in a local folder goes too.
    pub async fn delete_uncommitted(
        &self,
        root: &str,
        partition: i32,
        from: i64,
    ) -> anyhow::Result<usize> {
        let uncommitted = |file: &DataFile| file.partition == partition && file.first >= from;
        let mut deleted = 0;
        for file in self.files(root).await? {
            if uncommitted(&file) {
                // Figures first: a card never counts a file that is gone.
                self.delete(&file.stats_key()).await?;
                self.delete(&file.key()).await?;
                deleted += 1;
            }
        }
        let abandoned = codelupe_objects::remove_abandoned_puts(&self.url, root, |key| {
            DataFile::parse(key).is_some_and(|file| uncommitted(&file))
        })?;
        if abandoned > 0 {
            tracing::info!(
                partition,
                from,
                abandoned,
                "removed the files of puts killed midway"
            );
        }
        Ok(deleted)
    }

    async fn delete(&self, key: &Path) -> anyhow::Result<()> {
        codelupe_objects::delete_if_present(self.objects.as_ref(), &self.url, key).await
    }

    /// A data file's bytes; None once it is gone.
    pub async fn read(&self, file: &DataFile) -> anyhow::Result<Option<bytes::Bytes>> {
        self.get(&file.key()).await
    }

    async fn get(&self, key: &Path) -> anyhow::Result<Option<bytes::Bytes>> {
        codelupe_objects::get_if_present(self.objects.as_ref(), &self.url, key).await
    }

    pub async fn put_card(&self, text: String) -> anyhow::Result<()> {
        self.put(&Path::from(CARD), text.into_bytes()).await
    }

    pub async fn put_stats<S: Serialize>(&self, file: &DataFile, stats: &S) -> anyhow::Result<()> {
        self.put(&file.stats_key(), serde_json::to_vec(stats)?)
            .await
    }

    /// The figures of every file under `root` there is, with its folder (figures of
    /// a file not there, or not readable, are left out).
    pub async fn stats<S: DeserializeOwned>(&self, root: &str) -> anyhow::Result<Vec<(String, S)>> {
        let mut found = Vec::new();
        for file in self.files(root).await? {
            let Some(bytes) = self.get(&file.stats_key()).await? else {
                continue;
            };
            if let Ok(stats) = serde_json::from_slice(&bytes) {
                found.push((file.folder, stats));
            }
        }
        Ok(found)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_says_where_its_rows_came_from() {
        let file = DataFile {
            folder: "data/python".into(),
            partition: 3,
            first: 1_000,
            last: 1_999,
        };
        assert_eq!(
            file.key().as_ref(),
            "data/python/p003-000000001000-000000001999.parquet"
        );
        assert_eq!(DataFile::parse(&file.key()), Some(file));
        let repositories = Path::from("repositories/p003-1-2.parquet");
        assert_eq!(
            DataFile::parse(&repositories).map(|f| f.folder),
            Some("repositories".into())
        );
        for other in [
            "data/python/README.md",
            "p003-000000001000-000000001999.parquet",
            "data/python/p003-1-2-3.parquet",
        ] {
            assert_eq!(DataFile::parse(&Path::from(other)), None, "{other}");
        }
    }

    #[tokio::test]
    async fn an_uncommitted_flush_is_deleted_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path().to_str().unwrap()).unwrap();
        let file = |folder: &str, partition, first, last| DataFile {
            folder: format!("data/{folder}"),
            partition,
            first,
            last,
        };
        let files = [
            file("python", 0, 0, 99),
            file("rust", 0, 0, 99),
            file("python", 0, 100, 180),
            file("rust", 0, 100, 180),
            file("python", 1, 100, 180),
        ];
        // Another table's file of the same partition and offsets: not this table's.
        let other = DataFile {
            folder: "repositories".into(),
            ..files[2].clone()
        };
        for f in files.iter().chain([&other]) {
            store.put(&f.key(), b"PAR1".to_vec()).await.unwrap();
        }
        assert_eq!(store.delete_uncommitted("data", 0, 100).await.unwrap(), 2);
        let mut left = store.files("data").await.unwrap();
        left.sort_by_key(|f| (f.partition, f.first, f.folder.clone()));
        assert_eq!(left, [files[0].clone(), files[1].clone(), files[4].clone()]);
        assert_eq!(store.files("repositories").await.unwrap(), [other]);
    }

    /// A local put writes `<name>#<n>` and renames it into place; a replica killed in
    /// between leaves that file, which the store's listing hides and `datasets`, which
    /// reads every file of a folder, fails on.
    #[tokio::test]
    async fn a_put_killed_midway_leaves_nothing_once_its_partition_is_taken_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = DatasetStore::open(dir.path().to_str().unwrap()).unwrap();
        let folder = dir.path().join("data/toml");
        std::fs::create_dir_all(&folder).unwrap();
        let staged = |name: &str| folder.join(name);
        let killed = staged("p003-000000000000-000000000027.parquet#1");
        // Another partition's put in progress: its owner is alive.
        let in_progress = staged("p004-000000000000-000000000009.parquet#1");
        for half_written in [&killed, &in_progress] {
            std::fs::write(half_written, b"PAR1 and no footer").unwrap();
        }
        store.delete_uncommitted("data", 3, 0).await.unwrap();
        assert!(!killed.exists(), "the killed put's file stayed");
        assert!(in_progress.exists(), "another partition's put was removed");
    }
}
