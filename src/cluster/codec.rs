//! How segflow's own table providers travel to the scheduler. DataFusion's plan format
//! carries listing tables and views; two tables of a run are neither: the internal tables
//! bucketed by customer ([`BucketedTable`]) and the empty table of an input a project does
//! not have (a `MemTable` without rows). Everything else goes to Ballista's codec, which
//! must keep handling its own nodes and the listing tables' file formats.

use std::sync::Arc;

use ballista_core::serde::BallistaLogicalExtensionCodec;
use datafusion::arrow::datatypes::{DataType, Schema, SchemaRef};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::file_format::FileFormatFactory;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Extension, LogicalPlan};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use serde::{Deserialize, Serialize};

use crate::ext::buckets::{BucketedTable, Buckets};

/// The first byte of an encoded table: which kind it is.
const BUCKETED: u8 = 1;
const EMPTY: u8 = 2;

/// A bucketed internal table as it travels: its directory (or, a kept state layer, its
/// files), hive partition columns (read back as strings) and buckets; the schema travels
/// beside it in the plan.
#[derive(Serialize, Deserialize)]
struct BucketedSpec {
    urls: Vec<String>,
    partition_cols: Vec<String>,
    count: usize,
    hashed: String,
}

/// segflow's logical codec: its tables, then Ballista's. Every process of a cluster (the
/// run's session, the scheduler) uses it.
#[derive(Debug, Default)]
pub struct SegflowLogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

fn not_carried(what: String) -> DataFusionError {
    DataFusionError::NotImplemented(format!("{what} cannot be sent to a Ballista cluster"))
}

fn encode_bucketed(table: &BucketedTable, buf: &mut Vec<u8>) -> Result<()> {
    let Some(listing) = table.inner.downcast_ref::<ListingTable>() else {
        return Err(not_carried(
            "a bucketed table that is not a listing of files".into(),
        ));
    };
    let spec = BucketedSpec {
        urls: listing
            .table_paths()
            .iter()
            .map(|u| u.as_str().to_string())
            .collect(),
        partition_cols: listing
            .options()
            .table_partition_cols
            .iter()
            .map(|(name, _)| name.clone())
            .collect(),
        count: table.buckets.count,
        hashed: table.buckets.hashed.to_string(),
    };
    buf.push(BUCKETED);
    serde_json::to_writer(buf, &spec).map_err(|e| DataFusionError::External(Box::new(e)))
}

fn decode_bucketed(buf: &[u8], schema: SchemaRef) -> Result<Arc<dyn TableProvider>> {
    let spec: BucketedSpec =
        serde_json::from_slice(buf).map_err(|e| DataFusionError::External(Box::new(e)))?;
    let hashed: DataType = spec.hashed.parse()?;
    // The schema in the plan is the table's: the files' columns, then the partition columns.
    let files = Schema::new(
        schema
            .fields()
            .iter()
            .filter(|f| !spec.partition_cols.contains(f.name()))
            .cloned()
            .collect::<Vec<_>>(),
    );
    let options = ListingOptions::new(Arc::new(ParquetFormat::default()))
        .with_file_extension(".parquet")
        .with_table_partition_cols(
            spec.partition_cols
                .iter()
                .map(|p| (p.clone(), DataType::Utf8))
                .collect(),
        );
    let urls = spec
        .urls
        .iter()
        .map(ListingTableUrl::parse)
        .collect::<Result<Vec<_>>>()?;
    let config = ListingTableConfig::new_with_multi_paths(urls)
        .with_listing_options(options)
        .with_schema(Arc::new(files));
    Ok(Arc::new(BucketedTable {
        inner: Arc::new(ListingTable::try_new(config)?),
        buckets: Buckets {
            count: spec.count,
            hashed,
        },
    }))
}

impl LogicalExtensionCodec for SegflowLogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(&self, node: &Extension, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        match buf.split_first() {
            Some((&BUCKETED, spec)) => decode_bucketed(spec, schema),
            Some((&EMPTY, _)) => Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?)),
            _ => self
                .ballista
                .try_decode_table_provider(buf, table_ref, schema, ctx),
        }
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(table) = node.downcast_ref::<BucketedTable>() {
            return encode_bucketed(table, buf);
        }
        if let Some(table) = node.downcast_ref::<MemTable>() {
            let empty = table.batches.iter().all(|partition| {
                partition
                    .try_read()
                    .is_ok_and(|batches| batches.iter().all(|b| b.num_rows() == 0))
            });
            if !empty {
                return Err(not_carried(format!(
                    "in-memory table {table_ref} with rows"
                )));
            }
            buf.push(EMPTY);
            return Ok(());
        }
        self.ballista
            .try_encode_table_provider(table_ref, node, buf)
            .map_err(|e| not_carried(format!("table {table_ref}: {e}")))
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn FileFormatFactory>,
    ) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}
