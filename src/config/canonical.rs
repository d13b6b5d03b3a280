//! The canonical data model: the inputs segflow knows and their columns, which the
//! `[inputs.*.columns]` mappings name and the `orders` view exposes.

use datafusion::arrow::datatypes::{DataType, TimeUnit};

/// The type of every canonical timestamp: microseconds, UTC.
pub fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Canonical columns of each input with their types; `true` = required.
pub fn canonical_columns(input: &str) -> Vec<(&'static str, DataType, bool)> {
    match input {
        "orders" => vec![
            ("customer_id", DataType::Utf8, true),
            ("order_id", DataType::Utf8, false),
            ("order_ts", ts_type(), true),
            ("revenue", DataType::Float64, true),
            ("quantity", DataType::Int64, false),
            ("cost", DataType::Float64, false),
            ("product_id", DataType::Utf8, false),
            ("category", DataType::Utf8, false),
            ("channel", DataType::Utf8, false),
            ("country", DataType::Utf8, false),
            ("region", DataType::Utf8, false),
            ("device", DataType::Utf8, false),
            ("status", DataType::Utf8, false),
        ],
        "customers" => vec![
            ("customer_id", DataType::Utf8, true),
            ("signup_ts", ts_type(), false),
            ("birth_year", DataType::Int64, false),
            ("gender", DataType::Utf8, false),
            ("email_opt_in", DataType::Boolean, false),
            // Consent to be reached through ads platforms (an audience's `consent`).
            ("ads_opt_in", DataType::Boolean, false),
            // Contact data: personal, never published unless `[privacy] publish_pii`
            // lists it; emails leave only in consented email audiences.
            ("email", DataType::Utf8, false),
            ("name", DataType::Utf8, false),
            ("phone", DataType::Utf8, false),
        ],
        "marketing_spend" => vec![
            ("month", DataType::Date32, true),
            ("channel", DataType::Utf8, true),
            ("spend", DataType::Float64, true),
        ],
        _ => vec![],
    }
}

/// The canonical column names of an input, or None for an unknown input name.
pub fn canonical_column_names(input: &str) -> Option<Vec<&'static str>> {
    let names: Vec<&'static str> = canonical_columns(input)
        .into_iter()
        .map(|(n, _, _)| n)
        .collect();
    (!names.is_empty()).then_some(names)
}
