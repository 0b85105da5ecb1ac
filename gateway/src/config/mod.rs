//! Configuration: command-line flags, `GATEWAY_*` environment variables and
//! an optional TOML file, resolved into one [`Config`].
//!
//! Precedence is flag > environment > file > built-in default. `cli.rs`
//! lists every setting once (flag, variable, default, help); `file.rs`
//! layers the file under them; this module resolves and checks the result.
//! docs/operations.md documents every setting.

mod api_key;
mod cli;
mod file;
mod values;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use api_key::{ApiKey, Scope};
pub use cli::{Cli, LogFormat};
pub use values::print::duration as print_duration;
pub use values::{parse_duration, parse_fetch_url, parse_size, parse_switch};

pub mod namespaces;

pub use namespaces::{Namespace, Namespaces};
use values::print;

/// The resolved configuration of one gateway node. `--print-config` prints
/// it in the config file's own format.
#[derive(Clone, Serialize)]
pub struct Config {
    pub listen: SocketAddr,
    /// Probes and metrics on their own listener (and not on `listen`).
    pub admin_listen: Option<SocketAddr>,
    /// The gRPC server API (`--grpc-listen`), off without it.
    pub grpc_listen: Option<SocketAddr>,
    pub node_id: String,
    #[serde(rename = "api_key", serialize_with = "print::secrets")]
    pub api_keys: Vec<ApiKey>,
    /// The API may be served without a key while clients need tokens.
    pub allow_open_api: bool,
    /// The production profile: the fail-open defaults must be overridden.
    pub production: bool,
    #[serde(serialize_with = "print::duration")]
    pub ping_interval: Duration,
    #[serde(rename = "drain_seconds", serialize_with = "as_seconds")]
    pub drain: Duration,
    #[serde(serialize_with = "print::duration")]
    pub drain_reconnect_jitter: Duration,
    #[serde(serialize_with = "print::duration")]
    pub handshake_timeout: Duration,
    #[serde(serialize_with = "print::duration")]
    pub write_delay: Duration,
    #[serde(serialize_with = "print::duration")]
    pub write_coalesce: Duration,
    /// 0: one per CPU.
    pub worker_threads: usize,
    #[serde(serialize_with = "print::duration")]
    pub idempotency_window: Duration,
    /// Bounds of the embedded broker (unused with Redis).
    pub memory_max_streams: usize,
    pub memory_max_history_bytes: usize,
    /// permessage-deflate offered to WebSocket clients.
    #[serde(serialize_with = "print::switch")]
    pub compression: bool,
    pub compression_level: u32,
    pub compression_min_size: usize,
    pub max_message_size: usize,
    pub max_publication_size: usize,
    pub max_body_size: usize,
    pub outbound_queue_bytes: usize,
    pub outbound_queue_messages: usize,
    #[serde(serialize_with = "print::url")]
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes (empty: not a cluster).
    #[serde(rename = "redis_cluster_url", serialize_with = "print::urls")]
    pub redis_cluster_urls: Vec<String>,
    /// Redis Sentinel addresses (empty: no Sentinel).
    #[serde(rename = "redis_sentinel_url", serialize_with = "print::urls")]
    pub redis_sentinel_urls: Vec<String>,
    pub redis_sentinel_master: Option<String>,
    pub redis_prefix: String,
    pub redis_ca_file: Option<PathBuf>,
    /// TLS certificate chain and key (PEM): serve https/wss.
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    /// Client-token keys: any of them enables authentication.
    #[serde(serialize_with = "print::secret")]
    pub jwt_secret: Option<String>,
    pub jwt_secret_file: Option<PathBuf>,
    pub jwt_public_key: Vec<PathBuf>,
    pub jwt_jwks_url: Option<String>,
    #[serde(serialize_with = "print::duration")]
    pub jwt_jwks_refresh: Duration,
    /// Zero: no limit.
    #[serde(serialize_with = "print::duration")]
    pub jwt_max_lifetime: Duration,
    pub jwt_issuer: Option<String>,
    pub jwt_audience: Option<String>,
    pub jwt_allow_any_issuer: bool,
    pub jwt_allow_any_audience: bool,
    #[serde(serialize_with = "print::duration")]
    pub jwt_leeway: Duration,
    #[serde(rename = "allowed_origin")]
    pub allowed_origins: Vec<String>,
    pub require_origin: bool,
    #[serde(rename = "trusted_proxy", serialize_with = "print::networks")]
    pub trusted_proxies: Vec<ipnet::IpNet>,
    pub proxy_protocol: bool,
    /// Resolved: never 0.
    pub max_connections: usize,
    /// 0: no limit.
    pub max_connections_per_ip: usize,
    pub ipv6_limit_prefix: u8,
    /// Per second; 0: no limit.
    pub max_connect_rate: u32,
    pub max_subscriptions: usize,
    /// Per second and connection, in bursts of `max_subscriptions`; 0: no
    /// limit.
    pub subscribe_rate: u32,
    /// Per second and connection; 0: no limit.
    pub publish_rate: u32,
    #[serde(serialize_with = "print::duration")]
    pub presence_ttl: Duration,
    pub presence_event_rate: u32,
    /// Inbound frames per second and connection; 0: no limit.
    pub command_rate: u32,
    pub max_api_requests: usize,
    pub max_pending_connections: usize,
    pub max_pending_per_ip: usize,
    pub log_format: LogFormat,
    pub log_level: String,
    /// Serve the demo page at /demo/.
    pub demo: bool,
    /// History and permissions, global and per namespace (last: TOML tables
    /// must follow plain keys).
    #[serde(flatten)]
    pub namespaces: Namespaces,
}

fn as_seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// What the command line asks the binary to do with the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Run the node.
    Serve,
    /// `--print-config`: print the resolved configuration and exit.
    PrintConfig,
    /// `--healthcheck [URL]`: check a running node and exit (`None`: this
    /// configuration's own `/healthz`).
    Healthcheck(Option<String>),
}

/// A configuration that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{0}")]
    Flags(clap::Error),
    #[error("invalid setting {name}: {message}")]
    Invalid { name: &'static str, message: String },
}

/// Debug output is the printed configuration, secrets redacted: a
/// `{:?}` in a log line or a panic message never shows a key.
impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_toml())
    }
}

impl Default for Config {
    /// The built-in defaults (no flags, environment or file).
    fn default() -> Self {
        // The built-in defaults are valid.
        Config::resolve(file::builtin_defaults(), Default::default())
            .unwrap_or_else(|e| panic!("built-in defaults are invalid: {e}"))
    }
}

impl Config {
    /// Parses `args` (the command line, program name first), the environment
    /// and the file `--config` names. Also says what to do with it.
    pub fn load<I, T>(args: I) -> Result<(Config, Action), ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<OsString> + Clone,
    {
        let (cli, namespaces) = file::load(args)?;
        let action = match (&cli.healthcheck, cli.print_config) {
            (Some(url), _) => Action::Healthcheck(Some(url.clone()).filter(|u| !u.is_empty())),
            (None, true) => Action::PrintConfig,
            (None, false) => Action::Serve,
        };
        Ok((Config::resolve(cli, namespaces)?, action))
    }

    fn resolve(
        cli: Cli,
        namespaces: std::collections::BTreeMap<String, namespaces::FileNamespace>,
    ) -> Result<Config, ConfigError> {
        let trusted_proxies = cli
            .trusted_proxy
            .iter()
            .map(|net| values::parse_network(net).map_err(|m| invalid("trusted_proxy", m)))
            .collect::<Result<_, _>>()?;
        let mut api_keys = cli
            .api_key
            .iter()
            .map(|entry| ApiKey::parse(entry).map_err(|m| invalid("api_key", m)))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(path) = &cli.api_key_file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| invalid("api_key_file", format!("cannot read {}: {e}", path.display())))?;
            for line in text
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty() && !line.starts_with('#'))
            {
                api_keys.push(ApiKey::parse(line).map_err(|m| invalid("api_key_file", m))?);
            }
        }
        let max_connections = match cli.max_connections {
            0 => values::open_files_limit().map_or(usize::MAX, |limit| limit / 10 * 9),
            n => n,
        };
        let config = Config {
            listen: cli.listen,
            admin_listen: cli.admin_listen,
            grpc_listen: cli.grpc_listen,
            node_id: cli.node_id.unwrap_or_else(values::default_node_id),
            api_keys,
            allow_open_api: cli.allow_open_api,
            production: cli.production,
            ping_interval: cli.ping_interval,
            drain: Duration::from_secs(cli.drain_seconds.min(u64::from(u32::MAX))),
            drain_reconnect_jitter: cli.drain_reconnect_jitter,
            handshake_timeout: cli.handshake_timeout,
            write_delay: cli.write_delay,
            write_coalesce: cli.write_coalesce,
            worker_threads: cli.worker_threads,
            compression: cli.compression,
            compression_level: cli.compression_level,
            compression_min_size: cli.compression_min_size,
            max_message_size: cli.max_message_size,
            max_publication_size: cli.max_publication_size,
            max_body_size: cli.max_body_size,
            outbound_queue_bytes: cli.outbound_queue_bytes,
            outbound_queue_messages: cli.outbound_queue_messages,
            redis_url: cli.redis_url.filter(|u| !u.trim().is_empty()),
            redis_cluster_urls: cli
                .redis_cluster_url
                .into_iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            redis_sentinel_urls: cli
                .redis_sentinel_url
                .into_iter()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty())
                .collect(),
            redis_sentinel_master: cli.redis_sentinel_master.filter(|m| !m.trim().is_empty()),
            redis_prefix: cli.redis_prefix,
            redis_ca_file: cli.redis_ca_file,
            tls_cert: cli.tls_cert,
            tls_key: cli.tls_key,
            jwt_secret: cli.jwt_secret,
            jwt_secret_file: cli.jwt_secret_file,
            jwt_public_key: cli.jwt_public_key,
            jwt_jwks_url: cli.jwt_jwks_url.filter(|u| !u.trim().is_empty()),
            jwt_jwks_refresh: cli.jwt_jwks_refresh,
            jwt_max_lifetime: cli.jwt_max_lifetime,
            jwt_issuer: cli.jwt_issuer.filter(|s| !s.is_empty()),
            jwt_audience: cli.jwt_audience.filter(|s| !s.is_empty()),
            jwt_allow_any_issuer: cli.jwt_allow_any_issuer,
            jwt_allow_any_audience: cli.jwt_allow_any_audience,
            jwt_leeway: cli.jwt_leeway,
            allowed_origins: cli.allowed_origin,
            require_origin: cli.require_origin,
            trusted_proxies,
            proxy_protocol: cli.proxy_protocol,
            max_connections,
            max_connections_per_ip: cli.max_connections_per_ip,
            ipv6_limit_prefix: cli.ipv6_limit_prefix,
            max_connect_rate: cli.max_connect_rate,
            idempotency_window: cli.idempotency_window,
            memory_max_streams: cli.memory_max_streams,
            memory_max_history_bytes: cli.memory_max_history_bytes,
            max_subscriptions: cli.max_subscriptions,
            subscribe_rate: cli.subscribe_rate,
            publish_rate: cli.publish_rate,
            presence_ttl: cli.presence_ttl,
            presence_event_rate: cli.presence_event_rate,
            command_rate: cli.command_rate,
            max_api_requests: cli.max_api_requests,
            max_pending_connections: cli.max_pending_connections,
            max_pending_per_ip: cli.max_pending_per_ip,
            log_format: cli.log_format,
            log_level: cli.log_level,
            demo: cli.demo,
            namespaces: Namespaces::resolve(
                Namespace::global(cli.history_size, cli.history_ttl),
                namespaces,
                parse_duration,
            )
            .map_err(|m| invalid("namespaces", m))?,
        };
        config.validate()?;
        Ok(config)
    }

    /// True when client tokens are required.
    pub fn auth_enabled(&self) -> bool {
        self.jwt_secret.is_some()
            || self.jwt_secret_file.is_some()
            || !self.jwt_public_key.is_empty()
            || self.jwt_jwks_url.is_some()
    }

    /// Checks values that parse but cannot work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_node_id(&self.node_id).map_err(|m| invalid("node_id", m))?;
        if self.api_keys.iter().any(|k| k.secret.trim().is_empty()) {
            return Err(invalid("api_key", "API keys must not be empty".into()));
        }
        if self.ping_interval < Duration::from_millis(100) || self.ping_interval > Duration::from_secs(3600) {
            return Err(invalid("ping_interval", "must be between 100ms and 1h".into()));
        }
        if self.drain > Duration::from_secs(3600) {
            return Err(invalid("drain_seconds", "must be at most 3600".into()));
        }
        if self.drain_reconnect_jitter > Duration::from_secs(600) {
            return Err(invalid("drain_reconnect_jitter", "must be at most 10m".into()));
        }
        if self.write_delay > Duration::from_secs(1) {
            return Err(invalid("write_delay", "must be at most 1s".into()));
        }
        if self.write_coalesce > Duration::from_secs(1) {
            return Err(invalid("write_coalesce", "must be at most 1s".into()));
        }
        if self.presence_ttl < Duration::from_secs(1) || self.presence_ttl > Duration::from_secs(3600) {
            return Err(invalid("presence_ttl", "must be 1s to 1h".into()));
        }
        if self.presence_event_rate == 0 {
            return Err(invalid("presence_event_rate", "must be at least 1".into()));
        }
        if self.worker_threads > 1024 {
            return Err(invalid("worker_threads", "must be at most 1024".into()));
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
            ("max_subscriptions", self.max_subscriptions, 1),
            ("memory_max_streams", self.memory_max_streams, 1),
            (
                "memory_max_history_bytes",
                self.memory_max_history_bytes,
                64 * 1024,
            ),
            ("max_connections", self.max_connections, 1),
            ("max_api_requests", self.max_api_requests, 1),
            ("max_pending_connections", self.max_pending_connections, 1),
        ] {
            if value < min {
                return Err(invalid(name, format!("must be at least {min}")));
            }
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
        broker_adapter::redis::validate_prefix(&self.redis_prefix).map_err(|m| invalid("redis_prefix", m))?;
        if let Some(url) = &self.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(invalid(
                "redis_url",
                "must start with redis:// or rediss:// (TLS)".into(),
            ));
        }
        if self.redis_url.is_some() && !self.redis_cluster_urls.is_empty() {
            return Err(invalid(
                "redis_cluster_url",
                "give either --redis-url (one Redis) or --redis-cluster-url (a cluster), not both".into(),
            ));
        }
        if self.redis_sentinel_urls.is_empty() != self.redis_sentinel_master.is_none() {
            return Err(invalid(
                "redis_sentinel_master",
                "--redis-sentinel-url and --redis-sentinel-master go together".into(),
            ));
        }
        if !self.redis_sentinel_urls.is_empty() && !self.redis_cluster_urls.is_empty() {
            return Err(invalid(
                "redis_sentinel_url",
                "give either Sentinel (--redis-sentinel-url) or a cluster (--redis-cluster-url), not both"
                    .into(),
            ));
        }
        if let Some(url) = self
            .redis_cluster_urls
            .iter()
            .chain(&self.redis_sentinel_urls)
            .find(|u| !(u.starts_with("redis://") || u.starts_with("rediss://")))
        {
            return Err(invalid(
                "redis_cluster_url",
                format!(
                    "{} must start with redis:// or rediss:// (TLS)",
                    values::redacted_url(url)
                ),
            ));
        }
        let tls_redis = self
            .redis_url
            .iter()
            .chain(&self.redis_cluster_urls)
            .chain(&self.redis_sentinel_urls)
            .any(|u| u.starts_with("rediss://"));
        if self.redis_ca_file.is_some() && !tls_redis {
            return Err(invalid(
                "redis_ca_file",
                "only applies to a rediss:// Redis URL".into(),
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(invalid("tls_cert", "--tls-cert and --tls-key go together".into()));
        }
        if self.jwt_secret.is_some() && self.jwt_secret_file.is_some() {
            return Err(invalid(
                "jwt_secret",
                "give --jwt-secret or --jwt-secret-file, not both".into(),
            ));
        }
        if self.jwt_secret.as_ref().is_some_and(|s| s.len() < 32) {
            return Err(invalid(
                "jwt_secret",
                "must be at least 32 bytes (256 bits) for HS256".into(),
            ));
        }
        if self.auth_enabled() {
            if self.jwt_audience.is_none() && !self.jwt_allow_any_audience {
                return Err(invalid(
                    "jwt_audience",
                    "token authentication needs --jwt-audience (the `aud` this gateway's tokens carry), \
                     or --jwt-allow-any-audience: otherwise a token the same identity provider issued \
                     for another application opens this one's channels"
                        .into(),
                ));
            }
            if self.jwt_issuer.is_none() && !self.jwt_allow_any_issuer {
                return Err(invalid(
                    "jwt_issuer",
                    "token authentication needs --jwt-issuer (the `iss` of accepted tokens), or \
                     --jwt-allow-any-issuer"
                        .into(),
                ));
            }
        }
        if let Some(url) = &self.jwt_jwks_url {
            values::parse_fetch_url(url).map_err(|m| invalid("jwt_jwks_url", m))?;
        }
        if self.idempotency_window < Duration::from_secs(1)
            || self.idempotency_window > Duration::from_secs(86_400)
        {
            return Err(invalid("idempotency_window", "must be 1s to 24h".into()));
        }
        if self.jwt_jwks_refresh < Duration::from_secs(1) {
            return Err(invalid("jwt_jwks_refresh", "must be at least 1s".into()));
        }
        if self.production {
            let missing: Vec<&str> = [
                (
                    !self.auth_enabled(),
                    "token authentication (--jwt-secret, --jwt-secret-file, --jwt-public-key or --jwt-jwks-url)",
                ),
                (
                    self.api_keys.is_empty(),
                    "an API key (--api-key or --api-key-file)",
                ),
                (self.allow_open_api, "no --allow-open-api"),
                (
                    self.allowed_origins.is_empty(),
                    "an Origin allow-list (--allowed-origin)",
                ),
                (
                    self.max_connections_per_ip == 0,
                    "a per-IP connection limit (--max-connections-per-ip)",
                ),
                (
                    self.max_connect_rate == 0,
                    "a connect rate limit (--max-connect-rate)",
                ),
            ]
            .into_iter()
            .filter_map(|(lacking, what)| lacking.then_some(what))
            .collect();
            if !missing.is_empty() {
                return Err(invalid(
                    "production",
                    format!("the production profile needs {}", missing.join(", ")),
                ));
            }
        }
        if self.auth_enabled() && self.api_keys.is_empty() && !self.allow_open_api {
            return Err(invalid(
                "api_key",
                "token authentication is on but the HTTP API has no key, so anyone reaching it could \
                 publish anywhere and read any history: set --api-key (or --allow-open-api if only \
                 trusted backends can reach this listener)"
                    .into(),
            ));
        }
        for file in [
            &self.redis_ca_file,
            &self.tls_cert,
            &self.tls_key,
            &self.jwt_secret_file,
        ]
        .into_iter()
        .flatten()
        .chain(&self.jwt_public_key)
        {
            if let Err(e) = std::fs::metadata(file) {
                return Err(invalid("file", format!("cannot read {}: {e}", file.display())));
            }
        }
        for origin in &self.allowed_origins {
            crate::origin::OriginRule::parse(origin).map_err(|m| invalid("allowed_origin", m))?;
        }
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(invalid(
                "proxy_protocol",
                "needs --trusted-proxy: only trusted proxies send it".into(),
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log_level)
            .map_err(|e| invalid("log_level", e.to_string()))?;
        Ok(())
    }

    /// The configuration as TOML, secrets redacted (for `--print-config`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

fn invalid(name: &'static str, message: String) -> ConfigError {
    ConfigError::Invalid { name, message }
}

/// Node ids appear in client ids and broker channel names, so they are kept
/// to a conservative character set.
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

#[cfg(test)]
mod tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, ConfigError> {
        Config::load(std::iter::once("gateway").chain(args.iter().copied())).map(|(config, _)| config)
    }

    fn temp_file(contents: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("gateway-config-{}.toml", fastrand::u64(..)));
        std::fs::write(&path, contents).unwrap();
        path
    }

    #[test]
    fn api_keys_come_from_a_file_and_no_secret_shows_in_debug_output() {
        let file =
            temp_file("# backends\nkey-from-file-1\n\n  key-from-file-2  \n[publish] key-from-file-3\n");
        let path = file.to_str().unwrap();
        let config = load(&[
            "--api-key",
            "key-on-the-line",
            "--api-key-file",
            path,
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--jwt-allow-any-audience",
            "--jwt-allow-any-issuer",
        ])
        .unwrap();
        let secrets: Vec<&str> = config.api_keys.iter().map(|k| k.secret.as_str()).collect();
        assert_eq!(
            secrets,
            [
                "key-on-the-line",
                "key-from-file-1",
                "key-from-file-2",
                "key-from-file-3"
            ]
        );
        assert!(!config.api_keys[3].allows(Scope::Connections));
        let debug = format!("{config:?}");
        for secret in [
            "key-on-the-line",
            "key-from-file-1",
            "0123456789abcdef0123456789abcdef",
        ] {
            assert!(!debug.contains(secret), "{debug}");
        }
        assert!(load(&["--api-key-file", "/nonexistent/keys"]).is_err());
        let _ = std::fs::remove_file(file);
    }

    #[test]
    fn the_production_profile_refuses_the_fail_open_defaults() {
        let refused = load(&["--production"]).expect_err("defaults are not a production setup");
        let text = refused.to_string();
        for needed in [
            "token authentication",
            "API key",
            "--allowed-origin",
            "--max-connections-per-ip",
            "--max-connect-rate",
        ] {
            assert!(text.contains(needed), "{text}");
        }
        let complete = [
            "--production",
            "--jwt-secret",
            "0123456789abcdef0123456789abcdef",
            "--jwt-audience",
            "chat-app",
            "--jwt-issuer",
            "https://idp.example",
            "--api-key",
            "k",
            "--allowed-origin",
            "https://app.example.com",
            "--max-connections-per-ip",
            "50",
            "--max-connect-rate",
            "500",
        ];
        assert!(load(&complete).is_ok());
        let mut open_api = complete.to_vec();
        open_api.push("--allow-open-api");
        assert!(
            load(&open_api).is_err(),
            "no opting out of the API key in production"
        );
    }

    #[test]
    fn sentinel_needs_its_master_and_excludes_a_cluster() {
        let sentinels = ["--redis-sentinel-url", "redis://s1:26379,redis://s2:26379"];
        assert!(load(&sentinels).is_err(), "a master name is needed");
        assert!(
            load(&["--redis-sentinel-master", "main"]).is_err(),
            "sentinels are needed"
        );
        let mut with_cluster = sentinels.to_vec();
        with_cluster.extend([
            "--redis-sentinel-master",
            "main",
            "--redis-cluster-url",
            "redis://c1:7000",
        ]);
        assert!(load(&with_cluster).is_err());
        let mut ok = sentinels.to_vec();
        ok.extend([
            "--redis-sentinel-master",
            "main",
            "--redis-url",
            "rediss://:pw@data/2",
        ]);
        let config = load(&ok).expect("Sentinel with a data-node template");
        assert_eq!(config.redis_sentinel_urls.len(), 2);
        assert_eq!(config.redis_sentinel_master.as_deref(), Some("main"));
    }

    #[test]
    fn token_authentication_without_an_api_key_refuses_to_start_unless_opted_out() {
        let secret = "0123456789abcdef0123456789abcdef";
        let any = ["--jwt-allow-any-audience", "--jwt-allow-any-issuer"];
        let with = |extra: &[&'static str]| [&["--jwt-secret", secret][..], &any, extra].concat();
        let refused = load(&with(&[])).expect_err("an open API under auth is refused");
        assert!(refused.to_string().contains("--api-key"), "{refused}");
        assert!(load(&with(&["--api-key", "k"])).is_ok());
        let open = load(&with(&["--allow-open-api"])).expect("opted out");
        assert!(open.allow_open_api && open.api_keys.is_empty());
        assert!(
            load(&[]).is_ok(),
            "without auth the API may stay open (a warning is logged)"
        );
    }

    #[test]
    fn token_authentication_requires_an_audience_and_issuer_unless_opted_out() {
        let secret = "0123456789abcdef0123456789abcdef";
        let base = ["--jwt-secret", secret, "--api-key", "k"];
        let with = |extra: &[&str]| load(&[&base[..], extra].concat()).map_err(|e| e.to_string());
        assert!(with(&[]).unwrap_err().contains("--jwt-audience"));
        assert!(
            with(&["--jwt-audience", "app"])
                .unwrap_err()
                .contains("--jwt-issuer")
        );
        assert!(with(&["--jwt-audience", "app", "--jwt-issuer", "https://idp"]).is_ok());
        assert!(with(&["--jwt-allow-any-audience", "--jwt-allow-any-issuer"]).is_ok());
        // A JWKS URL turns authentication on as well, and is checked.
        let jwks = |url: &str| {
            load(&[
                "--jwt-jwks-url",
                url,
                "--api-key",
                "k",
                "--jwt-allow-any-audience",
                "--jwt-allow-any-issuer",
            ])
        };
        assert!(jwks("https://idp.example/jwks.json").is_ok_and(|c| c.auth_enabled()));
        assert!(jwks("ftp://idp.example/jwks.json").is_err());
        let max = with(&[
            "--jwt-audience",
            "a",
            "--jwt-issuer",
            "i",
            "--jwt-max-lifetime",
            "1h",
        ])
        .unwrap();
        assert_eq!(max.jwt_max_lifetime, Duration::from_secs(3600));
    }

    #[test]
    fn defaults_apply_without_flags_or_file() {
        let config = Config::default();
        assert_eq!(config.listen, "0.0.0.0:8080".parse().unwrap());
        assert_eq!(config.ping_interval, Duration::from_secs(25));
        assert_eq!(config.drain, Duration::from_secs(10));
        assert_eq!(config.max_message_size, 65536);
        assert_eq!(config.max_subscriptions, 1000);
        assert!(config.api_keys.is_empty() && !config.auth_enabled());
        assert!(config.max_connections > 0);
        assert!(validate_node_id(&config.node_id).is_ok(), "{}", config.node_id);
    }

    #[test]
    fn flags_override_the_file_and_the_file_overrides_defaults() {
        let path = temp_file(
            "listen = \"127.0.0.1:9000\"\nnode_id = \"from-file\"\nping_interval = \"5s\"\n\
             drain_seconds = 3\nmax_message_size = \"1KiB\"\napi_key = [\"k1\", \"k2\"]\n\
             require_origin = true\nallowed_origin = [\"https://a.example\"]\n\
             [namespaces.chat]\nhistory_size = 0\n",
        );
        let file = path.to_str().unwrap();
        let from_file = load(&["--config", file]).unwrap();
        assert_eq!(from_file.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(from_file.node_id, "from-file");
        assert_eq!(from_file.ping_interval, Duration::from_secs(5));
        assert_eq!(from_file.drain, Duration::from_secs(3));
        assert_eq!(from_file.max_message_size, 1024);
        assert_eq!(
            from_file.api_keys,
            [ApiKey::unrestricted("k1"), ApiKey::unrestricted("k2")]
        );
        assert!(from_file.require_origin);
        assert_eq!(from_file.allowed_origins, ["https://a.example"]);
        assert_eq!(from_file.namespaces.named["chat"].history_size, 0);

        let flags = load(&[
            "--config",
            file,
            "--node-id",
            "from-flag",
            "--ping-interval",
            "750ms",
            "--api-key",
            "k3",
        ])
        .unwrap();
        assert_eq!(flags.node_id, "from-flag");
        assert_eq!(flags.ping_interval, Duration::from_millis(750));
        assert_eq!(flags.api_keys, [ApiKey::unrestricted("k3")]);
        assert_eq!(flags.listen, "127.0.0.1:9000".parse().unwrap());
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn bad_settings_are_reported_by_name() {
        let message = |args: &[&str]| load(args).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(message(&["--node-id", "has space"]).contains("node_id"));
        assert!(message(&["--ping-interval", "1ms"]).contains("ping_interval"));
        assert!(message(&["--max-message-size", "12XB"]).contains("max-message-size"));
        assert!(message(&["--tls-cert", "/nonexistent.pem"]).contains("tls"));
        assert!(message(&["--jwt-secret", "short"]).contains("32 bytes"));
        let both = message(&["--jwt-secret", &"s".repeat(32), "--jwt-secret-file", "/k"]);
        assert!(both.contains("not both"), "{both}");
        assert!(message(&["--allowed-origin", "not an origin"]).contains("allowed_origin"));
        assert!(message(&["--proxy-protocol"]).contains("trusted-proxy"));
        assert!(message(&["--trusted-proxy", "x.y"]).contains("trusted_proxy"));

        let path = temp_file("listne = \"x\"\n");
        let typo = message(&["--config", path.to_str().unwrap()]);
        assert!(typo.contains("unknown setting `listne`"), "{typo}");
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn printed_config_redacts_secrets_and_loads_back() {
        let secret = "a-very-long-jwt-secret-of-32-bytes!!";
        let config = load(&[
            "--api-key",
            "secret-key",
            "--redis-url",
            "redis://:s3cret@localhost:6380/2",
            "--jwt-secret",
            secret,
            "--jwt-allow-any-audience",
            "--jwt-allow-any-issuer",
        ])
        .unwrap();
        let text = config.to_toml();
        for hidden in ["secret-key", "s3cret", secret] {
            assert!(!text.contains(hidden), "{hidden} leaked: {text}");
        }
        assert!(
            text.contains("redis_url = \"redis://:<redacted>@localhost:6380/2\""),
            "{text}"
        );
        assert!(text.contains("ping_interval = \"25s\""), "{text}");
        // Without secrets, what is printed is a valid config file.
        let plain = load(&["--node-id", "printed", "--history-size", "7"]).unwrap();
        let path = temp_file(&plain.to_toml());
        let back = load(&["--config", path.to_str().unwrap()]).unwrap();
        assert_eq!(
            (back.node_id.as_str(), back.namespaces.global.history_size),
            ("printed", 7)
        );
        std::fs::remove_file(path).ok();
    }
}
