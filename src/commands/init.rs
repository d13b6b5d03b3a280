//! `segflow init DIR`: a ready-to-run project with a config, the built-in models as
//! editable files and the demo data.

use std::path::Path;

use include_dir::{include_dir, Dir};

use crate::error::{Error, Result};
use crate::models::BUILTIN_MODELS;

static DEMO: Dir<'static> = include_dir!("$CARGO_MANIFEST_DIR/fixtures/demo");

const CONFIG: &str = r#"# segflow project config. Paths are relative to this file.
# as_of = "2026-11-21"   # default: the latest order date in the input

[input.orders]
uri = "data/orders"
drop_status = ["cancelled"]

[input.orders.columns]       # canonical name = source column
customer_id = "client_id"
order_id    = "order_no"
order_ts    = "created_at"
revenue     = "net_eur"
quantity    = "qty"
cost        = "cogs_eur"
product_id  = "sku"
category    = "product_category"
channel     = "utm_source"
country     = "country_code"
device      = "device_type"
status      = "order_status"

[input.customers]
uri = "data/customers.parquet"
[input.customers.columns]
customer_id  = "customer_ref"
signup_ts    = "signup_at"
email_opt_in = "newsletter"

[input.marketing_spend]
uri = "data/marketing_spend.parquet"
[input.marketing_spend.columns]
channel = "source"
spend   = "spend_eur"

[output]
uri = "out"

[models]
paths   = ["models"]
builtin = false              # the copies in models/ are the project's models

[params]
active_days = 90
"#;

/// Creates the project directory.
pub fn init_project(dir: &Path) -> Result<()> {
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(|e| Error::io("read", dir, e))?
            .next()
            .is_some()
    {
        return Err(Error::ConfigValue {
            key: "init DIR".into(),
            message: format!("{} exists and is not empty", dir.display()),
        });
    }
    let models = dir.join("models");
    std::fs::create_dir_all(&models).map_err(|e| Error::io("create", &models, e))?;
    BUILTIN_MODELS
        .extract(&models)
        .map_err(|e| Error::io("write models", &models, e))?;
    let data = dir.join("data");
    std::fs::create_dir_all(&data).map_err(|e| Error::io("create", &data, e))?;
    DEMO.extract(&data)
        .map_err(|e| Error::io("write demo data", &data, e))?;
    let _ = std::fs::remove_file(data.join("segflow.toml"));
    std::fs::write(dir.join("segflow.toml"), CONFIG)
        .map_err(|e| Error::io("write", dir.join("segflow.toml"), e))?;
    std::fs::write(dir.join(".gitignore"), "out/\n").map_err(|e| Error::io("write", dir, e))?;
    Ok(())
}
