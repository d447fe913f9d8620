//! An object store addressed by URL, shared by the clone store and the dataset export:
//! `file:///path` or a plain path (the embedded default and single-host Compose),
//! `s3://bucket/prefix` (clusters), `gs://…` and `az://…`. Credentials come from the
//! environment by each cloud's conventions (`AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_*`, `AZURE_*`), never from records or logs. A put is whole
//! or absent (an S3 PUT; a local file is written aside and renamed).

use std::sync::Arc;

use anyhow::Context as _;
use object_store::ObjectStore;

/// The store at `location` (a local folder is created if missing), and its URL without a
/// trailing slash. `what` names it in errors.
pub fn open(location: &str, what: &str) -> anyhow::Result<(Arc<dyn ObjectStore>, String)> {
    let location = location.trim_end_matches('/');
    let (scheme, rest) = location.split_once("://").unwrap_or(("file", location));
    let objects: Arc<dyn ObjectStore> = match scheme {
        "file" => {
            std::fs::create_dir_all(rest)
                .with_context(|| format!("cannot create {what} {rest}"))?;
            let root = std::fs::canonicalize(rest)?;
            let local = object_store::local::LocalFileSystem::new_with_prefix(&root)?;
            return Ok((Arc::new(local), format!("file://{}", root.display())));
        }
        "s3" | "s3a" => Arc::new(
            object_store::aws::AmazonS3Builder::from_env()
                .with_url(location)
                .build()
                .with_context(|| format!("{what} {location}"))?,
        ),
        "gs" => Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_url(location)
                .build()
                .with_context(|| format!("{what} {location}"))?,
        ),
        "az" | "abfs" | "abfss" => Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_url(location)
                .build()
                .with_context(|| format!("{what} {location}"))?,
        ),
        other => anyhow::bail!("{what} {location}: unknown scheme {other:?} (file, s3, gs or az)"),
    };
    // The builders take the bucket from the URL; the path under it is a prefix.
    let prefix = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let objects: Arc<dyn ObjectStore> = if prefix.is_empty() {
        objects
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(objects, prefix))
    };
    Ok((objects, location.to_string()))
}

/// The object at `key`, or None when there is none; `url` names the store in errors.
pub async fn get_if_present(
    objects: &dyn ObjectStore,
    url: &str,
    key: &object_store::path::Path,
) -> anyhow::Result<Option<bytes::Bytes>> {
    match objects.get(key).await {
        Ok(found) => Ok(Some(found.bytes().await?)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e).with_context(|| format!("cannot read {url}/{key}")),
    }
}

/// Deletes the object at `key`; one already gone is fine.
pub async fn delete_if_present(
    objects: &dyn ObjectStore,
    url: &str,
    key: &object_store::path::Path,
) -> anyhow::Result<()> {
    match objects.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e).with_context(|| format!("cannot delete {url}/{key}")),
    }
}

/// Removes what local puts killed midway left under `folder` of the store at `url`,
/// for the objects `abandoned` names; returns how many files. A local put writes
/// `<name>#<n>` beside its object and renames it into place, so a process killed in
/// between leaves that file: the store's own listing hides it, but a reader listing the
/// folder itself (Hugging Face `datasets` reads every file of a data folder) does not.
/// Only the writer that owns an object may call this, or it removes a live put's file.
/// Other stores put whole or not at all and leave nothing: 0.
pub fn remove_abandoned_puts(
    url: &str,
    folder: &str,
    abandoned: impl Fn(&object_store::path::Path) -> bool,
) -> anyhow::Result<usize> {
    let Some(root) = url.strip_prefix("file://") else {
        return Ok(0);
    };
    let root = std::path::Path::new(root);
    let mut removed = 0;
    let mut folders = vec![root.join(folder)];
    while let Some(dir) = folders.pop() {
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e).with_context(|| format!("cannot list {}", dir.display())),
        };
        for entry in entries {
            let path = entry?.path();
            if path.is_dir() {
                folders.push(path);
                continue;
            }
            let Some(object) = staged_object(root, &path) else {
                continue;
            };
            if abandoned(&object) {
                std::fs::remove_file(&path)
                    .with_context(|| format!("cannot remove {}", path.display()))?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}

/// The object a local put's staging file `<name>#<digits>` is for; None for any other
/// file.
fn staged_object(
    root: &std::path::Path,
    file: &std::path::Path,
) -> Option<object_store::path::Path> {
    let relative = file.strip_prefix(root).ok()?.to_str()?;
    let (object, suffix) = relative.rsplit_once('#')?;
    let digits = !suffix.is_empty() && suffix.bytes().all(|b| b.is_ascii_digit());
    digits.then(|| object_store::path::Path::from(object))
}
