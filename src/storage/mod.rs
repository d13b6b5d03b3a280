//! Storage: one `object_store` per URL, registered on the DataFusion session, for inputs,
//! staging, published tables, manifests and the lock alike.
//!
//! A location is a local path (or `file://` URL), `s3://bucket/prefix`, `gs://bucket/prefix`
//! (inputs only: see [`Location::resolve_output`]) or `az://container/prefix`. S3 starts from
//! `AmazonS3Builder::from_env()` (the standard `AWS_*` variables, web identity, container and
//! instance credentials) and applies the `[storage.s3]` keys that are set. Secrets stay in the
//! process: [`crate::redact`] scrubs every credential value the environment holds from the text
//! segflow prints or logs.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use datafusion::prelude::SessionContext;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::MicrosoftAzureBuilder;
use object_store::gcp::GoogleCloudStorageBuilder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjPath;
use object_store::{BackoffConfig, ClientConfigKey, ObjectMeta, ObjectStore, RetryConfig};
use url::Url;

use crate::config::S3Settings;
use crate::error::{Error, Result};
use crate::redact::redact;

mod retrying;
pub use retrying::retrying;
use retrying::RetryingStore;

/// Why a `gs://` output is refused (see [`Location::resolve_output`]).
pub const GCS_OUTPUT_REFUSED: &str = "gs:// outputs are not supported: object_store 0.13's \
    Google Cloud Storage copy has its create-only and overwrite modes reversed \
    (apache/arrow-rs-object-store#712), so segflow's publish commit cannot be made safe on GCS; \
    gs:// inputs are supported (write the output to s3://, az:// or a local path)";

/// A root location inside one object store.
#[derive(Clone, Debug)]
pub struct Location {
    /// The location as the user wrote it (for messages; never holds credentials).
    pub uri: String,
    /// `scheme://authority/`, the URL the store is registered under.
    base: Url,
    /// The store holding this location.
    pub store: Arc<dyn ObjectStore>,
    /// The root's path inside the store.
    pub prefix: ObjPath,
    /// The root directory when the location is on local disk.
    pub local: Option<PathBuf>,
}

impl Location {
    /// Resolves a location: a local path (absolute after config resolution) or a URL.
    pub fn resolve(uri: &str, s3: &S3Settings) -> Result<Location> {
        let bad = |message: String| Error::Output {
            uri: uri.to_string(),
            operation: "open".into(),
            message,
        };
        if !uri.contains("://") || uri.starts_with("file://") {
            let path = PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri));
            let prefix = ObjPath::from_absolute_path(&path)
                .map_err(|e| bad(format!("not a valid local path: {e}")))?;
            return Ok(Location {
                uri: uri.to_string(),
                base: Url::parse("file:///").map_err(|e| bad(e.to_string()))?,
                store: local_store(),
                prefix,
                local: Some(path),
            });
        }
        let url = Url::parse(uri).map_err(|e| bad(format!("not a valid URL: {e}")))?;
        let bucket = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| bad("the URL names no bucket".into()))?
            .to_string();
        let store: Arc<dyn ObjectStore> = match url.scheme() {
            "s3" | "s3a" => RetryingStore::wrap(
                s3_builder(&bucket, s3)
                    .build()
                    .map_err(|e| bad(redact(&e.to_string())))?,
            ),
            "gs" => RetryingStore::wrap(
                GoogleCloudStorageBuilder::from_env()
                    .with_bucket_name(&bucket)
                    .build()
                    .map_err(|e| bad(redact(&e.to_string())))?,
            ),
            "az" | "abfs" | "abfss" => RetryingStore::wrap(
                MicrosoftAzureBuilder::from_env()
                    .with_container_name(&bucket)
                    .build()
                    .map_err(|e| bad(redact(&e.to_string())))?,
            ),
            other => {
                return Err(bad(format!(
                    "unsupported scheme `{other}://` (use a local path, file://, s3://, gs:// or az://)"
                )))
            }
        };
        let base =
            Url::parse(&format!("{}://{bucket}/", url.scheme())).map_err(|e| bad(e.to_string()))?;
        let prefix = ObjPath::from_url_path(url.path())
            .map_err(|e| bad(format!("invalid path in URL: {e}")))?;
        Ok(Location {
            uri: uri.trim_end_matches('/').to_string(),
            base,
            store,
            prefix,
            local: None,
        })
    }

    /// Resolves a location segflow publishes to: [`Location::resolve`], refusing `gs://`
    /// before any I/O. The publish commit copies staged files into place with create-only
    /// and overwriting copies, and object_store 0.13's GCS `copy_opts` sends them the wrong
    /// way round (apache/arrow-rs-object-store#712, fixed in 0.14): the commit could not be
    /// made safe. `gs://` inputs, which are only read, stay supported.
    pub fn resolve_output(uri: &str, s3: &S3Settings) -> Result<Location> {
        if uri.trim_start().to_ascii_lowercase().starts_with("gs://") {
            return Err(Error::Output {
                uri: uri.to_string(),
                operation: "open".into(),
                message: GCS_OUTPUT_REFUSED.into(),
            });
        }
        Location::resolve(uri, s3)
    }

    /// Makes the store known to DataFusion under its URL.
    pub fn register(&self, ctx: &SessionContext) {
        if self.local.is_none() {
            ctx.runtime_env()
                .register_object_store(&self.base, self.store.clone());
        }
    }

    /// The store path of `rel` (a `/`-separated path below the root, as listed: parts that
    /// are already percent-encoded stay as they are).
    pub fn path(&self, rel: &str) -> ObjPath {
        let rel = rel.trim_matches('/');
        if rel.is_empty() {
            return self.prefix.clone();
        }
        let joined = if self.prefix.as_ref().is_empty() {
            rel.to_string()
        } else {
            format!("{}/{rel}", self.prefix)
        };
        ObjPath::parse(&joined).unwrap_or_else(|_| {
            rel.split('/')
                .filter(|p| !p.is_empty())
                .fold(self.prefix.clone(), |p, part| p.join(part))
        })
    }

    /// A directory URL DataFusion can list or write (ends with `/`).
    pub fn dir_url(&self, rel: &str) -> String {
        match &self.local {
            Some(root) => {
                let mut p = root.clone();
                p.extend(rel.split('/').filter(|s| !s.is_empty()));
                format!("{}/", p.display())
            }
            None => format!("{}{}/", self.base, self.path(rel)),
        }
    }

    /// The path of a store object relative to the root, if it is below it.
    pub fn rel(&self, p: &ObjPath) -> Option<String> {
        p.prefix_match(&self.prefix).map(|parts| {
            parts
                .map(|x| x.as_ref().to_string())
                .collect::<Vec<_>>()
                .join("/")
        })
    }

    /// Every object below `rel`.
    pub async fn list(&self, rel: &str) -> object_store::Result<Vec<ObjectMeta>> {
        self.store.list(Some(&self.path(rel))).try_collect().await
    }

    /// A message-ready name of `rel` below this location.
    pub fn display(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.uri.clone()
        } else {
            format!("{}/{rel}", self.uri.trim_end_matches('/'))
        }
    }
}

/// The local file system store (the one DataFusion registers for `file://`), removing
/// directories left empty by deletes.
fn local_store() -> Arc<dyn ObjectStore> {
    static STORE: OnceLock<Arc<dyn ObjectStore>> = OnceLock::new();
    STORE
        .get_or_init(|| Arc::new(LocalFileSystem::new().with_automatic_cleanup(true)))
        .clone()
}

fn ms(d: Duration) -> String {
    format!("{}ms", d.as_millis())
}

/// `AmazonS3Builder::from_env()` with the `[storage.s3]` keys that are set applied on top.
fn s3_builder(bucket: &str, s3: &S3Settings) -> AmazonS3Builder {
    let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if let Some(e) = &s3.endpoint {
        b = b.with_endpoint(e);
    }
    if let Some(r) = &s3.region {
        b = b.with_region(r);
    }
    if let Some(h) = s3.allow_http {
        b = b.with_allow_http(h);
    }
    if let Some(v) = s3.virtual_hosted_style {
        b = b.with_virtual_hosted_style_request(v);
    }
    if let Some(t) = s3.connect_timeout {
        b = b.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            ms(t),
        );
    }
    if let Some(t) = s3.request_timeout {
        b = b.with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), ms(t));
    }
    let defaults = RetryConfig::default();
    let backoff = BackoffConfig::default();
    b.with_retry(RetryConfig {
        backoff: BackoffConfig {
            init_backoff: s3.backoff_initial.unwrap_or(backoff.init_backoff),
            max_backoff: s3.backoff_max.unwrap_or(backoff.max_backoff),
            base: s3.backoff_base.unwrap_or(backoff.base),
        },
        max_retries: s3.max_retries.unwrap_or(defaults.max_retries),
        retry_timeout: s3.retry_timeout.unwrap_or(defaults.retry_timeout),
    })
}

/// Writes a local file so readers see the old or the new content: a hidden temporary file
/// next to it, then renamed over it (removed if the rename fails). `operation` names the
/// write in errors.
pub fn write_file_atomically(
    path: &std::path::Path,
    contents: &[u8],
    operation: &'static str,
) -> Result<()> {
    let io = |e| Error::io(operation, path, e);
    let Some(name) = path.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Err(io(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a file path",
        )));
    };
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, contents).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_join_below_the_prefix() {
        let loc = Location::resolve("/tmp/out", &S3Settings::default()).unwrap();
        assert_eq!(loc.path("a/b=c/").as_ref(), "tmp/out/a/b=c");
        assert_eq!(loc.rel(&loc.path("x/y")).as_deref(), Some("x/y"));
        assert_eq!(loc.dir_url("a/b"), "/tmp/out/a/b/");
    }

    #[test]
    fn gcs_outputs_are_refused_before_any_io_other_outputs_resolve() {
        let err = Location::resolve_output("gs://bucket/out", &S3Settings::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gs://bucket/out") && err.contains("arrow-rs-object-store#712"),
            "{err}"
        );
        assert!(Location::resolve_output("/tmp/out", &S3Settings::default()).is_ok());
    }

    #[test]
    fn s3_urls_split_into_bucket_and_prefix() {
        let loc = Location::resolve(
            "s3://bucket/some/prefix",
            &S3Settings {
                region: Some("us-east-1".into()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(loc.prefix.as_ref(), "some/prefix");
        assert_eq!(
            loc.dir_url("m/as_of=2026-01-01"),
            "s3://bucket/some/prefix/m/as_of=2026-01-01/"
        );
    }
}
