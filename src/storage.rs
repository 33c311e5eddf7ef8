//! The blob store: uploaded sources and run artifacts, on a local directory (the embedded
//! default) or Azure Blob Storage, through `object_store` (ADR 0004).

use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};

use crate::configuration::{AzureSettings, BlobSettings};

/// Azurite's well-known development account and key, published by Microsoft
/// (<https://learn.microsoft.com/azure/storage/common/storage-use-azurite#well-known-storage-account-and-key>)
/// and built into every Azure SDK; not a secret.
const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
const EMULATOR_ENDPOINT: &str = "http://127.0.0.1:10000/devstoreaccount1";

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("blob {0} not found")]
    NotFound(String),
    #[error("blob store configuration: {0}")]
    Config(String),
    /// Network or service trouble: worth retrying.
    #[error("blob store: {0}")]
    Unavailable(String),
}

impl From<object_store::Error> for StorageError {
    fn from(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            other => StorageError::Unavailable(other.to_string()),
        }
    }
}

#[derive(Clone)]
pub struct BlobStore {
    inner: Arc<dyn ObjectStore>,
    /// Where it points, for logs and errors.
    pub location: String,
    /// The directory of a local store: local files are moved in, not copied.
    local_root: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlobStore({})", self.location)
    }
}

impl BlobStore {
    /// Opens the store named in config, creating the directory or container when missing.
    pub async fn open(s: &BlobSettings) -> Result<Self, StorageError> {
        if let Some(rest) = s.url.strip_prefix("az://") {
            let (container, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if container.is_empty() {
                return Err(StorageError::Config(format!(
                    "{:?} names no container",
                    s.url
                )));
            }
            return Self::azure(container, prefix, &s.azure).await;
        }
        let dir = s.url.strip_prefix("file://").unwrap_or(&s.url);
        if dir.is_empty() || s.url.contains("://") && !s.url.starts_with("file://") {
            return Err(StorageError::Config(format!(
                "blob.url {:?}: expected a directory path, file:///path or az://container",
                s.url
            )));
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| StorageError::Config(format!("cannot create {dir:?}: {e}")))?;
        let fs = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| StorageError::Config(e.to_string()))?
            .with_automatic_cleanup(true);
        let root = std::fs::canonicalize(dir).unwrap_or(dir.into());
        Ok(BlobStore {
            inner: Arc::new(fs),
            location: format!("file://{}", root.display()),
            local_root: Some(root),
        })
    }

    async fn azure(container: &str, prefix: &str, a: &AzureSettings) -> Result<Self, StorageError> {
        let (account, key, endpoint) = if a.use_emulator {
            let endpoint = if a.endpoint.is_empty() {
                EMULATOR_ENDPOINT.to_string()
            } else {
                a.endpoint.clone()
            };
            (
                EMULATOR_ACCOUNT.to_string(),
                EMULATOR_KEY.to_string(),
                endpoint,
            )
        } else {
            if a.account.is_empty() {
                return Err(StorageError::Config("blob.azure.account is not set".into()));
            }
            let endpoint = if a.endpoint.is_empty() {
                format!("https://{}.blob.core.windows.net", a.account)
            } else {
                a.endpoint.clone()
            };
            (a.account.clone(), a.access_key.clone(), endpoint)
        };
        let mut b = MicrosoftAzureBuilder::new()
            .with_account(&account)
            .with_container_name(container)
            .with_endpoint(endpoint.clone())
            .with_allow_http(endpoint.starts_with("http://"));
        if !key.is_empty() {
            b = b.with_access_key(&key);
        }
        let store = b.build().map_err(|e| StorageError::Config(e.to_string()))?;
        if key.is_empty() {
            tracing::info!(
                container,
                "no shared key configured; assuming the container exists"
            );
        } else {
            azure_container::create_if_missing(&endpoint, &account, &key, container).await?;
        }
        let inner: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(store)
        } else {
            Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
        };
        Ok(BlobStore {
            inner,
            location: format!("az://{container}/{prefix} at {endpoint}"),
            local_root: None,
        })
    }

    pub async fn put(&self, key: &str, bytes: impl Into<Bytes>) -> Result<(), StorageError> {
        self.inner
            .put(&Path::from(key), PutPayload::from_bytes(bytes.into()))
            .await?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Bytes, StorageError> {
        Ok(self.inner.get(&Path::from(key)).await?.bytes().await?)
    }

    /// Blob `key` as a stream of chunks (bounded memory for large artifacts).
    pub async fn get_stream(
        &self,
        key: &str,
    ) -> Result<futures_util::stream::BoxStream<'static, Result<Bytes, StorageError>>, StorageError>
    {
        let stream = self.inner.get(&Path::from(key)).await?.into_stream();
        Ok(stream.map_err(StorageError::from).boxed())
    }

    /// Streams blob `key` into the local file `path` (created or truncated); returns its size.
    pub async fn get_to_file(
        &self,
        key: &str,
        path: &std::path::Path,
    ) -> Result<u64, StorageError> {
        use tokio::io::AsyncWriteExt;
        let local = |e: std::io::Error| {
            StorageError::Unavailable(format!("writing the local copy of {key}: {e}"))
        };
        let mut stream = self.inner.get(&Path::from(key)).await?.into_stream();
        let mut f = tokio::fs::File::create(path).await.map_err(local)?;
        let mut n = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            n += chunk.len() as u64;
            f.write_all(&chunk).await.map_err(local)?;
        }
        f.flush().await.map_err(local)?;
        Ok(n)
    }

    /// Moves the local file `path` into blob `key` (the file is consumed): a rename when the
    /// store is a directory on the same filesystem, else a streamed upload.
    pub async fn put_file(&self, key: &str, path: &std::path::Path) -> Result<(), StorageError> {
        if let Some(root) = &self.local_root {
            let dest = root.join(Path::from(key).as_ref());
            let moved = tokio::task::spawn_blocking({
                let (src, dest) = (path.to_path_buf(), dest.clone());
                move || {
                    if let Some(parent) = dest.parent() {
                        std::fs::create_dir_all(parent)?;
                    }
                    std::fs::rename(&src, &dest)
                }
            })
            .await;
            if let Ok(Ok(())) = moved {
                return Ok(());
            }
            // Another filesystem (EXDEV) or a race: fall back to copying.
        }
        self.copy_file(key, path).await
    }

    async fn copy_file(&self, key: &str, path: &std::path::Path) -> Result<(), StorageError> {
        use tokio::io::AsyncReadExt;
        let local = |e: std::io::Error| {
            StorageError::Unavailable(format!("reading a local file for {key}: {e}"))
        };
        let mut f = tokio::fs::File::open(path).await.map_err(local)?;
        let mut w = self.writer(key).await?;
        let mut buf = vec![0u8; 1 << 20];
        let r: Result<(), StorageError> = async {
            loop {
                let n = f.read(&mut buf).await.map_err(local)?;
                if n == 0 {
                    return Ok(());
                }
                w.write(&buf[..n]).await?;
            }
        }
        .await;
        match r {
            Ok(()) => w.finish().await,
            Err(e) => {
                w.abort().await;
                Err(e)
            }
        }
    }

    /// The first `n` bytes (or fewer), for sniffing.
    pub async fn head_bytes(&self, key: &str, n: u64) -> Result<Bytes, StorageError> {
        let path = Path::from(key);
        let size = self.inner.head(&path).await?.size;
        if size == 0 {
            return Ok(Bytes::new());
        }
        Ok(self.inner.get_range(&path, 0..n.min(size)).await?)
    }

    pub async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        Ok(self.inner.copy(&Path::from(from), &Path::from(to)).await?)
    }

    /// Deletes one blob; a missing blob is not an error (deletes are retried).
    pub async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.inner.delete(&Path::from(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes every blob under `prefix`; returns how many.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize, StorageError> {
        let keys: Vec<Path> = self
            .inner
            .list(Some(&Path::from(prefix)))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        let n = keys.len();
        for k in keys {
            self.delete(k.as_ref()).await?;
        }
        Ok(n)
    }

    /// Starts a streamed write of `key`; nothing is visible until `finish`.
    pub async fn writer(&self, key: &str) -> Result<BlobWriter, StorageError> {
        let upload = self.inner.put_multipart(&Path::from(key)).await?;
        Ok(BlobWriter {
            inner: WriteMultipart::new_with_chunk_size(upload, 8 << 20),
            written: 0,
        })
    }

    /// Every blob whose key starts with `prefix` (not only whole path segments: `in/GL_`
    /// matches `in/GL_1.xlsx`), as a stream: the store pages its listing, so memory stays
    /// flat however many blobs there are.
    pub fn list_meta(
        &self,
        prefix: &str,
    ) -> futures_util::stream::BoxStream<'static, Result<BlobMeta, StorageError>> {
        let dir = match prefix.rfind('/') {
            Some(i) => &prefix[..i],
            None => "",
        };
        let wanted = prefix.to_string();
        let listing = if dir.is_empty() {
            self.inner.list(None)
        } else {
            self.inner.list(Some(&Path::from(dir)))
        };
        listing
            .map_err(StorageError::from)
            .try_filter_map(move |m| {
                let key = m.location.to_string();
                let keep = key.starts_with(&wanted);
                futures_util::future::ready(Ok(keep.then_some(BlobMeta {
                    key,
                    size: m.size,
                    last_modified: m.last_modified,
                    etag: m.e_tag,
                })))
            })
            .boxed()
    }

    /// Keys under `prefix`, for tests and tools.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>, StorageError> {
        let mut out: Vec<String> = self
            .inner
            .list(Some(&Path::from(prefix)))
            .map(|m| m.map(|m| m.location.to_string()))
            .try_collect()
            .await?;
        out.sort();
        Ok(out)
    }
}

/// One listed blob.
#[derive(Debug, Clone)]
pub struct BlobMeta {
    pub key: String,
    pub size: u64,
    pub last_modified: chrono::DateTime<chrono::Utc>,
    /// The store's entity tag (quoted for Azure; inode, time and size for a directory).
    pub etag: Option<String>,
}

pub struct BlobWriter {
    inner: WriteMultipart,
    pub written: u64,
}

impl BlobWriter {
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), StorageError> {
        self.inner.wait_for_capacity(4).await?;
        self.inner.write(chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    pub async fn finish(self) -> Result<(), StorageError> {
        self.inner.finish().await?;
        Ok(())
    }

    pub async fn abort(self) {
        if let Err(e) = self.inner.abort().await {
            tracing::warn!(error = %e, "aborting a blob upload failed");
        }
    }
}

/// `object_store` cannot create containers (ADR 0004), so this is the one request etlq
/// signs itself: Create Container with a SharedKey signature.
mod azure_container {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use hmac::{Hmac, KeyInit, Mac};
    use sha2::Sha256;

    use super::StorageError;

    const VERSION: &str = "2021-08-06";

    pub async fn create_if_missing(
        endpoint: &str,
        account: &str,
        key: &str,
        container: &str,
    ) -> Result<(), StorageError> {
        let url = format!(
            "{}/{container}?restype=container",
            endpoint.trim_end_matches('/')
        );
        let path = reqwest::Url::parse(&url)
            .map_err(|e| StorageError::Config(format!("endpoint {endpoint:?}: {e}")))?
            .path()
            .to_string();
        let date = chrono::Utc::now()
            .format("%a, %d %b %Y %H:%M:%S GMT")
            .to_string();
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{VERSION}\n/{account}{path}\nrestype:container"
        );
        let secret = STANDARD
            .decode(key)
            .map_err(|e| StorageError::Config(format!("blob.azure.access_key: {e}")))?;
        let mut mac = Hmac::<Sha256>::new_from_slice(&secret)
            .map_err(|e| StorageError::Config(e.to_string()))?;
        mac.update(to_sign.as_bytes());
        let signature = STANDARD.encode(mac.finalize().into_bytes());
        let resp = reqwest::Client::new()
            .put(&url)
            .header("x-ms-date", date)
            .header("x-ms-version", VERSION)
            .header("content-length", "0")
            .header("authorization", format!("SharedKey {account}:{signature}"))
            .send()
            .await
            .map_err(|e| {
                StorageError::Unavailable(format!("creating container {container}: {e}"))
            })?;
        match resp.status().as_u16() {
            201 => {
                tracing::info!(container, "created blob container");
                Ok(())
            }
            409 => Ok(()),
            code => Err(StorageError::Unavailable(format!(
                "creating container {container}: HTTP {code}: {}",
                resp.text().await.unwrap_or_default()
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_directory_round_trip_copy_and_prefix_delete() {
        let dir = tempfile::tempdir().unwrap();
        let s = BlobSettings {
            url: dir.path().join("blobs").display().to_string(),
            azure: Default::default(),
        };
        let store = BlobStore::open(&s).await.unwrap();
        store.put("runs/1/a.json", "{}").await.unwrap();
        let mut w = store.writer("runs/1/b.bin").await.unwrap();
        w.write(b"PK\x03\x04rest").await.unwrap();
        w.finish().await.unwrap();
        assert_eq!(
            &store.head_bytes("runs/1/b.bin", 4).await.unwrap()[..],
            b"PK\x03\x04"
        );
        store
            .copy("runs/1/a.json", "latest/x/a.json")
            .await
            .unwrap();
        assert_eq!(&store.get("latest/x/a.json").await.unwrap()[..], b"{}");
        assert_eq!(store.delete_prefix("runs/1").await.unwrap(), 2);
        assert!(matches!(
            store.get("runs/1/a.json").await,
            Err(StorageError::NotFound(_))
        ));
        store.delete("runs/1/a.json").await.unwrap();
    }
}
