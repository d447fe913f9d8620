//! The clone store, a claim check: the downloader writes what the processor needs of
//! one repository at one commit (a packfile of that commit, its tree and its blobs) as
//! one object in an object store addressed by URL, and `repo-clones` carries the
//! reference: the object's URL, size and SHA-256. The processor reads by reference,
//! checks both, and indexes the pack into a private temporary repository; no folder
//! is shared between replicas.
//!
//! Locations and credentials as [`codelupe_objects`] takes them.
//!
//! An object is named by the SHA-256 of its bytes, and written whole or not at all
//! (an S3 PUT; a local file is written aside and renamed): a half-written upload is
//! never visible under a name a record could hold, and two downloaders writing the
//! same pack write the same bytes to the same name.

pub mod tree;
pub mod work_dir;

use std::path::Path as FsPath;
use std::sync::Arc;

use anyhow::Context as _;
use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::path::Path;
use object_store::{ObjectStore, PutPayload};
use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};

use codelupe_runtime::records::RepoClone;

/// The clone store's place when the config's `clone_store.url` names none.
pub const DEFAULT_URL: &str = "/var/lib/codelupe/clones";

/// The clone store's URL the config gives, or [`DEFAULT_URL`].
pub fn url(config: &codelupe_runtime::config::CloneStoreConfig) -> String {
    config
        .url
        .clone()
        .unwrap_or_else(|| DEFAULT_URL.to_string())
}

/// The refusal of a stage's old `store` option, which `clone_store.url` replaced.
pub fn moved_store(stage: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "stages.{stage}.options.store is gone: the downloader and the processor share one \
         clone store, `clone_store.url` at the top of the config; move the URL there"
    )
}

/// Where packs live under the store's URL.
const PACKS: &str = "packs";

pub struct CloneStore {
    objects: Arc<dyn ObjectStore>,
    /// The store's location as a URL, without a trailing slash.
    url: String,
}

/// What a `repo-clones` record holds of its object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackRef {
    pub uri: String,
    pub bytes: i64,
    pub sha256: String,
}

impl From<&RepoClone> for PackRef {
    /// The clone store reference a `repo-clones` record carries.
    fn from(clone: &RepoClone) -> Self {
        PackRef {
            uri: clone.clone_uri.clone(),
            bytes: clone.pack_bytes,
            sha256: clone.pack_sha256.clone(),
        }
    }
}

/// A pack in the store, as a listing sees it.
#[derive(Debug, Clone)]
pub struct StoredPack {
    pub uri: String,
    pub bytes: u64,
    pub modified_ms: i64,
}

/// Why a referenced pack could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The reference points outside this store, or is no pack name.
    #[error("refused: {0}")]
    Refused(String),
    #[error("missing: {0}")]
    Missing(String),
    /// Size or checksum differ from the reference: never indexed.
    #[error("corrupt: {0}")]
    Corrupt(String),
    /// The store did not answer as it should (network, throttling): worth retrying.
    #[error("store unavailable: {0}")]
    Unavailable(String),
}

impl CloneStore {
    /// Opens the store at `location`, a URL or a local path (created if missing), and
    /// caps the objects libgit2 builds from packs in this process
    /// ([`MAX_PACK_OBJECT_BYTES`]): both stages that read packs open the store first.
    pub fn open(location: &str) -> anyhow::Result<Self> {
        cap_pack_objects()?;
        let (objects, url) = codelupe_objects::open(location, "clone store")?;
        Ok(Self { objects, url })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    fn uri_of(&self, key: &Path) -> String {
        format!("{}/{key}", self.url)
    }

    /// The key of a pack URI of this store; None for anything else.
    fn pack_key(&self, uri: &str) -> Option<Path> {
        let name = uri
            .strip_prefix(&self.url)?
            .strip_prefix('/')?
            .strip_prefix(PACKS)?
            .strip_prefix('/')?;
        let hash = name.strip_suffix(".pack")?;
        is_sha256(hash).then(|| Path::from(format!("{PACKS}/{name}")))
    }

    /// Writes `pack` under its SHA-256 and returns the reference a record carries.
    pub async fn put_pack(&self, pack: Bytes) -> anyhow::Result<PackRef> {
        let sha256 = hex_sha256(&pack);
        let key = Path::from(format!("{PACKS}/{sha256}.pack"));
        let bytes = pack.len() as i64;
        self.objects
            .put(&key, PutPayload::from_bytes(pack))
            .await
            .with_context(|| format!("cannot write {}", self.uri_of(&key)))?;
        Ok(PackRef {
            uri: self.uri_of(&key),
            bytes,
            sha256,
        })
    }

    /// The pack `reference` names, checked against its size and checksum.
    pub async fn read_pack(&self, reference: &PackRef) -> Result<Bytes, ReadError> {
        let mut chunks = self.pack_chunks(reference).await?;
        let mut checking = Checking::new(reference);
        let mut pack = bytes::BytesMut::new();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            checking.update(&chunk)?;
            pack.extend_from_slice(&chunk);
        }
        checking.finish()?;
        Ok(pack.freeze())
    }

    /// Streams the pack `reference` names into a new bare repository at `dir`:
    /// libgit2's indexer takes it as it comes, so the pack (up to the downloader's
    /// `max_clone_bytes`, 1 GiB) is never held whole in memory. Its size and SHA-256
    /// are checked on the way; no repository is returned from a pack that fails either.
    pub async fn unpack_pack(
        &self,
        reference: &PackRef,
        dir: &FsPath,
    ) -> Result<git2::Repository, ReadError> {
        let mut chunks = self.pack_chunks(reference).await?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(UNPACK_QUEUE);
        let dir = dir.to_path_buf();
        let indexing = tokio::task::spawn_blocking(move || {
            index_pack(&dir, std::iter::from_fn(|| rx.blocking_recv()))
        });
        let mut checking = Checking::new(reference);
        let streamed = async {
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                checking.update(&chunk)?;
                if tx.send(chunk).await.is_err() {
                    // The indexer stopped: its error says why.
                    break;
                }
            }
            Ok::<(), ReadError>(())
        }
        .await;
        drop(tx);
        let indexed = indexing.await.expect("the pack indexer panicked");
        streamed?;
        let repo = indexed
            .map_err(|e| ReadError::Corrupt(format!("{}: {}", reference.uri, e.message())))?;
        checking.finish()?;
        Ok(repo)
    }

    /// The bytes of the pack `reference` names, as the store sends them.
    async fn pack_chunks(
        &self,
        reference: &PackRef,
    ) -> Result<futures::stream::BoxStream<'static, Result<Bytes, ReadError>>, ReadError> {
        let key = self.pack_key(&reference.uri).ok_or_else(|| {
            ReadError::Refused(format!(
                "{} is no pack of the clone store {}",
                reference.uri, self.url
            ))
        })?;
        let uri = reference.uri.clone();
        let failed = move |e: object_store::Error| match e {
            object_store::Error::NotFound { .. } => ReadError::Missing(uri.clone()),
            e => ReadError::Unavailable(format!("{uri}: {e}")),
        };
        let found = self.objects.get(&key).await.map_err(failed.clone())?;
        Ok(found.into_stream().map_err(failed).boxed())
    }

    /// The bare repository a record of the shared-folder release names (`repo-clones`
    /// versions 1 and 2 carry no pack: `clone_uri` is `file://` a bare repository in
    /// the store's folder). Only a local store has such; anything outside its folder,
    /// or among its packs, is refused.
    pub fn legacy_repository(&self, uri: &str) -> Result<std::path::PathBuf, ReadError> {
        let refused = || {
            ReadError::Refused(format!(
                "{uri} is no repository of the clone store {}",
                self.url
            ))
        };
        let root = self.url.strip_prefix("file://").ok_or_else(refused)?;
        let path = uri.strip_prefix("file://").ok_or_else(refused)?;
        let resolved = FsPath::new(path)
            .canonicalize()
            .map_err(|e| ReadError::Missing(format!("{uri}: {e}")))?;
        let root = FsPath::new(root)
            .canonicalize()
            .map_err(|e| ReadError::Unavailable(format!("{}: {e}", self.url)))?;
        let inside = resolved.starts_with(&root) && !resolved.starts_with(root.join(PACKS));
        if !inside || resolved == root {
            return Err(refused());
        }
        Ok(resolved)
    }

    /// Whether the pack at `uri` is in the store (and the store answers).
    pub async fn has_pack(&self, uri: &str) -> bool {
        match self.pack_key(uri) {
            Some(key) => self.objects.head(&key).await.is_ok(),
            None => false,
        }
    }

    /// When the pack at `uri` was last written, if it is in the store.
    pub async fn pack_written_ms(&self, uri: &str) -> Option<i64> {
        let meta = self.objects.head(&self.pack_key(uri)?).await.ok()?;
        Some(meta.last_modified.timestamp_millis())
    }

    /// Every pack in the store.
    pub async fn packs(&self) -> anyhow::Result<Vec<StoredPack>> {
        let listed: Vec<_> = self
            .objects
            .list(Some(&Path::from(PACKS)))
            .try_collect()
            .await
            .with_context(|| format!("cannot list {}/{PACKS}", self.url))?;
        Ok(listed
            .into_iter()
            .filter(|meta| self.pack_key(&self.uri_of(&meta.location)).is_some())
            .map(|meta| StoredPack {
                uri: self.uri_of(&meta.location),
                bytes: meta.size,
                modified_ms: meta.last_modified.timestamp_millis(),
            })
            .collect())
    }

    /// Deletes the pack at `uri`; one already gone (another replica's sweep) is fine.
    pub async fn delete_pack(&self, uri: &str) -> anyhow::Result<()> {
        let key = self
            .pack_key(uri)
            .with_context(|| format!("{uri} is no pack of {}", self.url))?;
        self.delete(&key).await
    }

    async fn delete(&self, key: &Path) -> anyhow::Result<()> {
        codelupe_objects::delete_if_present(self.objects.as_ref(), &self.url, key).await
    }

    /// A small JSON document at `key` (not under `packs/`); None if there is none.
    pub async fn read_json<T: DeserializeOwned>(&self, key: &str) -> anyhow::Result<Option<T>> {
        let found =
            codelupe_objects::get_if_present(self.objects.as_ref(), &self.url, &Path::from(key))
                .await?;
        Ok(found.and_then(|bytes| serde_json::from_slice(&bytes).ok()))
    }

    pub async fn write_json<T: Serialize>(&self, key: &str, value: &T) -> anyhow::Result<()> {
        let key = Path::from(key);
        let body = serde_json::to_vec_pretty(value)?;
        self.objects
            .put(&key, PutPayload::from(body))
            .await
            .with_context(|| format!("cannot write {}", self.uri_of(&key)))?;
        Ok(())
    }

    pub async fn delete_json(&self, key: &str) -> anyhow::Result<()> {
        self.delete(&Path::from(key)).await
    }

    /// The JSON documents under `prefix`, with when each was written.
    pub async fn list_json(&self, prefix: &str) -> anyhow::Result<Vec<(String, i64)>> {
        let listed: Vec<_> = self
            .objects
            .list(Some(&Path::from(prefix)))
            .try_collect()
            .await?;
        Ok(listed
            .into_iter()
            .map(|m| (m.location.to_string(), m.last_modified.timestamp_millis()))
            .collect())
    }
}

fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn hex_sha256(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The largest object libgit2 builds from a pack's deltas, in the downloader's fetch
/// and in the processor's unpacking. A delta of a few bytes may declare an object of
/// any size and fill it by copying its base again and again; libgit2 allocates what it
/// declares, up to 2 GiB by default. GitHub refuses files over 100 MiB, so no object of
/// a repository it serves comes near this.
pub const MAX_PACK_OBJECT_BYTES: usize = 256 << 20;

/// Sets [`MAX_PACK_OBJECT_BYTES`] as libgit2's process-wide cap, once, before the
/// process's first fetch or unpack (the option is a plain global that libgit2 reads
/// without a lock). A delta past it fails its fetch or unpack: "overly large object".
pub fn cap_pack_objects() -> Result<(), git2::Error> {
    static CAPPED: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let capped = CAPPED.get_or_init(|| {
        libgit2_sys::init();
        // SAFETY: a documented libgit2 option taking one size_t, set once per process
        // (OnceLock) before any pack is indexed.
        let code = unsafe {
            libgit2_sys::git_libgit2_opts(
                libgit2_sys::GIT_OPT_SET_PACK_MAX_OBJECT_SIZE as libc::c_int,
                MAX_PACK_OBJECT_BYTES as libc::size_t,
            )
        };
        if code < 0 {
            return Err(format!("libgit2 refused its pack object cap (code {code})"));
        }
        Ok(())
    });
    capped.clone().map_err(|why| git2::Error::from_str(&why))
}

/// What the processor needs of `commit` as one packfile. A shallow clone's objects
/// are the single pack its fetch received, holding the tip's tree and blobs and no
/// history: that file is the pack, as it is (packing again would compress every object
/// again for nothing). Anything else is packed by `pack_commit`.
pub fn pack_of(repo: &git2::Repository, commit: git2::Oid) -> Result<Vec<u8>, git2::Error> {
    if repo.is_shallow() {
        if let Some(pack) = only_pack(&repo.path().join("objects")) {
            return std::fs::read(&pack)
                .map_err(|e| git2::Error::from_str(&format!("{}: {e}", pack.display())));
        }
    }
    pack_commit(repo, commit)
}

/// The one `.pack` file of an object directory holding nothing else (no loose object,
/// no second pack).
fn only_pack(objects: &FsPath) -> Option<std::path::PathBuf> {
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(objects).ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_str()?;
        let is_loose_dir = name.len() == 2 && name.bytes().all(|b| b.is_ascii_hexdigit());
        if is_loose_dir && std::fs::read_dir(entry.path()).ok()?.next().is_some() {
            return None;
        }
        if name == "pack" {
            for file in std::fs::read_dir(entry.path()).ok()?.flatten() {
                let path = file.path();
                if path.extension().is_some_and(|e| e == "pack") {
                    packs.push(path);
                }
            }
        }
    }
    (packs.len() == 1).then(|| packs.remove(0))
}

/// A packfile of `commit` with its tree and every blob and subtree under it: all the
/// processor reads of a repository, and nothing of its history.
pub fn pack_commit(repo: &git2::Repository, commit: git2::Oid) -> Result<Vec<u8>, git2::Error> {
    let commit = repo.find_commit(commit)?;
    let mut builder = repo.packbuilder()?;
    // Every core (0: as many threads as the machine has).
    builder.set_threads(0);
    builder.insert_commit(commit.id())?;
    let mut pack = git2::Buf::new();
    builder.write_buf(&mut pack)?;
    Ok(pack.to_vec())
}

/// Indexes `pack` into a new bare repository at `dir` (which must not exist or be
/// empty) and opens it.
pub fn unpack(pack: &[u8], dir: &FsPath) -> Result<git2::Repository, git2::Error> {
    index_pack(dir, std::iter::once(pack))
}

/// Chunks of a pack on their way from the store to the indexer: the most held at once.
const UNPACK_QUEUE: usize = 16;

/// A new bare repository at `dir` holding the pack that `chunks` make up, indexed as
/// they come.
fn index_pack(
    dir: &FsPath,
    chunks: impl Iterator<Item = impl AsRef<[u8]>>,
) -> Result<git2::Repository, git2::Error> {
    let repo = git2::Repository::init_bare(dir)?;
    {
        let odb = repo.odb()?;
        let mut writer = odb.packwriter()?;
        for chunk in chunks {
            std::io::Write::write_all(&mut writer, chunk.as_ref())
                .map_err(|e| git2::Error::from_str(&format!("cannot index the pack: {e}")))?;
        }
        writer.commit()?;
    }
    Ok(repo)
}

/// A pack's bytes counted and hashed as they come, against what its record says.
struct Checking<'a> {
    reference: &'a PackRef,
    bytes: i64,
    sha256: Sha256,
}

impl<'a> Checking<'a> {
    fn new(reference: &'a PackRef) -> Self {
        Self {
            reference,
            bytes: 0,
            sha256: Sha256::new(),
        }
    }

    /// Takes the next chunk; a pack longer than its record says is refused at once.
    fn update(&mut self, chunk: &[u8]) -> Result<(), ReadError> {
        self.bytes += chunk.len() as i64;
        if self.bytes > self.reference.bytes {
            return Err(self.wrong_size());
        }
        self.sha256.update(chunk);
        Ok(())
    }

    fn finish(self) -> Result<(), ReadError> {
        if self.bytes != self.reference.bytes {
            return Err(self.wrong_size());
        }
        let sha256 = format!("{:x}", self.sha256.finalize());
        if sha256 != self.reference.sha256 {
            return Err(ReadError::Corrupt(format!(
                "{}: SHA-256 {sha256}, the record says {}",
                self.reference.uri, self.reference.sha256
            )));
        }
        Ok(())
    }

    fn wrong_size(&self) -> ReadError {
        ReadError::Corrupt(format!(
            "{}: {} bytes or more, the record says {}",
            self.reference.uri, self.bytes, self.reference.bytes
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repository(dir: &FsPath) -> (git2::Repository, git2::Oid) {
        let repo = git2::Repository::init_bare(dir).unwrap();
        let commit = {
            let blob = repo.blob(b"fn main() {}\n").unwrap();
            let mut inner = repo.treebuilder(None).unwrap();
            inner.insert("main.rs", blob, 0o100644).unwrap();
            let inner = inner.write().unwrap();
            let mut root = repo.treebuilder(None).unwrap();
            root.insert("src", inner, 0o040000).unwrap();
            let tree = repo.find_tree(root.write().unwrap()).unwrap();
            let who = git2::Signature::now("t", "t@example.com").unwrap();
            repo.commit(None, &who, &who, "one", &tree, &[]).unwrap()
        };
        (repo, commit)
    }

    #[tokio::test]
    async fn a_pack_goes_in_by_its_checksum_and_comes_out_checked() {
        let dir = tempfile::tempdir().unwrap();
        let (repo, commit) = repository(&dir.path().join("origin.git"));
        let pack = pack_commit(&repo, commit).unwrap();
        let store = CloneStore::open(dir.path().join("store").to_str().unwrap()).unwrap();
        assert!(store.url().starts_with("file:///"));

        let reference = store.put_pack(Bytes::from(pack.clone())).await.unwrap();
        assert_eq!(reference.bytes, pack.len() as i64);
        assert!(reference
            .uri
            .ends_with(&format!("/packs/{}.pack", reference.sha256)));
        assert!(store.has_pack(&reference.uri).await);
        let read = store.read_pack(&reference).await.unwrap();
        assert_eq!(read, pack);
        let copy = store
            .unpack_pack(&reference, &dir.path().join("copy.git"))
            .await
            .unwrap();
        let tree = copy.find_commit(commit).unwrap().tree().unwrap();
        let file = tree.get_path(FsPath::new("src/main.rs")).unwrap();
        assert_eq!(
            copy.find_blob(file.id()).unwrap().content(),
            b"fn main() {}\n"
        );

        let wrong_sum = PackRef {
            sha256: "0".repeat(64),
            ..reference.clone()
        };
        assert!(matches!(
            store.read_pack(&wrong_sum).await,
            Err(ReadError::Corrupt(_))
        ));
        let into = dir.path().join("wrong.git");
        let unpacked = store.unpack_pack(&wrong_sum, &into).await;
        assert!(matches!(unpacked, Err(ReadError::Corrupt(_))));
        let wrong_size = PackRef {
            bytes: reference.bytes - 1,
            ..reference.clone()
        };
        assert!(matches!(
            store.read_pack(&wrong_size).await,
            Err(ReadError::Corrupt(_))
        ));
        let into = dir.path().join("short.git");
        let unpacked = store.unpack_pack(&wrong_size, &into).await;
        assert!(matches!(unpacked, Err(ReadError::Corrupt(_))));
        for outside in [
            "file:///etc/passwd".to_string(),
            format!("{}/packs/../../x.pack", store.url()),
            format!("{}/markers/a.json", store.url()),
        ] {
            let refused = PackRef {
                uri: outside,
                ..reference.clone()
            };
            assert!(matches!(
                store.read_pack(&refused).await,
                Err(ReadError::Refused(_))
            ));
        }

        assert_eq!(store.packs().await.unwrap().len(), 1);
        store.delete_pack(&reference.uri).await.unwrap();
        store.delete_pack(&reference.uri).await.unwrap(); // gone already: fine
        assert!(matches!(
            store.read_pack(&reference).await,
            Err(ReadError::Missing(_))
        ));
        assert!(store.packs().await.unwrap().is_empty());
    }
}
