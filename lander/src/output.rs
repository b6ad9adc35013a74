//! Where landed files go: an `object_store` (a local directory by default, or a URL the
//! store understands), with the durability every put needs for exactly-once landing.
//!
//! * Local directories use `LocalFileSystem` with fsync on: a put writes a staging
//!   file (`<name>#<n>`), fsyncs it, renames it over the target and fsyncs the parent
//!   directories it created, so a returned put is durable and atomic. Staging files a
//!   crash leaves are invisible to listings and to `*.parquet` globs; recovery removes
//!   them ([`Output::remove_staging_files`]).
//! * S3 (and S3-compatible stores: MinIO, Ceph, R2) make each put atomic by themselves;
//!   they are configured the usual way, from `AWS_*` environment variables
//!   (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//!   `AWS_ALLOW_HTTP`).
//!
//! One lander per local output directory: it holds an exclusive lock on
//! `OUT/.lander.lock` while it runs.

use bytes::Bytes;
use futures_util::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use std::path::PathBuf;
use std::sync::Arc;

/// Name of the lock file in a local output directory.
pub const LOCK_FILE: &str = ".lander.lock";

/// Errors from the output store.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The store failed.
    #[error("{0}")]
    Store(#[from] object_store::Error),
    /// The URL is not usable.
    #[error("output {url:?}: {reason}")]
    Url {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// A local file operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// The lander's output.
pub struct Output {
    store: Arc<dyn ObjectStore>,
    prefix: StorePath,
    local_root: Option<PathBuf>,
    runtime: tokio::runtime::Runtime,
    _lock: Option<std::fs::File>,
    url: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").field("url", &self.url).finish_non_exhaustive()
    }
}

impl Output {
    /// Opens `url`: a plain path or `file://` URL (created if missing), or any URL
    /// `object_store` was built to understand.
    pub fn open(url: &str) -> Result<Self, OutputError> {
        let bad = |reason: String| OutputError::Url { url: url.to_string(), reason };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| bad(e.to_string()))?;
        let parsed = url::Url::parse(url).ok().filter(|u| u.scheme().len() > 1);
        let local = match &parsed {
            None => Some(PathBuf::from(url)),
            Some(u) if u.scheme() == "file" => {
                Some(u.to_file_path().map_err(|_| bad("not a local file path".into()))?)
            }
            Some(_) => None,
        };
        if let Some(root) = local {
            let io = |source| OutputError::Io { path: root.display().to_string(), source };
            std::fs::create_dir_all(&root).map_err(io)?;
            let root = std::fs::canonicalize(&root).map_err(io)?;
            let lock = std::fs::File::create(root.join(LOCK_FILE)).map_err(io)?;
            lock.try_lock().map_err(|_| bad("another lander is writing to this directory".into()))?;
            let store = LocalFileSystem::new_with_prefix(&root)?.with_fsync(true);
            return Ok(Self {
                store: Arc::new(store),
                prefix: StorePath::default(),
                local_root: Some(root),
                runtime,
                _lock: Some(lock),
                url: url.to_string(),
            });
        }
        let parsed = parsed.expect("non-local outputs are URLs");
        // reqwest's TLS takes the process's rustls provider: ring, as everywhere in
        // corelog (an error only says one is installed already).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let options: Vec<(String, String)> = std::env::vars().collect();
        let (store, prefix) =
            object_store::parse_url_opts(&parsed, options).map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            store: Arc::from(store),
            prefix,
            local_root: None,
            runtime,
            _lock: None,
            url: url.to_string(),
        })
    }

    fn path(&self, relative: &str) -> StorePath {
        let mut parts: Vec<String> = self.prefix.parts().map(|p| p.as_ref().to_string()).collect();
        parts.extend(relative.split('/').filter(|p| !p.is_empty()).map(str::to_string));
        StorePath::from_iter(parts)
    }

    fn relative(&self, path: &StorePath) -> String {
        let skip = self.prefix.parts().count();
        path.parts().skip(skip).map(|p| p.as_ref().to_string()).collect::<Vec<_>>().join("/")
    }

    /// Atomically and durably writes `relative` (a `/`-separated path under the output).
    pub fn put(&self, relative: &str, bytes: Bytes) -> Result<(), OutputError> {
        let path = self.path(relative);
        self.runtime.block_on(self.store.put(&path, PutPayload::from_bytes(bytes)))?;
        Ok(())
    }

    /// Reads `relative`, or `None` when it does not exist.
    pub fn get(&self, relative: &str) -> Result<Option<Bytes>, OutputError> {
        let path = self.path(relative);
        self.runtime.block_on(async {
            match self.store.get(&path).await {
                Ok(result) => Ok(Some(result.bytes().await?)),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(error) => Err(error.into()),
            }
        })
    }

    /// Every object under `relative_prefix`, as relative paths.
    pub fn list(&self, relative_prefix: &str) -> Result<Vec<String>, OutputError> {
        let prefix = self.path(relative_prefix);
        let metas: Vec<_> = self.runtime.block_on(self.store.list(Some(&prefix)).try_collect())?;
        Ok(metas.iter().map(|m| self.relative(&m.location)).collect())
    }

    /// Deletes `relative` (missing is fine). For local outputs the directory is fsynced
    /// so the deletion is durable before anything replaces the file's offsets.
    pub fn delete(&self, relative: &str) -> Result<(), OutputError> {
        let path = self.path(relative);
        match self.runtime.block_on(self.store.delete(&path)) {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(error) => return Err(error.into()),
        }
        if let Some(root) = &self.local_root {
            let file = root.join(relative);
            if let Some(dir) = file.parent() {
                let synced = std::fs::File::open(dir).and_then(|d| d.sync_all());
                synced.map_err(|source| OutputError::Io { path: dir.display().to_string(), source })?;
            }
        }
        Ok(())
    }

    /// Removes staging files (`<name>#<digits>`) a killed put left under `relative`
    /// (local outputs only; object stores have none). Returns how many.
    pub fn remove_staging_files(&self, relative: &str) -> Result<usize, OutputError> {
        let Some(root) = &self.local_root else { return Ok(0) };
        let mut removed = 0;
        let mut dirs = vec![root.join(relative)];
        while let Some(dir) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    dirs.push(path);
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let staging = name
                    .rsplit_once('#')
                    .is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                if staging {
                    std::fs::remove_file(&path)
                        .map_err(|source| OutputError::Io { path: path.display().to_string(), source })?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// The output as given.
    pub fn url(&self) -> &str {
        &self.url
    }
}
