//! Where message contents that do not travel on Kafka are kept, so every replica finds them:
//! attachments (`attachments/<first two hex>/<sha256 hex>`, stored once by content) and raw mail
//! that could not become a ticket (`deadletter/email/<sha256 hex>.eml`).
//!
//! One [`BlobStore`] over the `object_store` crate: the local folder `data_dir` by default (the
//! embedded stack, or a volume every replica mounts), or an S3-compatible object store
//! (`storage.url: s3://bucket/prefix`) that ingest and serving replicas on different machines
//! all reach. Writes are atomic (a reader never sees half an object) and idempotent (the key is
//! the content's hash, so writing the same bytes twice is one object).

use std::path::Path as FsPath;
use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use futures::{StreamExt as _, TryStreamExt as _};
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use sha2::{Digest as _, Sha256};

use crate::config::StorageConfig;

/// Why the store could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The key is not 64 hex digits (it can never name an object).
    #[error("not a storage key (64 hex digits): {0:?}")]
    BadKey(String),
    /// `storage` in pipelines.yaml does not describe a store.
    #[error("storage: {0}")]
    Config(String),
    /// The store answered with an error or could not be reached.
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

impl StorageError {
    /// Whether trying again later may succeed (the store was unreachable or failed); a bad key
    /// or a bad configuration never will.
    pub fn retryable(&self) -> bool {
        match self {
            StorageError::BadKey(_) | StorageError::Config(_) => false,
            StorageError::Store(e) => !matches!(
                e,
                object_store::Error::InvalidPath { .. }
                    | object_store::Error::NotSupported { .. }
                    | object_store::Error::NotImplemented { .. }
                    | object_store::Error::UnknownConfigurationKey { .. }
                    | object_store::Error::PermissionDenied { .. }
                    | object_store::Error::Unauthenticated { .. }
            ),
        }
    }
}

/// A raw mail kept because it could not become a ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawMail {
    /// The SHA-256 of the message (its dead-letter key is `email:<key>`).
    pub key: String,
    /// When it was stored.
    pub stored_at: DateTime<Utc>,
}

/// An attachment's content, streamed from the store.
pub struct Content {
    /// Its length in bytes.
    pub size: u64,
    /// The bytes, in chunks as the store sends them.
    pub chunks: futures::stream::BoxStream<'static, Result<Bytes, StorageError>>,
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content").field("size", &self.size).finish()
    }
}

/// Attachments and raw dead-lettered mail, in a local folder or an S3-compatible store.
#[derive(Clone)]
pub struct BlobStore {
    store: Arc<dyn ObjectStore>,
    /// Where it is, for logs and dead-letter reasons (`file:///…` or `s3://bucket/prefix`).
    location: String,
}

impl std::fmt::Debug for BlobStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobStore")
            .field("location", &self.location)
            .finish()
    }
}

/// Whether `key` can be a storage key: 64 hex digits, so it can never name another object.
pub fn is_key(key: &str) -> bool {
    key.len() == 64 && key.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `key`, if it can be a storage key ([`is_key`]).
fn checked(key: &str) -> Result<&str, StorageError> {
    if is_key(key) {
        Ok(key)
    } else {
        Err(StorageError::BadKey(
            // Never echo a huge input back.
            cut(key, 80).to_string(),
        ))
    }
}

fn cut(s: &str, max: usize) -> &str {
    switchboard_contracts::text::truncate_bytes(s, max).0
}

fn attachment_object(key: &str) -> Result<Path, StorageError> {
    let key = checked(key)?;
    Ok(Path::from_iter(["attachments", &key[..2], key]))
}

fn raw_mail_object(key: &str) -> Result<Path, StorageError> {
    let key = checked(key)?;
    Ok(Path::from_iter([
        "deadletter",
        "email",
        &format!("{key}.eml"),
    ]))
}

/// The storage key of `content`: its SHA-256 in hex.
pub fn content_key(content: &[u8]) -> String {
    hex::encode(Sha256::digest(content))
}

/// `Ok(None)` for an object that is not there.
fn absent_as_none<T>(r: Result<T, object_store::Error>) -> Result<Option<T>, StorageError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(object_store::Error::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl BlobStore {
    /// The store `storage` describes; its `url` empty: the local folder `data_dir`.
    pub fn open(storage: &StorageConfig, data_dir: &FsPath) -> Result<Self, StorageError> {
        let url = storage.url.trim();
        if url.is_empty() {
            return Self::local(data_dir);
        }
        let Some(rest) = url.strip_prefix("s3://") else {
            return Err(StorageError::Config(format!(
                "url {url:?} is neither empty (the local data_dir) nor s3://bucket[/prefix]"
            )));
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(StorageError::Config(format!("url {url:?} names no bucket")));
        }
        // Credentials and region from the usual AWS_* environment (an instance or pod role
        // works unchanged), then whatever pipelines.yaml sets.
        let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
        if !storage.endpoint.is_empty() {
            b = b.with_endpoint(&storage.endpoint);
        }
        if !storage.region.is_empty() {
            b = b.with_region(&storage.region);
        }
        if !storage.access_key_id.is_empty() {
            b = b.with_access_key_id(&storage.access_key_id);
        }
        if !storage.secret_access_key.is_empty() {
            b = b.with_secret_access_key(storage.secret_access_key.expose());
        }
        // A store that is down answers within seconds, not minutes: an SMTP session waits for
        // it, and a transient refusal lets the sender retry later.
        let s3 = b
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_allow_http(storage.allow_http)
                    .with_connect_timeout(std::time::Duration::from_secs(5))
                    .with_timeout(std::time::Duration::from_secs(60)),
            )
            .with_retry(object_store::RetryConfig {
                backoff: object_store::BackoffConfig::default(),
                max_retries: 3,
                retry_timeout: std::time::Duration::from_secs(15),
            })
            .build()?;
        let prefix = prefix.trim_matches('/');
        let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        };
        Ok(BlobStore {
            store,
            location: format!("s3://{bucket}/{prefix}"),
        })
    }

    /// The local folder `data_dir` (created if missing).
    pub fn local(data_dir: &FsPath) -> Result<Self, StorageError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StorageError::Config(format!("{}: {e}", data_dir.display())))?;
        let fs = LocalFileSystem::new_with_prefix(data_dir)?;
        Ok(BlobStore {
            store: Arc::new(fs),
            location: format!("file://{}", data_dir.display()),
        })
    }

    /// Where the store is (`file:///…` or `s3://bucket/prefix`).
    pub fn location(&self) -> &str {
        &self.location
    }

    /// Whether the attachment with this key is stored.
    pub async fn has_attachment(&self, key: &str) -> Result<bool, StorageError> {
        let path = attachment_object(key)?;
        Ok(absent_as_none(self.store.head(&path).await)?.is_some())
    }

    /// Stores `content` under its [`content_key`] (atomic: the object appears whole or not at
    /// all) and returns the key.
    pub async fn put_attachment(&self, content: Bytes) -> Result<String, StorageError> {
        let key = content_key(&content);
        self.store
            .put(&attachment_object(&key)?, PutPayload::from_bytes(content))
            .await?;
        Ok(key)
    }

    /// The attachment's content, `None` when it is not stored.
    pub async fn attachment(&self, key: &str) -> Result<Option<Content>, StorageError> {
        let path = attachment_object(key)?;
        let Some(got) = absent_as_none(self.store.get(&path).await)? else {
            return Ok(None);
        };
        Ok(Some(Content {
            size: got.meta.size,
            chunks: got.into_stream().map_err(StorageError::from).boxed(),
        }))
    }

    /// Deletes an attachment; whether it was there.
    pub async fn delete_attachment(&self, key: &str) -> Result<bool, StorageError> {
        let path = attachment_object(key)?;
        self.delete(&path).await
    }

    /// The bytes of every stored attachment (one listing: run it rarely).
    pub async fn attachment_bytes(&self) -> Result<u64, StorageError> {
        let mut total = 0u64;
        let mut list = self.store.list(Some(&Path::from("attachments")));
        while let Some(meta) = list.next().await {
            total = total.saturating_add(meta?.size);
        }
        Ok(total)
    }

    /// Keeps a raw mail that could not become a ticket; returns its key (idempotent).
    pub async fn put_raw_mail(&self, raw: Bytes) -> Result<String, StorageError> {
        let key = content_key(&raw);
        let path = raw_mail_object(&key)?;
        if absent_as_none(self.store.head(&path).await)?.is_none() {
            self.store.put(&path, PutPayload::from_bytes(raw)).await?;
        }
        Ok(key)
    }

    /// Where a raw mail is, for a dead-letter reason a person reads.
    pub fn raw_mail_location(&self, key: &str) -> String {
        format!(
            "{}/deadletter/email/{}.eml",
            self.location.trim_end_matches('/'),
            cut(key, 80)
        )
    }

    /// Every raw mail kept.
    pub async fn raw_mails(&self) -> Result<Vec<RawMail>, StorageError> {
        let mut out = Vec::new();
        let mut list = self
            .store
            .list(Some(&Path::from_iter(["deadletter", "email"])));
        while let Some(meta) = list.next().await {
            let meta = meta?;
            let Some(key) = meta
                .location
                .filename()
                .and_then(|n| n.strip_suffix(".eml"))
                .filter(|k| checked(k).is_ok())
            else {
                continue;
            };
            out.push(RawMail {
                key: key.to_string(),
                stored_at: meta.last_modified,
            });
        }
        Ok(out)
    }

    /// A raw mail's bytes, `None` when it is gone.
    pub async fn raw_mail(&self, key: &str) -> Result<Option<Bytes>, StorageError> {
        let path = raw_mail_object(key)?;
        let Some(got) = absent_as_none(self.store.get(&path).await)? else {
            return Ok(None);
        };
        // Gone between the open and the read is gone too.
        absent_as_none(got.bytes().await)
    }

    /// Deletes a raw mail; whether it was there.
    pub async fn delete_raw_mail(&self, key: &str) -> Result<bool, StorageError> {
        let path = raw_mail_object(key)?;
        self.delete(&path).await
    }

    async fn delete(&self, path: &Path) -> Result<bool, StorageError> {
        // S3 answers a delete of a missing object with success, so ask first.
        if absent_as_none(self.store.head(path).await)?.is_none() {
            return Ok(false);
        }
        Ok(absent_as_none(self.store.delete(path).await)?.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_hex_keys_name_objects() {
        let k = "ab".repeat(32);
        assert_eq!(
            attachment_object(&k).unwrap().as_ref(),
            format!("attachments/ab/{k}")
        );
        assert_eq!(
            raw_mail_object(&k).unwrap().as_ref(),
            format!("deadletter/email/{k}.eml")
        );
        for bad in ["../../etc/passwd", &"zz".repeat(32), "", &"a/".repeat(32)] {
            assert!(matches!(
                attachment_object(bad),
                Err(StorageError::BadKey(_))
            ));
            assert!(raw_mail_object(bad).is_err());
        }
        // A huge key is not echoed back whole.
        let huge = "é".repeat(100_000);
        let Err(StorageError::BadKey(shown)) = attachment_object(&huge) else {
            panic!("a huge key is refused");
        };
        assert!(shown.len() <= 80);
    }

    #[test]
    fn the_config_names_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        for (url, says) in [
            ("gs://bucket", "neither empty"),
            ("s3://", "names no bucket"),
            ("s3:///prefix", "names no bucket"),
        ] {
            let cfg = StorageConfig {
                url: url.into(),
                ..Default::default()
            };
            let e = BlobStore::open(&cfg, dir.path()).unwrap_err();
            assert!(e.to_string().contains(says), "{url}: {e}");
            assert!(!e.retryable());
        }
    }

    #[tokio::test]
    async fn the_local_store_keeps_the_old_folder_layout() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::open(&StorageConfig::default(), dir.path()).unwrap();
        let key = store
            .put_attachment(Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(key, content_key(b"hello"));
        // The same file as before this store existed, so data kept by an older build is found.
        let file = dir.path().join("attachments").join(&key[..2]).join(&key);
        assert_eq!(std::fs::read(&file).unwrap(), b"hello");
        assert!(store.has_attachment(&key).await.unwrap());
        assert_eq!(store.attachment_bytes().await.unwrap(), 5);
        let c = store.attachment(&key).await.unwrap().unwrap();
        assert_eq!(c.size, 5);
        let body: Vec<Bytes> = c.chunks.try_collect().await.unwrap();
        assert_eq!(body.concat(), b"hello");
        assert!(store.delete_attachment(&key).await.unwrap());
        assert!(!store.delete_attachment(&key).await.unwrap());
        assert!(store.attachment(&key).await.unwrap().is_none());

        let raw = store
            .put_raw_mail(Bytes::from_static(b"From: a@b\r\n\r\nx"))
            .await
            .unwrap();
        assert!(dir
            .path()
            .join(format!("deadletter/email/{raw}.eml"))
            .exists());
        // Stray files (a temporary file, a foreign name) are not raw mails.
        std::fs::write(dir.path().join("deadletter/email/notes.txt"), b"x").unwrap();
        let listed = store.raw_mails().await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].key, raw);
        assert_eq!(
            store.raw_mail(&raw).await.unwrap().unwrap(),
            Bytes::from_static(b"From: a@b\r\n\r\nx")
        );
        assert!(store.delete_raw_mail(&raw).await.unwrap());
        assert!(store.raw_mail(&raw).await.unwrap().is_none());
        assert!(store.raw_mails().await.unwrap().is_empty());
    }
}
