//! `SEGFLOW_*` environment overrides, applied over the config file (flags apply over them).

use std::path::Path;

use super::*;

/// Applies the `SEGFLOW_*` variables of `env` to `settings` (and the output location, which
/// may still be unset); returns their text for the config hash. An unknown variable, or
/// one naming an input the config does not have, is an error naming it.
pub(super) fn apply(
    env: &[(String, String)],
    settings: &mut Settings,
    output: &mut Option<String>,
    cwd: &Path,
    path: &Path,
) -> Result<String> {
    let mut hash_extra = String::new();
    for (key, value) in env {
        let name = &key["SEGFLOW_".len()..];
        match name {
            "AS_OF" => settings.as_of = Some(parse_date(key, value)?),
            "OUTPUT" | "OUTPUT_URI" => *output = Some(resolve_uri(value, cwd)),
            "OUTPUT_FORMAT" => settings.tables.format = TableFormat::parse(key, value)?,
            "MEMORY_LIMIT" => settings.memory_limit = Some(parse_size(key, value)?),
            "TIMEZONE" => settings.timezone = Some(parse_tz(key, value)?),
            // Combined with the file's `[runtime]` by `Settings::load`.
            "RUNTIME_ENGINE" | "RUNTIME_SCHEDULER" => {}
            // Read by the CLI itself.
            "CONFIG" | "LOG_FORMAT" | "LOG" | "FAILPOINTS" => continue,
            // Read with `[privacy]`; never part of the config hash.
            "PSEUDONYM_KEY" => continue,
            _ if name.starts_with("PARAM_") => {
                let param = name["PARAM_".len()..].to_lowercase();
                settings.params.insert(param, ParamValue::Text(value.clone()));
            }
            _ if name.starts_with("INPUT_") && name.ends_with("_URI") => {
                if name.len() <= "INPUT_".len() + "_URI".len() {
                    return Err(Error::ConfigValue {
                        key: key.clone(),
                        message: "names no input: use SEGFLOW_INPUT_<NAME>_URI, e.g. SEGFLOW_INPUT_ORDERS_URI".into(),
                    });
                }
                let input = name["INPUT_".len()..name.len() - "_URI".len()].to_lowercase();
                match settings.inputs.get_mut(&input) {
                    Some(spec) => spec.uri = resolve_uri(value, cwd),
                    None => {
                        return Err(Error::ConfigValue {
                            key: key.clone(),
                            message: format!(
                                "input `{input}` is not configured in {}",
                                path.display()
                            ),
                        })
                    }
                }
            }
            _ => {
                return Err(Error::ConfigValue {
                    key: key.clone(),
                    message: "unknown SEGFLOW_* environment variable (known: SEGFLOW_AS_OF, SEGFLOW_OUTPUT, SEGFLOW_OUTPUT_FORMAT, SEGFLOW_MEMORY_LIMIT, SEGFLOW_TIMEZONE, SEGFLOW_RUNTIME_ENGINE, SEGFLOW_RUNTIME_SCHEDULER, SEGFLOW_PARAM_<NAME>, SEGFLOW_INPUT_<NAME>_URI, SEGFLOW_CONFIG, SEGFLOW_LOG_FORMAT, SEGFLOW_PSEUDONYM_KEY)".into(),
                })
            }
        }
        hash_extra.push_str(&format!("{key}={value}\n"));
    }
    Ok(hash_extra)
}
