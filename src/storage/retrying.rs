//! Retries of idempotent store operations that object_store does not retry itself.

use std::sync::Arc;
use std::time::Duration;

use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path as ObjPath;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

use crate::redact::redact;

/// Runs an idempotent store operation again after a transient failure. object_store
/// retries requests itself, but not every failure: a response body cut short (a copy's or
/// a listing's) or a reset single-object delete surfaces as an error. Segflow's own
/// operations (list, copy to a fixed name, put of a marker, delete) are safe to repeat.
pub async fn retrying<T, F, Fut>(what: &str, mut op: F) -> object_store::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = object_store::Result<T>>,
{
    const ATTEMPTS: u32 = 4;
    let mut delay = Duration::from_millis(100);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e @ object_store::Error::Generic { .. }) if attempt < ATTEMPTS => {
                tracing::warn!(operation = what, attempt, error = %redact(&e.to_string()), "storage operation failed; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// A remote store whose listings are retried as a whole. object_store retries a listing
/// request, but not a response body cut short, and DataFusion lists every table it reads:
/// without this one cut listing would fail a model. Everything else is passed through.
#[derive(Debug)]
pub(super) struct RetryingStore(Arc<dyn ObjectStore>);

impl RetryingStore {
    pub(super) fn wrap(store: impl ObjectStore) -> Arc<dyn ObjectStore> {
        Arc::new(RetryingStore(Arc::new(store)))
    }
}

impl std::fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

// Every method is forwarded: a default method would bypass the inner store's own
// implementation (S3 lists from an offset natively, a default lists everything and skips).
#[deny(clippy::missing_trait_methods)]
#[async_trait::async_trait]
impl ObjectStore for RetryingStore {
    async fn put_opts(
        &self,
        location: &ObjPath,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.0.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &ObjPath,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.0.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &ObjPath,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.0.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<ObjPath>>,
    ) -> BoxStream<'static, object_store::Result<ObjPath>> {
        self.0.delete_stream(locations)
    }

    async fn get_ranges(
        &self,
        location: &ObjPath,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        self.0.get_ranges(location, ranges).await
    }

    fn list(
        &self,
        prefix: Option<&ObjPath>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.0.clone();
        let prefix = prefix.cloned();
        retried_listing(move || inner.list(prefix.as_ref()))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&ObjPath>,
        offset: &ObjPath,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let inner = self.0.clone();
        let (prefix, offset) = (prefix.cloned(), offset.clone());
        retried_listing(move || inner.list_with_offset(prefix.as_ref(), &offset))
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&ObjPath>,
    ) -> object_store::Result<ListResult> {
        retrying("list", || self.0.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.0.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &ObjPath,
        to: &ObjPath,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.0.rename_opts(from, to, options).await
    }
}

/// A listing collected whole, and collected again after a transient failure.
fn retried_listing<F>(list: F) -> BoxStream<'static, object_store::Result<ObjectMeta>>
where
    F: Fn() -> BoxStream<'static, object_store::Result<ObjectMeta>> + Send + Sync + 'static,
{
    futures::stream::once(async move { retrying("list", || list().try_collect::<Vec<_>>()).await })
        .map_ok(|metas| futures::stream::iter(metas.into_iter().map(Ok)))
        .try_flatten()
        .boxed()
}
