//! Reading an input: its Parquet files listed (hive partitions included) and opened, and
//! read errors that name the file.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::prelude::{DataFrame, SessionContext};
use futures::TryStreamExt;

use crate::config::InputSpec;
use crate::error::{Error, Result};
use crate::redact::redact;
use object_store::ObjectStoreExt;

use super::*;

/// Lists the Parquet files of an input and opens them as one table (hive partition
/// columns become Utf8 columns).
pub(super) async fn read_parquet_input(
    ctx: &SessionContext,
    spec: &InputSpec,
) -> Result<(DataFrame, InputFiles)> {
    let is_glob = spec.uri.contains(['*', '?', '[']);
    let mut uri = spec.uri.clone();
    if !uri.contains("://") {
        let path = std::path::Path::new(&uri);
        if !is_glob && !path.exists() {
            return Err(input_err(spec, "path does not exist"));
        }
        if path.is_dir() && !uri.ends_with('/') {
            uri.push('/');
        }
    } else if !is_glob && !uri.ends_with('/') {
        // An object store has no directories: a uri that is not an object is a prefix.
        // The store is the one the session registered for this uri.
        let url = ListingTableUrl::parse(&uri)
            .map_err(|e| input_err(spec, format!("invalid uri: {e}")))?;
        let store = ctx
            .runtime_env()
            .object_store(&url)
            .map_err(|e| input_err(spec, format!("no object store for this uri: {e}")))?;
        match store.head(url.prefix()).await {
            Ok(_) => {}
            Err(object_store::Error::NotFound { .. }) => uri.push('/'),
            Err(e) => {
                return Err(input_err(
                    spec,
                    format!("cannot read: {}", redact(&e.to_string())),
                ))
            }
        }
    }
    let url = listing_url(&uri).map_err(|e| input_err(spec, format!("invalid uri: {e}")))?;
    let state = ctx.state();
    let store = ctx
        .runtime_env()
        .object_store(&url)
        .map_err(|e| input_err(spec, format!("no object store for this uri: {e}")))?;
    let files: Vec<_> = url
        .list_all_files(&state, store.as_ref(), "parquet")
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot list files: {e}"))))?
        .try_collect()
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot list files: {e}"))))?;
    if files.is_empty() {
        return Err(input_err(
            spec,
            "the input is empty: no .parquet files found",
        ));
    }
    let options =
        ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
    let partitions = options
        .infer_partitions(&state, &url)
        .await
        .map_err(|e| input_err(spec, redact(&format!("cannot infer hive partitions: {e}"))))?;
    let options = options.with_table_partition_cols(
        partitions
            .iter()
            .map(|p| (p.clone(), DataType::Utf8))
            .collect(),
    );
    let input = InputFiles {
        base: url.object_store().as_str().to_string(),
        store,
        files,
        partitions,
        prefix: url.prefix().to_string(),
    };
    let config = match ListingTableConfig::new(url)
        .with_listing_options(options)
        .infer_schema(&state)
        .await
    {
        Ok(c) => c,
        Err(e) => {
            return Err(input
                .read_error(spec, "cannot read Parquet schema", &e)
                .await)
        }
    };
    let table = ListingTable::try_new(config).map_err(|e| input_err(spec, format!("{e}")))?;
    let df = ctx
        .read_table(Arc::new(table))
        .map_err(|e| input_err(spec, format!("{e}")))?;
    Ok((df, input))
}

/// The Parquet files of an input, to name the one that cannot be read.
pub(crate) struct InputFiles {
    /// `file:///` or `s3://bucket/`: the store's URL, which the file paths follow.
    base: String,
    store: Arc<dyn object_store::ObjectStore>,
    pub(crate) files: Vec<object_store::ObjectMeta>,
    /// Hive partition columns (inferred from the folders).
    pub(crate) partitions: Vec<String>,
    /// The listing's path prefix in its store (partition folders follow it).
    prefix: String,
}

impl InputFiles {
    /// The error for a failed read of the input: when the failure came from reading Parquet
    /// (not, say, memory), every file is read whole, in order, and the first that fails is
    /// named by its path; otherwise the input's uri is.
    pub(crate) async fn read_error(
        &self,
        spec: &InputSpec,
        doing: &str,
        e: &datafusion::error::DataFusionError,
    ) -> Error {
        use datafusion::error::DataFusionError as D;
        let from_files = matches!(
            e.find_root(),
            D::ParquetError(_)
                | D::ArrowError(..)
                | D::IoError(_)
                | D::ObjectStore(_)
                | D::External(_)
        );
        if from_files {
            if let Some((path, why)) = self.first_unreadable().await {
                return input_err(
                    spec,
                    redact(&format!(
                        "{doing}: the file {path} is corrupt or truncated: {why}"
                    )),
                );
            }
        }
        input_err(spec, redact(&format!("{doing}: {}", e.strip_backtrace())))
    }

    /// Reads each file whole (one at a time: this runs only after a read failed) and
    /// returns the first that fails, with why.
    async fn first_unreadable(&self) -> Option<(String, String)> {
        use object_store::ObjectStoreExt;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        for f in &self.files {
            let read = async {
                let bytes = self
                    .store
                    .get(&f.location)
                    .await
                    .map_err(|e| e.to_string())?
                    .bytes()
                    .await
                    .map_err(|e| e.to_string())?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
                    .and_then(|b| b.build())
                    .map_err(|e| e.to_string())?;
                for batch in reader {
                    batch.map_err(|e| e.to_string())?;
                }
                Ok::<(), String>(())
            };
            if let Err(why) = read.await {
                return Some((self.display(f), why));
            }
        }
        None
    }

    pub(crate) fn len(&self) -> usize {
        self.files.len()
    }

    /// A file's path as messages and a state's watermark show it (`/dir/file.parquet`,
    /// `s3://bucket/key`).
    pub(crate) fn display(&self, f: &object_store::ObjectMeta) -> String {
        let base = match self.base.as_str() {
            "file:///" => "/",
            other => other,
        };
        format!("{base}{}", f.location)
    }

    /// The files as a state's watermark records them.
    pub(crate) fn watermark(&self) -> Vec<crate::publish::manifest::InputFile> {
        self.files
            .iter()
            .map(|f| crate::publish::manifest::InputFile {
                path: self.display(f),
                size: f.size,
                modified: f.last_modified,
                etag: f.e_tag.clone(),
            })
            .collect()
    }

    /// One file of the input as a table with the whole input's columns (`schema`, hive
    /// partition columns last): the file's own columns, then its partition values parsed
    /// from its folders.
    pub(crate) fn read_one(
        &self,
        ctx: &SessionContext,
        file: &object_store::ObjectMeta,
        schema: &datafusion::arrow::datatypes::Schema,
    ) -> datafusion::error::Result<DataFrame> {
        use datafusion::arrow::datatypes::{Field, Schema};
        use datafusion::common::{Column, ScalarValue};
        use datafusion::logical_expr::{lit, Expr};
        let url = ListingTableUrl::parse(format!("{}{}", self.base, file.location))?;
        let file_schema = Schema::new(
            schema
                .fields()
                .iter()
                .filter(|f| !self.partitions.contains(f.name()))
                .map(|f| f.as_ref().clone())
                .collect::<Vec<Field>>(),
        );
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new(url)
            .with_listing_options(options)
            .with_schema(Arc::new(file_schema));
        let df = ctx.read_table(Arc::new(ListingTable::try_new(config)?))?;
        let location = file.location.as_ref();
        let below = location
            .strip_prefix(self.prefix.trim_end_matches('/'))
            .unwrap_or(location);
        let value = |name: &str| {
            below.split('/').find_map(|segment| {
                segment
                    .strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('='))
                    .map(str::to_string)
            })
        };
        let columns: Vec<_> = schema
            .fields()
            .iter()
            .map(|f| match self.partitions.contains(f.name()) {
                true => lit(ScalarValue::Utf8(value(f.name()))).alias(f.name()),
                false => Expr::Column(Column::new_unqualified(f.name())),
            })
            .collect();
        df.select(columns)
    }
}

/// A listing URL. DataFusion splits globs off local paths only; for an object-store URL
/// the part from the first directory holding a glob character on is the pattern, matched
/// as DataFusion matches local globs (against the file name; `col=value` folders of hive
/// partitions are always allowed), e.g. `s3://bucket/orders/*.parquet`.
pub(super) fn listing_url(uri: &str) -> datafusion::error::Result<ListingTableUrl> {
    let Some(glob_at) = uri.find(['*', '?', '[']).filter(|_| uri.contains("://")) else {
        return ListingTableUrl::parse(uri);
    };
    let cut = uri[..glob_at].rfind('/').map(|i| i + 1).unwrap_or(glob_at);
    let (prefix, pattern) = uri.split_at(cut);
    let url = url::Url::parse(prefix)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    let pattern = glob::Pattern::new(pattern)
        .map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
    ListingTableUrl::try_new(url, Some(pattern))
}
