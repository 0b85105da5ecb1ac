//! Every setting as a command-line flag, with its environment variable and
//! built-in default. The TOML file's keys are these flags' names with `_`
//! for `-` (see `file.rs`); `gateway --help` prints this list.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use super::values::{parse_duration, parse_size, parse_switch};

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Command-line flags. Each is also read from `GATEWAY_<NAME>` and from the
/// TOML file given by `--config`.
#[derive(Debug, Parser)]
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

    /// Address to serve HTTP and WebSocket (or HTTPS and wss with --tls-cert) on.
    #[arg(
        long,
        env = "GATEWAY_LISTEN",
        value_name = "ADDR",
        default_value = "0.0.0.0:8080"
    )]
    pub listen: SocketAddr,

    /// A second listener for operators: /healthz, /readyz and /metrics are then served here
    /// (plain HTTP, nothing else) and no longer on --listen, so clients cannot read the node's
    /// metrics or its broker's state. For example `127.0.0.1:9090` or the pod's port for probes.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// Serve the server API over gRPC (service pubsub.api.v1.GatewayApi, proto/pubsub/v1/api.proto)
    /// on this address, with the same API keys and scopes as the HTTP API, and TLS (ALPN h2)
    /// when --tls-cert is set. Off by default.
    #[arg(long, env = "GATEWAY_GRPC_LISTEN", value_name = "ADDR")]
    pub grpc_listen: Option<SocketAddr>,

    /// Node id reported to clients [default: hostname plus a random suffix].
    #[arg(long, env = "GATEWAY_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// API key accepted by the HTTP API as `Authorization: Bearer <key>`. Repeat the flag (or
    /// separate with commas in the environment) for several keys. `[publish read] KEY` limits a
    /// key to scopes (publish, read, history, connections; see docs/api.md), a key without
    /// brackets may do everything. Without any key the API is
    /// open to anyone who can reach it, so with token authentication on a key is required
    /// (see --allow-open-api).
    #[arg(
        long,
        env = "GATEWAY_API_KEY",
        value_name = "KEY",
        value_delimiter = ',',
        hide_env_values = true,
        hide_default_value = true
    )]
    pub api_key: Vec<String>,

    /// File of API keys, one per line, each `KEY` or `[scope …] KEY` (blank lines and `#`
    /// comments ignored), added to any
    /// --api-key: keeps keys out of the command line, which other local users can read in
    /// /proc.
    #[arg(long, env = "GATEWAY_API_KEY_FILE", value_name = "FILE")]
    pub api_key_file: Option<PathBuf>,

    /// Serve the HTTP API without an API key even though WebSocket clients need tokens (the API
    /// bypasses every channel permission: only where the listener is reachable by trusted
    /// backends alone). Without this flag, token authentication without --api-key refuses to
    /// start.
    #[arg(long, env = "GATEWAY_ALLOW_OPEN_API")]
    pub allow_open_api: bool,

    /// Production profile: refuse to start unless the settings that the defaults leave open are
    /// set: token authentication, an API key (--allow-open-api is refused), at least one
    /// --allowed-origin, --max-connections-per-ip and --max-connect-rate.
    #[arg(long, env = "GATEWAY_PRODUCTION")]
    pub production: bool,

    /// Interval between server pings, such as `25s`. A client that sends nothing (not even a
    /// pong) for twice this long is disconnected.
    #[arg(long, env = "GATEWAY_PING_INTERVAL", value_name = "DURATION", value_parser = parse_duration, default_value = "25s")]
    pub ping_interval: Duration,

    /// Seconds over which clients are disconnected (close 1012) on SIGTERM.
    #[arg(
        long,
        env = "GATEWAY_DRAIN_SECONDS",
        value_name = "SECONDS",
        default_value_t = 10
    )]
    pub drain_seconds: u64,

    /// Longest reconnect delay suggested to drained clients, such as `5s`. Each client's close
    /// (1012) carries `reconnect_after_ms`, drawn uniformly from zero to this, so that the
    /// clients of a drained node do not all reconnect elsewhere at once.
    #[arg(long, env = "GATEWAY_DRAIN_RECONNECT_JITTER", value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub drain_reconnect_jitter: Duration,

    /// Time a new connection has to complete its handshake (TLS and HTTP request head), a
    /// request its body, and, with authentication, a WebSocket client its `connect`.
    #[arg(long, env = "GATEWAY_HANDSHAKE_TIMEOUT", value_name = "DURATION", value_parser = parse_duration, default_value = "10s")]
    pub handshake_timeout: Duration,

    /// A fixed time each connection gathers outgoing frames before writing them, such as
    /// `20ms`, instead of --write-coalesce's adaptive window: every frame waits up to that long.
    /// `0` (the default) leaves it to --write-coalesce.
    #[arg(long, env = "GATEWAY_WRITE_DELAY", value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub write_delay: Duration,

    /// Adaptive write batching: a connection that has not written for this long writes a new
    /// frame at once; one that wrote more recently (it is receiving a stream) waits out the rest
    /// of the window, so what arrives meanwhile shares one write. Light traffic gets no added
    /// latency, heavy fan-out most of a fixed delay's savings. `0` writes every frame at once.
    #[arg(long, env = "GATEWAY_WRITE_COALESCE", value_name = "DURATION", value_parser = parse_duration, default_value = "20ms")]
    pub write_coalesce: Duration,

    /// Runtime worker threads [0: one per CPU the process may use]. When several gateway
    /// processes share a host, give each its share of the cores.
    #[arg(
        long,
        env = "GATEWAY_WORKER_THREADS",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub worker_threads: usize,

    /// permessage-deflate for WebSocket clients that offer it (every browser does): `on` or
    /// `off`. Each publication is compressed once and the same bytes go to every subscriber that
    /// negotiated it; no connection keeps compression state of its own.
    #[arg(long, env = "GATEWAY_COMPRESSION", value_name = "on|off", value_parser = parse_switch, default_value = "on")]
    pub compression: bool,

    /// deflate level for permessage-deflate, 1 (fastest) to 9 (smallest).
    #[arg(long, env = "GATEWAY_COMPRESSION_LEVEL", value_name = "LEVEL", default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=9))]
    pub compression_level: u32,

    /// Messages smaller than this are sent uncompressed (compression gains little on them).
    #[arg(long, env = "GATEWAY_COMPRESSION_MIN_SIZE", value_name = "BYTES", value_parser = parse_size, default_value = "256B")]
    pub compression_min_size: usize,

    /// Largest inbound WebSocket message or frame, such as `64KiB`; larger closes with 1009.
    #[arg(long, env = "GATEWAY_MAX_MESSAGE_SIZE", value_name = "BYTES", value_parser = parse_size, default_value = "64KiB")]
    pub max_message_size: usize,

    /// Largest publication data from any source; larger is refused with `too_large`.
    #[arg(long, env = "GATEWAY_MAX_PUBLICATION_SIZE", value_name = "BYTES", value_parser = parse_size, default_value = "64KiB")]
    pub max_publication_size: usize,

    /// Largest HTTP request body; larger is answered 413.
    #[arg(long, env = "GATEWAY_MAX_BODY_SIZE", value_name = "BYTES", value_parser = parse_size, default_value = "64KiB")]
    pub max_body_size: usize,

    /// Bytes queued for one client before it is disconnected as a slow consumer (close 4008).
    #[arg(long, env = "GATEWAY_OUTBOUND_QUEUE_BYTES", value_name = "BYTES", value_parser = parse_size, default_value = "1MiB")]
    pub outbound_queue_bytes: usize,

    /// Messages queued for one client before it is disconnected as a slow consumer.
    #[arg(
        long,
        env = "GATEWAY_OUTBOUND_QUEUE_MESSAGES",
        value_name = "COUNT",
        default_value_t = 4096
    )]
    pub outbound_queue_messages: usize,

    /// Publications kept per channel for recovery; 0 keeps none (offsets are still assigned).
    /// `[namespaces.<name>]` tables in the config file override it per namespace.
    #[arg(
        long,
        env = "GATEWAY_HISTORY_SIZE",
        value_name = "COUNT",
        default_value_t = 100
    )]
    pub history_size: usize,

    /// How long a channel's history and offsets survive without publications; after that the
    /// channel starts a new epoch.
    #[arg(long, env = "GATEWAY_HISTORY_TTL", value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    pub history_ttl: Duration,

    /// How long a publication's `idempotency_key` (HTTP API) is remembered on its channel: a
    /// repeat within it is answered with the first publication's position and not published.
    #[arg(long, env = "GATEWAY_IDEMPOTENCY_WINDOW", value_name = "DURATION", value_parser = parse_duration, default_value = "5m")]
    pub idempotency_window: Duration,

    /// Embedded broker only: channels with a stream (an offset, an epoch, history) at most; a
    /// publication that would start one more is refused with `limit_exceeded`. Reads and
    /// subscribes never start a stream. (With Redis, bound Redis with its `maxmemory`.)
    #[arg(
        long,
        env = "GATEWAY_MEMORY_MAX_STREAMS",
        value_name = "COUNT",
        default_value_t = 1_000_000
    )]
    pub memory_max_streams: usize,

    /// Embedded broker only: bytes of publication data kept in history over all channels; past
    /// it the oldest publications leave history first (they were delivered; only recovery loses
    /// them).
    #[arg(long, env = "GATEWAY_MEMORY_MAX_HISTORY_BYTES", value_name = "BYTES", value_parser = parse_size, default_value = "1GiB")]
    pub memory_max_history_bytes: usize,

    /// Redis URL (`redis://[user:password@]host:port[/db]`, or `rediss://` for TLS). With it, nodes
    /// share publications through Redis; without it the node uses its embedded broker.
    #[arg(
        long,
        env = "GATEWAY_REDIS_URL",
        value_name = "URL",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes, such as `redis://10.0.0.1:6379,redis://10.0.0.2:6379` (any
    /// reachable one is enough; `rediss://` for TLS). With it, nodes share publications through
    /// the cluster's sharded pub/sub (Redis 7 or later). Excludes --redis-url.
    #[arg(
        long,
        env = "GATEWAY_REDIS_CLUSTER_URL",
        value_name = "URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_cluster_url: Vec<String>,

    /// Redis Sentinel addresses, such as `redis://10.0.0.1:26379,redis://10.0.0.2:26379`
    /// (`redis://:password@host:port` for a sentinel with a password, `rediss://` for TLS): the
    /// node asks them for the primary of --redis-sentinel-master before each connection and
    /// follows a failover. --redis-url, if given, then only says how to talk to the data nodes
    /// (scheme, user, password, db); its host is replaced by the primary's. Excludes
    /// --redis-cluster-url.
    #[arg(
        long,
        env = "GATEWAY_REDIS_SENTINEL_URL",
        value_name = "URLS",
        value_delimiter = ',',
        hide_env_values = true
    )]
    pub redis_sentinel_url: Vec<String>,

    /// The master name the sentinels monitor (`sentinel monitor <NAME> ...`); needed with
    /// --redis-sentinel-url.
    #[arg(long, env = "GATEWAY_REDIS_SENTINEL_MASTER", value_name = "NAME")]
    pub redis_sentinel_master: Option<String>,

    /// Prefix of every Redis channel and key, so several deployments can share one Redis.
    #[arg(
        long,
        env = "GATEWAY_REDIS_PREFIX",
        value_name = "PREFIX",
        default_value = "gw"
    )]
    pub redis_prefix: String,

    /// PEM file with the CA certificate(s) that signed the Redis server's certificate, for
    /// `rediss://` with a private CA [default: the system's trusted roots].
    #[arg(long, env = "GATEWAY_REDIS_CA_FILE", value_name = "FILE")]
    pub redis_ca_file: Option<PathBuf>,

    /// PEM certificate chain: serve https:// and wss:// (TLS 1.2+). Reloaded on SIGHUP.
    #[arg(long, env = "GATEWAY_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert. Reloaded on SIGHUP.
    #[arg(long, env = "GATEWAY_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,

    /// HS256 secret for client tokens (JWT). Setting any --jwt-* key makes authentication required.
    #[arg(
        long,
        env = "GATEWAY_JWT_SECRET",
        value_name = "SECRET",
        hide_env_values = true,
        hide_default_value = true
    )]
    pub jwt_secret: Option<String>,

    /// File holding HS256 secrets for client tokens, one per line (old and new during a
    /// rotation). Reloaded on SIGHUP.
    #[arg(long, env = "GATEWAY_JWT_SECRET_FILE", value_name = "FILE")]
    pub jwt_secret_file: Option<PathBuf>,

    /// PEM public key for RS256 (RSA key) or ES256 (P-256 key) client tokens. Repeatable (every
    /// key is tried); reloaded on SIGHUP.
    #[arg(
        long,
        env = "GATEWAY_JWT_PUBLIC_KEY",
        value_name = "FILE",
        value_delimiter = ','
    )]
    pub jwt_public_key: Vec<PathBuf>,

    /// URL of the identity provider's JSON Web Key Set (`https://idp.example/.well-known/jwks.json`):
    /// tokens are verified with the key their `kid` names. Fetched at start, every
    /// --jwt-jwks-refresh, on an unknown `kid` (at most every 10 s) and on SIGHUP.
    #[arg(long, env = "GATEWAY_JWT_JWKS_URL", value_name = "URL")]
    pub jwt_jwks_url: Option<String>,

    /// How often the JWKS is fetched again.
    #[arg(long, env = "GATEWAY_JWT_JWKS_REFRESH", value_name = "DURATION", value_parser = parse_duration, default_value = "10m")]
    pub jwt_jwks_refresh: Duration,

    /// Longest a token may live (from `iat`, and from now, to `exp`); longer is refused
    /// [0: no limit].
    #[arg(long, env = "GATEWAY_JWT_MAX_LIFETIME", value_name = "DURATION", value_parser = parse_duration, default_value = "0s")]
    pub jwt_max_lifetime: Duration,

    /// Accept tokens without checking `aud`. Without it, authentication requires --jwt-audience:
    /// a token another application got from the same identity provider must not open this one.
    #[arg(long, env = "GATEWAY_JWT_ALLOW_ANY_AUDIENCE")]
    pub jwt_allow_any_audience: bool,

    /// Accept tokens without checking `iss`. Without it, authentication requires --jwt-issuer.
    #[arg(long, env = "GATEWAY_JWT_ALLOW_ANY_ISSUER")]
    pub jwt_allow_any_issuer: bool,

    /// Required `iss` of client tokens.
    #[arg(long, env = "GATEWAY_JWT_ISSUER", value_name = "ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of client tokens.
    #[arg(long, env = "GATEWAY_JWT_AUDIENCE", value_name = "AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[arg(long, env = "GATEWAY_JWT_LEEWAY", value_name = "DURATION", value_parser = parse_duration, default_value = "5s")]
    pub jwt_leeway: Duration,

    /// Origin allowed to open WebSockets: exact (`https://app.example.com`) or a subdomain
    /// wildcard (`https://*.example.com`). Repeatable. Without any, every origin is allowed.
    #[arg(
        long,
        env = "GATEWAY_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub allowed_origin: Vec<String>,

    /// Refuse WebSocket upgrades without an `Origin` header (non-browser clients).
    #[arg(long, env = "GATEWAY_REQUIRE_ORIGIN")]
    pub require_origin: bool,

    /// Proxy (IP or CIDR) whose `X-Forwarded-For` (or PROXY protocol header) names the client.
    /// Repeatable. Connections from elsewhere are taken at their source address.
    #[arg(
        long,
        env = "GATEWAY_TRUSTED_PROXY",
        value_name = "NET",
        value_delimiter = ','
    )]
    pub trusted_proxy: Vec<String>,

    /// Expect a PROXY protocol (v1 or v2) header on connections from trusted proxies.
    #[arg(long, env = "GATEWAY_PROXY_PROTOCOL")]
    pub proxy_protocol: bool,

    /// Most WebSocket connections on this node; more are answered 503 with Retry-After
    /// [0: 90% of the open-files limit].
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECTIONS",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub max_connections: usize,

    /// Most WebSocket connections from one client IP [0: no limit].
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECTIONS_PER_IP",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub max_connections_per_ip: usize,

    /// IPv6 clients count against --max-connections-per-ip by network of this many bits (a
    /// host usually has a whole /64 to pick addresses from); 128 counts every address alone.
    #[arg(
        long,
        env = "GATEWAY_IPV6_LIMIT_PREFIX",
        value_name = "BITS",
        default_value_t = 64,
        value_parser = clap::value_parser!(u8).range(1..=128)
    )]
    pub ipv6_limit_prefix: u8,

    /// Most new WebSocket connections per second on this node (token bucket, bursts of one
    /// second's worth); more are answered 503 with Retry-After [0: no limit].
    #[arg(
        long,
        env = "GATEWAY_MAX_CONNECT_RATE",
        value_name = "PER_SECOND",
        default_value_t = 0
    )]
    pub max_connect_rate: u32,

    /// Most channels one connection may subscribe to; more get error `limit_exceeded`.
    #[arg(
        long,
        env = "GATEWAY_MAX_SUBSCRIPTIONS",
        value_name = "COUNT",
        default_value_t = 1000
    )]
    pub max_subscriptions: usize,

    /// Subscribes per second one connection may make, in bursts of up to --max-subscriptions (so
    /// a reconnecting client resubscribes everything at once); more get error `rate_limited`.
    /// Each subscribe to a channel nobody on the node follows costs a broker subscription and a
    /// read, so this bounds how fast one client can churn through channel names [0: no limit].
    #[arg(
        long,
        env = "GATEWAY_SUBSCRIBE_RATE",
        value_name = "PER_SECOND",
        default_value_t = 100
    )]
    pub subscribe_rate: u32,

    /// Publications per second one connection may make (bursts of one second's worth); more get
    /// error `rate_limited`, and a client that keeps going is closed with 4029 [0: no limit].
    #[arg(
        long,
        env = "GATEWAY_PUBLISH_RATE",
        value_name = "PER_SECOND",
        default_value_t = 0
    )]
    pub publish_rate: u32,

    /// Frames per second (commands, pings, pongs) read from one connection; a client sending
    /// faster is read more slowly, without affecting others [0: no limit].
    #[arg(
        long,
        env = "GATEWAY_COMMAND_RATE",
        value_name = "PER_SECOND",
        default_value_t = 1000
    )]
    pub command_rate: u32,

    /// How long a node's presence entries live without a refresh: members of a node that dies
    /// (or is cut off from the broker) vanish within this time. Refreshed every third of it.
    #[arg(long, env = "GATEWAY_PRESENCE_TTL", value_name = "DURATION", value_parser = parse_duration, default_value = "30s")]
    pub presence_ttl: Duration,

    /// Join and leave events per channel per second, at most; beyond that, joins and leaves are
    /// recorded in presence without an event (a mass reconnect does not become an event storm).
    #[arg(
        long,
        env = "GATEWAY_PRESENCE_EVENT_RATE",
        value_name = "PER_SECOND",
        default_value_t = 100
    )]
    pub presence_event_rate: u32,

    /// Most accepted connections that are not WebSockets yet (TLS and HTTP handshakes, HTTP
    /// API connections); more are closed at once, before anything is read.
    #[arg(
        long,
        env = "GATEWAY_MAX_PENDING_CONNECTIONS",
        value_name = "COUNT",
        default_value_t = 4096
    )]
    pub max_pending_connections: usize,

    /// Most such connections from one address (trusted proxies excepted) [0: no limit].
    #[arg(
        long,
        env = "GATEWAY_MAX_PENDING_PER_IP",
        value_name = "COUNT",
        default_value_t = 0
    )]
    pub max_pending_per_ip: usize,

    /// Most HTTP API requests (`/api/*`) served at once; more are answered 503 `overloaded`
    /// with Retry-After, at once.
    #[arg(
        long,
        env = "GATEWAY_MAX_API_REQUESTS",
        value_name = "COUNT",
        default_value_t = 512
    )]
    pub max_api_requests: usize,

    /// Log format.
    #[arg(long, env = "GATEWAY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, such as `info` or `gateway=debug,info`.
    #[arg(
        long,
        env = "GATEWAY_LOG_LEVEL",
        value_name = "FILTER",
        default_value = "info"
    )]
    pub log_level: String,

    /// Serve the demo page (a browser client of this node) at /demo/.
    #[arg(long, env = "GATEWAY_DEMO")]
    pub demo: bool,

    /// Print the resolved configuration as TOML (secrets redacted) and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Check a running node's health and exit: GET the URL (default: /healthz on this
    /// configuration's --listen address, over TLS when --tls-cert is set), exit 0 on 200 and 1
    /// otherwise. For container health checks, where the image has no shell or curl.
    #[arg(long, value_name = "URL", num_args = 0..=1, default_missing_value = "")]
    pub healthcheck: Option<String>,
}
