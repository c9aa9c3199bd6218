//! Writing objects: whole small ones in one `PUT`, large ones in parts.
//!
//! An object store publishes an object only when its `PUT` (or the completion of its
//! multipart upload) succeeds, so an uploaded shard is never visible half-written: the
//! store's own atomicity plays the part of the temp-name/rename of [`crate::atomic`].
//! A failed attempt is aborted (its parts discarded) and the whole object is sent again,
//! up to [`RemoteOptions::retries`](super::RemoteOptions::retries) times.

use std::path::Path;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};
use tokio::io::AsyncReadExt;

use super::store::{self, ObjectUrl};
use crate::ShardError;

/// Size of one part of a multipart upload.
const PART_BYTES: usize = 8 << 20;

/// Upload the file at `local` to `url` (multipart when it is at least
/// [`RemoteOptions::multipart_threshold`](super::RemoteOptions::multipart_threshold) bytes).
/// Returns the bytes uploaded.
pub fn upload_file(local: &Path, url: &str) -> Result<u64, ShardError> {
    let object = ObjectUrl::parse(url)?;
    let size = std::fs::metadata(local)
        .map_err(|e| ShardError::io(local.display(), e))?
        .len();
    let options = super::options();
    if size < options.multipart_threshold {
        let bytes = std::fs::read(local).map_err(|e| ShardError::io(local.display(), e))?;
        put_object(&object, Bytes::from(bytes))?;
        return Ok(size);
    }
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        match store::block_on(multipart_once(&object, local, options.upload_concurrency)) {
            Ok(()) => {
                super::count_upload(size);
                return Ok(size);
            }
            Err(UploadFailure::Local(e)) => return Err(ShardError::io(local.display(), e)),
            Err(UploadFailure::Store(error)) => {
                if !store::is_transient(&error) || attempt > options.retries {
                    return Err(ShardError::Remote {
                        url: url.to_string(),
                        action: "uploading",
                        attempts: attempt,
                        hint: store::hint_for(&error, url),
                        source: error,
                    });
                }
                super::count_retry();
                std::thread::sleep(options.backoff_for(attempt));
            }
        }
    }
}

enum UploadFailure {
    Local(std::io::Error),
    Store(object_store::Error),
}

async fn multipart_once(
    object: &ObjectUrl,
    local: &Path,
    concurrency: usize,
) -> Result<(), UploadFailure> {
    super::count_request();
    let upload = object
        .store
        .put_multipart(&object.key)
        .await
        .map_err(UploadFailure::Store)?;
    let mut writer = WriteMultipart::new_with_chunk_size(upload, PART_BYTES);
    let mut file = tokio::fs::File::open(local)
        .await
        .map_err(UploadFailure::Local)?;
    let mut buf = vec![0u8; PART_BYTES];
    loop {
        let n = match file.read(&mut buf).await {
            Ok(n) => n,
            Err(e) => {
                let _ = writer.abort().await;
                return Err(UploadFailure::Local(e));
            }
        };
        if n == 0 {
            break;
        }
        if let Err(e) = writer.wait_for_capacity(concurrency.max(1)).await {
            let _ = writer.abort().await;
            return Err(UploadFailure::Store(e));
        }
        super::count_request();
        writer.write(&buf[..n]);
    }
    writer
        .finish()
        .await
        .map(|_| ())
        .map_err(UploadFailure::Store)
}

/// Put `bytes` as the object `url` in one request (with retries).
pub fn put_bytes(url: &str, bytes: Bytes) -> Result<(), ShardError> {
    put_object(&ObjectUrl::parse(url)?, bytes)
}

fn put_object(object: &ObjectUrl, bytes: Bytes) -> Result<(), ShardError> {
    let len = bytes.len() as u64;
    store::block_on(async {
        store::retrying(object, "uploading", || {
            object
                .store
                .put(&object.key, PutPayload::from(bytes.clone()))
        })
        .await
    })?;
    super::count_upload(len);
    Ok(())
}

/// Delete the object `url`; a missing object is not an error.
pub fn delete(url: &str) -> Result<(), ShardError> {
    let object = ObjectUrl::parse(url)?;
    let deleted = store::block_on(async {
        store::retrying(&object, "deleting", || object.store.delete(&object.key)).await
    });
    match deleted {
        Ok(())
        | Err(ShardError::Remote {
            source: object_store::Error::NotFound { .. },
            ..
        }) => Ok(()),
        Err(e) => Err(e),
    }
}
