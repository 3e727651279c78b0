//! Objects in an S3 bucket: Amazon S3 or an S3-compatible server (MinIO, Ceph RGW, moto).
//!
//! Credentials: a static key pair when [`S3Config::access_key`] is set; otherwise the
//! standard AWS chain: the `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` variables, the shared
//! profile files (including SSO and `credential_process`), a web identity token (EKS), then
//! the ECS container and EC2 instance metadata endpoints.
//!
//! Addressing: AWS takes virtual-hosted style (`bucket.host/key`); MinIO, moto and Ceph need
//! path style (`host/bucket/key`), hence [`S3Config::path_style`]. With a custom endpoint the
//! client sends and checks checksums only where S3 requires them, which such servers handle.
//!
//! [`S3Storage::connect`] checks the bucket and creates it when it does not exist. Files
//! above [`MULTIPART_THRESHOLD`] are uploaded in [`PART_SIZE`] parts read straight from disk;
//! a failed multipart upload is aborted. An object becomes visible whole or not at all, and
//! downloads go through a temporary file renamed into place. Every request has a 5 s connect
//! timeout and a 60 s timeout per attempt, with the SDK's standard retry (3 attempts); the
//! body of a download is streamed and guarded by the SDK's stalled-stream protection.

use crate::{Storage, StorageError, check_key};
use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::DisplayErrorContext;
use aws_sdk_s3::primitives::{ByteStream, Length};
use aws_sdk_s3::types::{
    BucketLocationConstraint, CompletedMultipartUpload, CompletedPart, CreateBucketConfiguration,
    Delete, ObjectIdentifier,
};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;

/// Files larger than this are uploaded in parts.
pub const MULTIPART_THRESHOLD: u64 = 16 * 1024 * 1024;
/// The size of each part of a multipart upload (S3 wants at least 5 MiB but for the last),
/// raised for files that would need more than S3's 10,000 parts.
pub const PART_SIZE: u64 = 8 * 1024 * 1024;
const MAX_PARTS: u64 = 10_000;
/// DeleteObjects takes at most 1,000 keys.
const DELETE_BATCH: usize = 1000;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_ATTEMPTS: u32 = 3;
/// Read buffer for files sent from disk.
const READ_BUFFER: usize = 64 * 1024;
/// S3's default region, the one where CreateBucket takes no location constraint.
const DEFAULT_REGION: &str = "us-east-1";

/// Where the bucket is and how to reach it: the settings `[functions.storage]` resolves
/// to, declared once in `reactor_api::config`.
pub use reactor_api::config::S3Settings as S3Config;

/// Objects in an S3 bucket, under an optional key prefix.
#[derive(Clone)]
pub struct S3Storage {
    client: Client,
    bucket: String,
    prefix: String,
    multipart_threshold: u64,
}

impl std::fmt::Debug for S3Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Storage")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("multipart_threshold", &self.multipart_threshold)
            .finish_non_exhaustive()
    }
}

impl S3Storage {
    /// Builds the client, then checks that the bucket exists, creating it when it does not.
    pub async fn connect(config: S3Config) -> Result<Self, StorageError> {
        let S3Config {
            endpoint,
            bucket,
            region,
            path_style,
            access_key,
            prefix,
        } = config;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if let Some(endpoint) = &endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some((id, secret)) = access_key {
            loader = loader.credentials_provider(Credentials::new(
                id,
                secret,
                None,
                None,
                "reactor-config",
            ));
        }
        let shared = loader.load().await;
        let mut s3 = aws_sdk_s3::config::Builder::from(&shared).force_path_style(path_style);
        if endpoint.is_some() {
            // S3-compatible servers lag behind AWS on the newer default checksums (aws-chunked
            // uploads with trailing CRCs, checksums on each part).
            s3 = s3
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        let storage = Self {
            client: Client::from_conf(s3.build()),
            bucket,
            prefix: normalize_prefix(&prefix),
            multipart_threshold: MULTIPART_THRESHOLD,
        };
        storage.ensure_bucket(&region).await?;
        Ok(storage)
    }

    /// Uploads files larger than `bytes` in parts (for tests; the default is
    /// [`MULTIPART_THRESHOLD`]). Parts stay [`PART_SIZE`] long.
    pub fn with_multipart_threshold(mut self, bytes: u64) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The SDK client, for tests that look at what the backend wrote.
    #[doc(hidden)]
    pub fn client(&self) -> &Client {
        &self.client
    }

    async fn ensure_bucket(&self, region: &str) -> Result<(), StorageError> {
        let bucket = &self.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => return Ok(()),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => {}
            Err(err) => return Err(remote("head-bucket", bucket, err)),
        }
        let mut create = self.client.create_bucket().bucket(bucket);
        if region != DEFAULT_REGION {
            create = create.create_bucket_configuration(
                CreateBucketConfiguration::builder()
                    .location_constraint(BucketLocationConstraint::from(region))
                    .build(),
            );
        }
        match create.send().await {
            Ok(_) => {
                tracing::info!(bucket = %bucket, region, "created the storage bucket");
                Ok(())
            }
            // Another process created it between our two calls.
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.is_bucket_already_owned_by_you()) =>
            {
                Ok(())
            }
            Err(err) => Err(remote("create-bucket", bucket, err)),
        }
    }

    /// The object key of a storage key, which is checked first.
    fn object_key(&self, key: &str) -> Result<String, StorageError> {
        check_key(key)?;
        Ok(format!("{}{key}", self.prefix))
    }

    async fn put_multipart(
        &self,
        key: &str,
        object: &str,
        path: &Path,
        len: u64,
    ) -> Result<(), StorageError> {
        let created = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
            .map_err(|e| remote("put", key, e))?;
        let Some(upload_id) = created.upload_id() else {
            return Err(StorageError::Remote {
                op: "put",
                key: key.to_string(),
                message: "CreateMultipartUpload returned no upload id".to_string(),
            });
        };
        let result = self.upload_parts(key, object, path, len, upload_id).await;
        if result.is_err() {
            // Best effort: otherwise the parts linger (and are billed) until a lifecycle rule
            // removes them.
            if let Err(err) = self
                .client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .send()
                .await
            {
                tracing::warn!(key, error = %DisplayErrorContext(&err), "aborting a failed multipart upload");
            }
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        object: &str,
        path: &Path,
        len: u64,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let part_size = PART_SIZE.max(len.div_ceil(MAX_PARTS));
        let mut parts = Vec::new();
        let mut offset = 0;
        let mut number = 1;
        while offset < len {
            let size = part_size.min(len - offset);
            let body = ByteStream::read_from()
                .path(path)
                .buffer_size(READ_BUFFER)
                .offset(offset)
                .length(Length::Exact(size))
                .build()
                .await
                .map_err(|e| local_read(key, e))?;
            let uploaded = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(object)
                .upload_id(upload_id)
                .part_number(number)
                .body(body)
                .send()
                .await
                .map_err(|e| remote("put", key, e))?;
            let Some(etag) = uploaded.e_tag() else {
                return Err(StorageError::Remote {
                    op: "put",
                    key: key.to_string(),
                    message: format!("UploadPart returned no ETag for part {number}"),
                });
            };
            parts.push(
                CompletedPart::builder()
                    .e_tag(etag)
                    .part_number(number)
                    .build(),
            );
            offset += size;
            number += 1;
        }
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(object)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| remote("put", key, e))?;
        Ok(())
    }

    /// Deletes up to [`DELETE_BATCH`] objects in one request.
    async fn delete_batch(&self, prefix: &str, keys: Vec<String>) -> Result<(), StorageError> {
        let count = keys.len();
        let objects = keys
            .into_iter()
            .map(|key| ObjectIdentifier::builder().key(key).build())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| remote("delete", prefix, e))?;
        let delete = Delete::builder()
            .set_objects(Some(objects))
            .quiet(true)
            .build()
            .map_err(|e| remote("delete", prefix, e))?;
        let out = self
            .client
            .delete_objects()
            .bucket(&self.bucket)
            .delete(delete)
            .send()
            .await
            .map_err(|e| remote("delete", prefix, e))?;
        if let Some(first) = out.errors().first() {
            return Err(StorageError::Remote {
                op: "delete",
                key: prefix.to_string(),
                message: format!(
                    "{} of {count} objects not deleted, first {}: {} {}",
                    out.errors().len(),
                    first.key().unwrap_or("?"),
                    first.code().unwrap_or("?"),
                    first.message().unwrap_or(""),
                ),
            });
        }
        Ok(())
    }
}

impl S3Storage {
    /// The object at `key`, or `NotFound`.
    async fn get_object(
        &self,
        key: &str,
    ) -> Result<aws_sdk_s3::operation::get_object::GetObjectOutput, StorageError> {
        let object = self.object_key(key)?;
        match self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
        {
            Ok(out) => Ok(out),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_no_such_key()) => {
                Err(StorageError::NotFound(key.to_string()))
            }
            Err(err) => Err(remote("get", key, err)),
        }
    }
}

#[async_trait]
impl Storage for S3Storage {
    async fn put_file(&self, key: &str, path: &Path) -> Result<(), StorageError> {
        let object = self.object_key(key)?;
        let len = tokio::fs::metadata(path)
            .await
            .map_err(|source| StorageError::Io {
                key: key.to_string(),
                source,
            })?
            .len();
        if len > self.multipart_threshold {
            return self.put_multipart(key, &object, path, len).await;
        }
        let body = ByteStream::read_from()
            .path(path)
            .buffer_size(READ_BUFFER)
            .build()
            .await
            .map_err(|e| local_read(key, e))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .body(body)
            .send()
            .await
            .map_err(|e| remote("put", key, e))?;
        Ok(())
    }

    async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<(), StorageError> {
        let object = self.object_key(key)?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(object)
            .body(ByteStream::from(bytes))
            .send()
            .await
            .map_err(|e| remote("put", key, e))?;
        Ok(())
    }

    async fn get_bytes(&self, key: &str) -> Result<Bytes, StorageError> {
        let out = self.get_object(key).await?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| remote("get", key, e))?;
        Ok(body.into_bytes())
    }

    async fn get_to_file(&self, key: &str, dest: &Path) -> Result<(), StorageError> {
        let out = self.get_object(key).await?;
        let io = |source| StorageError::Io {
            key: key.to_string(),
            source,
        };
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(parent).await.map_err(io)?;
        }
        // Beside `dest`, so that the rename stays on one filesystem.
        let tmp = part_path(dest);
        let mut body = out.body;
        let written = async {
            let mut file = tokio::fs::File::create(&tmp).await.map_err(io)?;
            while let Some(chunk) = body.next().await {
                let chunk = chunk.map_err(|e| remote("get", key, e))?;
                file.write_all(&chunk).await.map_err(io)?;
            }
            file.sync_all().await.map_err(io)?;
            Ok::<(), StorageError>(())
        }
        .await;
        let renamed = match written {
            Ok(()) => tokio::fs::rename(&tmp, dest).await.map_err(io),
            Err(err) => Err(err),
        };
        if renamed.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        renamed
    }

    async fn copy(&self, from: &str, to: &str) -> Result<(), StorageError> {
        use aws_sdk_s3::error::ProvideErrorMetadata;
        let (source, object) = (self.object_key(from)?, self.object_key(to)?);
        match self
            .client
            .copy_object()
            .bucket(&self.bucket)
            .copy_source(copy_source(&self.bucket, &source))
            .key(object)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(err)
                if err
                    .as_service_error()
                    .is_some_and(|e| e.code() == Some("NoSuchKey")) =>
            {
                Err(StorageError::NotFound(from.to_string()))
            }
            Err(err) => Err(remote("copy", to, err)),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StorageError> {
        let object = self.object_key(key)?;
        match self
            .client
            .head_object()
            .bucket(&self.bucket)
            .key(object)
            .send()
            .await
        {
            Ok(_) => Ok(true),
            Err(err) if err.as_service_error().is_some_and(|e| e.is_not_found()) => Ok(false),
            Err(err) => Err(remote("exists", key, err)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<(), StorageError> {
        let object = self.object_key(prefix)?;
        // The folder, with its `/`: `bundles/o/f` must not take `bundles/o/fg`.
        let folder = format!("{object}/");
        // An object named exactly `prefix` goes too (deleting a missing key is no error).
        let mut pending = vec![object];
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(&self.bucket)
                .prefix(&folder)
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| remote("list", prefix, e))?;
            pending.extend(
                page.contents()
                    .iter()
                    .filter_map(|o| o.key())
                    .map(str::to_string),
            );
            while pending.len() >= DELETE_BATCH {
                let batch = pending.drain(..DELETE_BATCH).collect();
                self.delete_batch(prefix, batch).await?;
            }
            match page.next_continuation_token() {
                Some(next) if page.is_truncated() == Some(true) => token = Some(next.to_string()),
                _ => break,
            }
        }
        if !pending.is_empty() {
            self.delete_batch(prefix, pending).await?;
        }
        Ok(())
    }
}

/// `""` stays empty; anything else loses leading `/`s and ends with exactly one `/`.
fn normalize_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else {
        format!("{trimmed}/")
    }
}

/// A unique temporary name beside `dest`.
fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(format!(
        ".part-{}-{}",
        std::process::id(),
        ulid::Ulid::new()
    ));
    PathBuf::from(name)
}

/// An SDK error as [`StorageError::Remote`], with its whole chain of causes.
fn remote(op: &'static str, key: &str, err: impl std::error::Error) -> StorageError {
    StorageError::Remote {
        op,
        key: key.to_string(),
        message: DisplayErrorContext(err).to_string(),
    }
}

/// `x-amz-copy-source`: `bucket/key`, URL-encoded but for the `/` between segments.
fn copy_source(bucket: &str, object: &str) -> String {
    let mut out = String::with_capacity(bucket.len() + object.len() + 1);
    for (i, part) in [bucket, object].into_iter().enumerate() {
        if i > 0 {
            out.push('/');
        }
        for b in part.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
                out.push(b as char);
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
    }
    out
}

/// A failure to open or read a local file for upload.
fn local_read(key: &str, err: impl std::error::Error) -> StorageError {
    StorageError::Io {
        key: key.to_string(),
        source: std::io::Error::other(DisplayErrorContext(err).to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_normalized() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("tenant-a"), "tenant-a/");
        assert_eq!(normalize_prefix("/tenant-a/"), "tenant-a/");
        assert_eq!(normalize_prefix("a/b/"), "a/b/");
    }

    #[test]
    fn debug_hides_the_secret() {
        let config = S3Config {
            endpoint: None,
            bucket: "b".to_string(),
            region: "us-east-1".to_string(),
            path_style: false,
            access_key: Some(("AKIDEXAMPLE".to_string(), "s3cr3t-value".to_string())),
            prefix: String::new(),
        };
        let shown = format!("{config:?}");
        assert!(shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("s3cr3t-value"), "{shown}");
    }
}
