//! The optional TOML configuration file, layered under flags and
//! environment variables.
//!
//! The file's values become the flags' defaults: clap then applies its own
//! precedence (flag, then environment, then default), which is exactly
//! flag > environment > file > built-in default, with one set of parsers and
//! one list of settings. Keys are the flag names with `_` for `-`; an
//! unknown key is an error, so a typo surfaces at start. The one nested part,
//! `[namespaces.<name>]` tables, is returned for the caller to resolve.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches};

use super::ConfigError;
use super::cli::Cli;
use super::namespaces::FileNamespace;

/// Flags, environment and file, parsed: the flags and the file's namespaces.
pub fn load<I, T>(args: I) -> Result<(Cli, BTreeMap<String, FileNamespace>), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    // First pass: only to find --config (or GATEWAY_CONFIG).
    let first = Cli::command()
        .ignore_errors(true)
        .try_get_matches_from(&args)
        .ok()
        .and_then(|m| m.get_one::<std::path::PathBuf>("config").cloned());
    let mut command = Cli::command();
    let mut namespaces = BTreeMap::new();
    if let Some(path) = first {
        let table = read(&path)?;
        for (key, value) in table {
            if key == "namespaces" {
                namespaces = value
                    .try_into()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.clone(),
                        message: format!("[namespaces]: {e}"),
                    })?;
                continue;
            }
            let known = command.get_arguments().any(|a| {
                a.get_id().as_str() == key
                    && a.get_long().is_some()
                    && key != "config"
                    && key != "print_config"
                    && key != "healthcheck"
            });
            if !known {
                return Err(ConfigError::Parse {
                    path: path.clone(),
                    message: format!("unknown setting `{key}`"),
                });
            }
            let values = as_strings(&value).ok_or_else(|| ConfigError::Parse {
                path: path.clone(),
                message: format!("`{key}` must be a string, number, boolean or a list of them"),
            })?;
            command = command.mut_arg(&key, |arg| arg.default_values(values));
        }
    }
    let matches = command.try_get_matches_from(&args).map_err(ConfigError::Flags)?;
    let cli = Cli::from_arg_matches(&matches).map_err(ConfigError::Flags)?;
    Ok((cli, namespaces))
}

/// Flags as if given on the command line only: no environment variables,
/// no file. The built-in defaults.
pub fn builtin_defaults() -> Cli {
    let matches = Cli::command()
        .mut_args(|arg| arg.env(None::<&str>))
        .get_matches_from(["gateway"]);
    // Parsing an empty command line with built-in defaults cannot fail.
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| panic!("built-in defaults do not parse: {e}"))
}

fn read(path: &Path) -> Result<toml::Table, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// A TOML value as flag values.
fn as_strings(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|item| as_strings(item).and_then(|v| v.into_iter().next()))
            .collect(),
        toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}
