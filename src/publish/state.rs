//! The kept incremental state of a snapshot, `_state/as_of=D/<model>/`: its manifest entry
//! from what a run staged, and its rows read back by the next run.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::NaiveDate;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::prelude::{DataFrame, SessionContext};

use crate::publish::layout::STATE;
use crate::publish::manifest::{StateEntry, StateTable, Watermark};
use crate::publish::stage::StagedTable;
use crate::publish::{Manifest, Output};

impl Output {
    /// The manifest entry of the state `run_id` staged for `as_of` (`tables`: each
    /// incremental model's staged rows), and its staged files relative to the state's
    /// staging folder (for the commit, which publishes them as folder `_state`).
    pub fn state_entry(
        &self,
        run_id: &str,
        as_of: NaiveDate,
        tables: &[(&str, &StagedTable)],
        hash: String,
        watermark: Watermark,
    ) -> (StateEntry, Vec<String>) {
        let mut entry = StateEntry {
            path: format!("{STATE}/as_of={as_of}"),
            files: Vec::new(),
            bytes: 0,
            tables: BTreeMap::new(),
            hash,
            watermark,
        };
        let mut staged = Vec::new();
        for (name, table) in tables {
            let rel: Vec<String> = table.files.iter().map(|f| format!("{name}/{f}")).collect();
            let published: Vec<String> = rel
                .iter()
                .map(|f| self.published_file(run_id, STATE, as_of, f))
                .collect();
            entry.files.extend(published.iter().cloned());
            entry.bytes += table.bytes;
            entry.tables.insert(
                name.to_string(),
                StateTable {
                    rows: table.rows,
                    files: published,
                    buckets: table.buckets.as_ref().map(|b| b.count),
                },
            );
            staged.extend(rel);
        }
        (entry, staged)
    }

    /// The rows of incremental model `name` that snapshot `base` keeps.
    pub async fn open_state(
        &self,
        ctx: &SessionContext,
        base: &Manifest,
        name: &str,
    ) -> DfResult<DataFrame> {
        let table = base
            .state
            .as_ref()
            .and_then(|s| s.tables.get(name))
            .ok_or_else(|| {
                DataFusionError::Plan(format!(
                    "the state of snapshot {} keeps no rows of model {name}",
                    base.as_of
                ))
            })?;
        let urls = table
            .files
            .iter()
            .map(|f| {
                let url = self.loc.dir_url(f);
                ListingTableUrl::parse(url.trim_end_matches('/'))
            })
            .collect::<DfResult<Vec<_>>>()?;
        let options =
            ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
        let config = ListingTableConfig::new_with_multi_paths(urls)
            .with_listing_options(options)
            .infer_schema(&ctx.state())
            .await?;
        ctx.read_table(Arc::new(ListingTable::try_new(config)?))
    }
}
