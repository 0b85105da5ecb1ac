//! Configuration: command-line flags, `GATEWAY_*` environment variables and
//! an optional TOML file, merged into one [`Config`].
//!
//! Precedence is flag > environment > file > built-in default. clap resolves
//! the first two; the file fills what neither gave. Every setting is
//! documented in `gateway --help` and docs/operations.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::namespaces::{FileNamespace, Namespace, Namespaces};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// The resolved configuration of one gateway node.
#[derive(Debug, Clone, Serialize)]
pub struct Config {
    /// Address the HTTP and WebSocket server listens on.
    pub listen: SocketAddr,
    /// This node's id, reported to clients and used in client ids.
    pub node_id: String,
    /// Keys accepted by the HTTP publish API. Empty means the API is open.
    #[serde(serialize_with = "redact_keys")]
    pub api_keys: Vec<String>,
    /// Interval of server WebSocket pings; a client silent for twice this
    /// long is disconnected.
    #[serde(with = "humantime_serde_compat")]
    pub ping_interval: Duration,
    /// Window over which clients are disconnected on shutdown.
    #[serde(with = "humantime_serde_compat")]
    pub drain: Duration,
    /// Time a new TCP connection has to send its complete HTTP request head.
    #[serde(with = "humantime_serde_compat")]
    pub handshake_timeout: Duration,
    /// Largest inbound WebSocket message (and frame), in bytes.
    pub max_message_size: usize,
    /// Largest publication `data`, in bytes, from any source.
    pub max_publication_size: usize,
    /// Largest HTTP request body, in bytes.
    pub max_body_size: usize,
    /// Bytes queued for one client before it is disconnected as too slow.
    pub outbound_queue_bytes: usize,
    /// Messages queued for one client before it is disconnected as too slow.
    pub outbound_queue_messages: usize,
    /// Redis URL; without it the node runs on the embedded broker.
    #[serde(serialize_with = "redact_url")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis name, so deployments can share one Redis.
    pub redis_prefix: String,
    /// PEM file of CA certificates to trust for `rediss://` (else the system's).
    pub redis_ca_file: Option<PathBuf>,
    pub log_format: LogFormat,
    /// `tracing` filter directive, such as `info` or `gateway=debug`.
    pub log_level: String,
    /// History settings, global and per namespace (last: TOML tables go last).
    #[serde(flatten)]
    pub namespaces: Namespaces,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([0, 0, 0, 0], 8080)),
            node_id: default_node_id(),
            api_keys: Vec::new(),
            ping_interval: Duration::from_secs(25),
            drain: Duration::from_secs(10),
            handshake_timeout: Duration::from_secs(10),
            max_message_size: 64 * 1024,
            max_publication_size: 64 * 1024,
            max_body_size: 64 * 1024,
            outbound_queue_bytes: 1024 * 1024,
            outbound_queue_messages: 4096,
            redis_url: None,
            redis_prefix: String::from("gw"),
            redis_ca_file: None,
            log_format: LogFormat::Text,
            log_level: String::from("info"),
            namespaces: Namespaces {
                global: Namespace {
                    history_size: 100,
                    history_ttl: Duration::from_secs(600),
                },
                named: Default::default(),
            },
        }
    }
}

/// Command-line flags. Each is also read from `GATEWAY_<NAME>`.
#[derive(Debug, Parser, Default)]
#[command(
    name = "gateway",
    version,
    about = "Horizontally scaled WebSocket pub/sub gateway",
    long_about = "Horizontally scaled WebSocket pub/sub gateway.\n\n\
        Clients subscribe over WebSocket at /ws; backends publish with POST /api/publish. \
        Every flag can also be set with an environment variable GATEWAY_<NAME> or in the TOML \
        file given by --config (keys are the flag names with '_' for '-'). \
        Flags override environment variables, which override the file."
)]
pub struct Cli {
    /// TOML configuration file.
    #[arg(long, env = "GATEWAY_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Address to serve HTTP and WebSocket on [default: 0.0.0.0:8080].
    #[arg(long, env = "GATEWAY_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,

    /// Node id reported to clients [default: hostname plus a random suffix].
    #[arg(long, env = "GATEWAY_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// API key accepted by the HTTP publish API as `Authorization: Bearer <key>`.
    /// Repeat the flag (or separate with commas in the environment) for several keys.
    /// Without any key the API is open to anyone who can reach it.
    #[arg(
        long = "api-key",
        env = "GATEWAY_API_KEY",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub api_keys: Vec<String>,

    /// Interval between server pings, such as `25s` [default: 25s]. A client that sends
    /// nothing (not even a pong) for twice this long is disconnected.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", value_name = "DURATION", value_parser = parse_duration)]
    pub ping_interval: Option<Duration>,

    /// Seconds over which clients are disconnected (close 1012) on SIGTERM [default: 10].
    #[arg(long, env = "GATEWAY_DRAIN_SECONDS", value_name = "SECONDS")]
    pub drain_seconds: Option<u64>,

    /// Time a new connection has to send its HTTP request head [default: 10s].
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration)]
    pub handshake_timeout: Option<Duration>,

    /// Largest inbound WebSocket message, such as `64KiB`; larger closes with 1009 [default: 64KiB].
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE", value_name = "BYTES", value_parser = parse_size)]
    pub max_message_size: Option<usize>,

    /// Largest publication data from any source; larger is refused with `too_large` [default: 64KiB].
    #[arg(long, env = "GATEWAY_MAX_PUBLICATION_SIZE", value_name = "BYTES", value_parser = parse_size)]
    pub max_publication_size: Option<usize>,

    /// Largest HTTP request body; larger is answered 413 [default: 64KiB].
    #[arg(long, env = "GATEWAY_MAX_BODY_SIZE", value_name = "BYTES", value_parser = parse_size)]
    pub max_body_size: Option<usize>,

    /// Bytes queued for one client before it is disconnected as a slow consumer (close 4008)
    /// [default: 1MiB].
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", value_name = "BYTES", value_parser = parse_size)]
    pub outbound_queue_bytes: Option<usize>,

    /// Messages queued for one client before it is disconnected as a slow consumer
    /// [default: 4096].
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_MESSAGES", value_name = "COUNT")]
    pub outbound_queue_messages: Option<usize>,

    /// Publications kept per channel for recovery; 0 keeps none (offsets are still assigned).
    /// `[namespaces.<name>]` tables in the config file override it per namespace [default: 100].
    #[arg(long, env = "GATEWAY_HISTORY_SIZE", value_name = "COUNT")]
    pub history_size: Option<usize>,

    /// How long a channel's history and offsets survive without publications; after that the
    /// channel starts a new epoch [default: 10m].
    #[arg(long, env = "GATEWAY_HISTORY_TTL", value_name = "DURATION", value_parser = parse_duration)]
    pub history_ttl: Option<Duration>,

    /// Redis URL (`redis://[user:password@]host:port[/db]`, or `rediss://` for TLS). With it, nodes
    /// share publications through Redis Pub/Sub; without it the node uses its embedded broker.
    #[arg(long, env = "GATEWAY_REDIS_URL", value_name = "URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis channel and key, so several deployments can share one Redis
    /// [default: gw].
    #[arg(long, env = "GATEWAY_REDIS_PREFIX", value_name = "PREFIX")]
    pub redis_prefix: Option<String>,

    /// PEM file with the CA certificate(s) that signed the Redis server's certificate, for
    /// `rediss://` with a private CA [default: the system's trusted roots].
    #[arg(long, env = "GATEWAY_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// Log format [default: text].
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,

    /// Log filter, such as `info` or `gateway=debug,info` [default: info].
    #[arg(long, env = "GATEWAY_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,

    /// Print the resolved configuration as TOML (API keys redacted) and exit.
    #[arg(long)]
    pub print_config: bool,
}

/// The TOML file: the same settings as the flags, `snake_case`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<SocketAddr>,
    node_id: Option<String>,
    api_keys: Option<Vec<String>>,
    ping_interval: Option<DurationValue>,
    drain_seconds: Option<u64>,
    handshake_timeout: Option<DurationValue>,
    max_message_size: Option<SizeValue>,
    max_publication_size: Option<SizeValue>,
    max_body_size: Option<SizeValue>,
    outbound_queue_bytes: Option<SizeValue>,
    outbound_queue_messages: Option<usize>,
    redis_url: Option<String>,
    redis_prefix: Option<String>,
    redis_ca_file: Option<PathBuf>,
    log_format: Option<LogFormat>,
    log_level: Option<String>,
    history_size: Option<usize>,
    history_ttl: Option<DurationValue>,
    namespaces: Option<BTreeMap<String, FileNamespace>>,
}

/// A duration in the file: `"25s"` or a number of seconds.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Seconds(u64),
    Text(String),
}

/// A size in the file: `"64KiB"` or a number of bytes.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(usize),
    Text(String),
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

impl Config {
    /// Resolves flags (already parsed, environment included) and the file they name.
    pub fn from_cli(cli: &Cli) -> Result<Config, ConfigError> {
        let file = match &cli.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let defaults = Config::default();
        let duration = |name, v: Option<DurationValue>| match v {
            None => Ok(None),
            Some(DurationValue::Seconds(s)) => Ok(Some(Duration::from_secs(s))),
            Some(DurationValue::Text(t)) => parse_duration(&t)
                .map(Some)
                .map_err(|message| invalid(name, message)),
        };
        let size = |name, v: Option<SizeValue>| match v {
            None => Ok(None),
            Some(SizeValue::Bytes(b)) => Ok(Some(b)),
            Some(SizeValue::Text(t)) => parse_size(&t).map(Some).map_err(|message| invalid(name, message)),
        };
        let config = Config {
            listen: cli.listen.or(file.listen).unwrap_or(defaults.listen),
            node_id: cli.node_id.clone().or(file.node_id).unwrap_or(defaults.node_id),
            api_keys: if cli.api_keys.is_empty() {
                file.api_keys.unwrap_or_default()
            } else {
                cli.api_keys.clone()
            },
            ping_interval: cli
                .ping_interval
                .or(duration("ping_interval", file.ping_interval)?)
                .unwrap_or(defaults.ping_interval),
            drain: cli
                .drain_seconds
                .or(file.drain_seconds)
                .map(Duration::from_secs)
                .unwrap_or(defaults.drain),
            handshake_timeout: cli
                .handshake_timeout
                .or(duration("handshake_timeout", file.handshake_timeout)?)
                .unwrap_or(defaults.handshake_timeout),
            max_message_size: cli
                .max_message_size
                .or(size("max_message_size", file.max_message_size)?)
                .unwrap_or(defaults.max_message_size),
            max_publication_size: cli
                .max_publication_size
                .or(size("max_publication_size", file.max_publication_size)?)
                .unwrap_or(defaults.max_publication_size),
            max_body_size: cli
                .max_body_size
                .or(size("max_body_size", file.max_body_size)?)
                .unwrap_or(defaults.max_body_size),
            outbound_queue_bytes: cli
                .outbound_queue_bytes
                .or(size("outbound_queue_bytes", file.outbound_queue_bytes)?)
                .unwrap_or(defaults.outbound_queue_bytes),
            outbound_queue_messages: cli
                .outbound_queue_messages
                .or(file.outbound_queue_messages)
                .unwrap_or(defaults.outbound_queue_messages),
            redis_url: cli
                .redis_url
                .clone()
                .or(file.redis_url)
                .filter(|u| !u.trim().is_empty()),
            redis_prefix: cli
                .redis_prefix
                .clone()
                .or(file.redis_prefix)
                .unwrap_or(defaults.redis_prefix),
            redis_ca_file: cli.redis_ca_file.clone().or(file.redis_ca_file),
            log_format: cli.log_format.or(file.log_format).unwrap_or(defaults.log_format),
            log_level: cli
                .log_level
                .clone()
                .or(file.log_level)
                .unwrap_or(defaults.log_level),
            namespaces: Namespaces::resolve(
                Namespace {
                    history_size: cli
                        .history_size
                        .or(file.history_size)
                        .unwrap_or(defaults.namespaces.global.history_size),
                    history_ttl: cli
                        .history_ttl
                        .or(duration("history_ttl", file.history_ttl)?)
                        .unwrap_or(defaults.namespaces.global.history_ttl),
                },
                file.namespaces.unwrap_or_default(),
                parse_duration,
            )
            .map_err(|m| invalid("namespaces", m))?,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_id(&self.node_id).map_err(|m| invalid("node_id", m))?;
        if self.api_keys.iter().any(|k| k.trim().is_empty()) {
            return Err(invalid("api_key", "API keys must not be empty".into()));
        }
        if self.ping_interval < Duration::from_millis(100) || self.ping_interval > Duration::from_secs(3600) {
            return Err(invalid("ping_interval", "must be between 100ms and 1h".into()));
        }
        if self.drain > Duration::from_secs(3600) {
            return Err(invalid("drain_seconds", "must be at most 3600".into()));
        }
        if self.namespaces.global.history_ttl < Duration::from_secs(1) {
            return Err(invalid("history_ttl", "must be at least 1s".into()));
        }
        // One publication must fit a client's queue, or every subscriber of
        // a large publication would be closed as a slow consumer.
        if self.outbound_queue_bytes < self.max_publication_size + 1024 {
            return Err(invalid(
                "outbound_queue_bytes",
                format!(
                    "must be at least max_publication_size + 1KiB ({} bytes)",
                    self.max_publication_size + 1024
                ),
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(invalid("handshake_timeout", "must be more than zero".into()));
        }
        for (name, value, min) in [
            ("max_message_size", self.max_message_size, 256),
            ("max_publication_size", self.max_publication_size, 1),
            ("max_body_size", self.max_body_size, 256),
            ("outbound_queue_bytes", self.outbound_queue_bytes, 1024),
            ("outbound_queue_messages", self.outbound_queue_messages, 16),
        ] {
            if value < min {
                return Err(invalid(name, format!("must be at least {min}")));
            }
        }
        broker_adapter::redis::validate_prefix(&self.redis_prefix).map_err(|m| invalid("redis_prefix", m))?;
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid(
                "redis_url",
                "must start with redis:// or rediss:// (TLS)".into(),
            ));
        }
        if let Some(ca) = &self.redis_ca_file {
            if !self
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                return Err(invalid(
                    "redis_ca_file",
                    "only applies to a rediss:// Redis URL".into(),
                ));
            }
            if let Err(e) = std::fs::metadata(ca) {
                return Err(invalid(
                    "redis_ca_file",
                    format!("cannot read {}: {e}", ca.display()),
                ));
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", e.to_string()))?;
        Ok(())
    }

    /// The configuration as TOML, API keys redacted (for `--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn invalid(name: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { name, message }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        path: path.to_owned(),
        message: e.to_string(),
    })
}

/// Node ids appear in client ids and (later) broker channel names, so they
/// are kept to a conservative character set.
fn validate_node_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters".into());
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!("contains {c:?}; allowed are A-Z a-z 0-9 - _ ."));
    }
    Ok(())
}

/// Hostname plus a random suffix, so two processes on one host differ.
fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        .take(48)
        .collect();
    let host = if host.is_empty() {
        String::from("node")
    } else {
        host
    };
    let suffix: String = (0..6)
        .map(|_| fastrand::alphanumeric().to_ascii_lowercase())
        .collect();
    format!("{host}-{suffix}")
}

/// Parses `25s`, `500ms`, `1m 30s` (humantime) or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    humantime::parse_duration(text)
        .map_err(|e| format!("{text:?} is not a duration ({e}); use e.g. 25s or 500ms"))
}

/// Parses `65536`, `64KiB`, `64kb`, `1MiB`, `1m`: binary units, case-insensitive.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{text:?} is not a size; use e.g. 65536, 64KiB or 1MiB"))?;
    let multiplier = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        "g" | "gb" | "gib" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit {other:?}; use B, KiB, MiB or GiB")),
    };
    number
        .checked_mul(multiplier)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Shows a Redis URL without its password.
pub fn redacted_url(url: &str) -> String {
    match (url.split_once("://"), url.rfind('@')) {
        (Some((scheme, rest)), Some(at)) if at > scheme.len() + 3 => {
            let userinfo = &rest[..at - scheme.len() - 3];
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}://{user}:<redacted>@{}", &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

fn redact_url<S: serde::Serializer>(url: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
    match url {
        Some(url) => s.serialize_str(&redacted_url(url)),
        None => s.serialize_none(),
    }
}

fn redact_keys<S: serde::Serializer>(keys: &[String], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(keys.iter().map(|_| "<redacted>"))
}

/// Serializes durations as humantime strings in `--print-config` output.
mod humantime_serde_compat {
    use std::time::Duration;
    pub fn serialize<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write as _;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("gateway").chain(args.iter().copied())).unwrap()
    }

    fn temp_file(contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("gateway-config-{}.toml", fastrand::u64(..)));
        let mut f = std::fs::File::create(&path).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        path
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let config = Config::from_cli(&cli(&[])).unwrap();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.ping_interval, Duration::from_secs(25));
        assert_eq!(config.drain, Duration::from_secs(10));
        assert_eq!(config.max_message_size, 65536);
        assert!(config.api_keys.is_empty());
        assert!(validate_node_id(&config.node_id).is_ok(), "{}", config.node_id);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let path = temp_file(
            "listen = \"127.0.0.1:9000\"\nnode_id = \"from-file\"\nping_interval = \"5s\"\n\
             drain_seconds = 3\nmax_message_size = \"1KiB\"\napi_keys = [\"k1\", \"k2\"]\n",
        );
        let file_only = Config::from_cli(&cli(&["--config", path.to_str().unwrap()])).unwrap();
        assert_eq!(file_only.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(file_only.node_id, "from-file");
        assert_eq!(file_only.ping_interval, Duration::from_secs(5));
        assert_eq!(file_only.drain, Duration::from_secs(3));
        assert_eq!(file_only.max_message_size, 1024);
        assert_eq!(file_only.api_keys, ["k1", "k2"]);

        let flags = Config::from_cli(&cli(&[
            "--config",
            path.to_str().unwrap(),
            "--node-id",
            "from-flag",
            "--ping-interval",
            "750ms",
            "--api-key",
            "k3",
        ]))
        .unwrap();
        assert_eq!(flags.node_id, "from-flag");
        assert_eq!(flags.ping_interval, Duration::from_millis(750));
        assert_eq!(flags.api_keys, ["k3"]);
        assert_eq!(flags.listen, "127.0.0.1:9000".parse().unwrap());
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn bad_settings_are_reported_by_name() {
        let err = Config::from_cli(&cli(&["--node-id", "has space"])).unwrap_err();
        assert!(err.to_string().contains("node_id"), "{err}");
        let err = Config::from_cli(&cli(&["--ping-interval", "1ms"])).unwrap_err();
        assert!(err.to_string().contains("ping_interval"), "{err}");

        let path = temp_file("listne = \"x\"\n");
        let err = Config::from_cli(&cli(&["--config", path.to_str().unwrap()])).unwrap_err();
        assert!(err.to_string().contains("listne"), "{err}");
        std::fs::remove_file(path).ok();

        assert!(Cli::try_parse_from(["gateway", "--max-message-size", "12XB"]).is_err());
        assert!(Cli::try_parse_from(["gateway", "--ping-interval", "soon"]).is_err());
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("65536"), Ok(65536));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("64kb"), Ok(65536));
        assert_eq!(parse_size("1 MiB"), Ok(1 << 20));
        assert!(parse_size("KiB").is_err());
        assert!(parse_size("99999999999999999999GiB").is_err());
        assert_eq!(parse_duration("10"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("1m 30s"), Ok(Duration::from_secs(90)));
    }

    #[test]
    fn redis_settings_are_checked_and_passwords_hidden() {
        let config = Config::from_cli(&cli(&["--redis-url", "redis://:s3cret@localhost:6380/2"])).unwrap();
        assert_eq!(config.redis_prefix, "gw");
        let text = config.to_toml();
        assert!(!text.contains("s3cret"), "{text}");
        assert!(
            text.contains("redis_url = \"redis://:<redacted>@localhost:6380/2\""),
            "{text}"
        );
        assert_eq!(
            redacted_url("rediss://user:pw@h:1"),
            "rediss://user:<redacted>@h:1"
        );
        assert_eq!(redacted_url("redis://h:1"), "redis://h:1");
        assert!(Config::from_cli(&cli(&["--redis-url", "http://x"])).is_err());
        assert!(Config::from_cli(&cli(&["--redis-prefix", "has space"])).is_err());
    }

    #[test]
    fn printed_config_redacts_keys() {
        let config = Config::from_cli(&cli(&["--api-key", "secret-key"])).unwrap();
        let text = config.to_toml();
        assert!(!text.contains("secret-key"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
        assert!(text.contains("ping_interval = \"25s\""), "{text}");
    }
}
