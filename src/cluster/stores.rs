//! The object stores of a scheduler or an executor: whatever bucket a plan names, opened on
//! first use from `[storage.s3]` and the standard `AWS_*` / `GOOGLE_*` / `AZURE_*`
//! environment, as a run opens its inputs and output ([`Location::resolve`]). A cluster
//! serves runs of any project, so the stores cannot be registered in advance.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::object_store::ObjectStoreRegistry;
use object_store::ObjectStore;
use url::Url;

use crate::config::S3Settings;
use crate::storage::Location;

/// Stores by `scheme://bucket`, opened when a plan first reads or writes there.
#[derive(Debug)]
pub struct StoreRegistry {
    s3: S3Settings,
    stores: RwLock<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl StoreRegistry {
    pub fn new(s3: S3Settings) -> Self {
        StoreRegistry {
            s3,
            stores: RwLock::new(HashMap::new()),
        }
    }
}

/// The registry key of `url`: `file://` for local paths, else `scheme://authority`.
fn key(url: &Url) -> String {
    match url.scheme() {
        "file" => "file://".to_string(),
        scheme => format!("{scheme}://{}", url.authority()),
    }
}

impl ObjectStoreRegistry for StoreRegistry {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.write().unwrap_or_else(|e| e.into_inner());
        stores.insert(key(url), store)
    }

    fn deregister_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let mut stores = self.stores.write().unwrap_or_else(|e| e.into_inner());
        stores
            .remove(&key(url))
            .ok_or_else(|| DataFusionError::Execution(format!("no object store for {url}")))
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        let key = key(url);
        if let Some(store) = self
            .stores
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key)
        {
            return Ok(store.clone());
        }
        let uri = match url.scheme() {
            "file" => "/".to_string(),
            _ => format!("{key}/"),
        };
        let store = Location::resolve(&uri, &self.s3)
            .map_err(|e| DataFusionError::Execution(format!("object store for {url}: {e}")))?
            .store;
        let mut stores = self.stores.write().unwrap_or_else(|e| e.into_inner());
        Ok(stores.entry(key).or_insert(store).clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_is_opened_once_and_local_paths_share_one_store() {
        let registry = StoreRegistry::new(S3Settings {
            endpoint: Some("http://127.0.0.1:1".into()),
            region: Some("us-east-1".into()),
            allow_http: Some(true),
            ..S3Settings::default()
        });
        let a = registry
            .get_store(&Url::parse("s3://bucket-a/x/y.parquet").unwrap())
            .unwrap();
        let again = registry
            .get_store(&Url::parse("s3://bucket-a/other/").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&a, &again), "one store per bucket");
        let b = registry
            .get_store(&Url::parse("s3://bucket-b/").unwrap())
            .unwrap();
        assert!(!Arc::ptr_eq(&a, &b), "another bucket, another store");
        let f1 = registry
            .get_store(&Url::parse("file:///tmp/a").unwrap())
            .unwrap();
        let f2 = registry
            .get_store(&Url::parse("file:///var/b").unwrap())
            .unwrap();
        assert!(Arc::ptr_eq(&f1, &f2));
        let err = registry
            .get_store(&Url::parse("ftp://host/x").unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
    }
}
