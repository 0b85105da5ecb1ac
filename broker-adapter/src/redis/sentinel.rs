//! Finding the primary through Redis Sentinel: before each connection the
//! supervisor asks the sentinels (`SENTINEL get-master-addr-by-name`), in
//! turn from the last one that answered, and checks with `ROLE` that the
//! address it got is a primary, so a node never settles on a replica in
//! the middle of a failover. While connected, the link checks `ROLE` with
//! every probe: a primary demoted while its connections live on (a
//! partition that healed, a manual failover) is left within a probe
//! interval, and the node reconnects to the new one and catches up from
//! history as after an outage.

use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ConnectionAddr, ConnectionInfo, IntoConnectionInfo};

use crate::BrokerError;

/// The sentinels and how to reach the primary they name.
pub(super) struct Sentinel {
    sentinels: Vec<redis::Client>,
    master: String,
    /// The data nodes' settings (TLS, user, password, db); the address is
    /// the primary's.
    template: ConnectionInfo,
    certificates: Option<redis::TlsCertificates>,
    /// The sentinel to ask first.
    next: usize,
}

impl Sentinel {
    pub fn new(
        urls: &[String],
        master: String,
        template: ConnectionInfo,
        certificates: Option<redis::TlsCertificates>,
    ) -> Result<Sentinel, BrokerError> {
        if urls.is_empty() || master.is_empty() {
            return Err(BrokerError::Internal(
                "Sentinel needs at least one sentinel URL and the master's name".into(),
            ));
        }
        let sentinels = urls
            .iter()
            .map(|url| {
                let info = url
                    .as_str()
                    .into_connection_info()
                    .map_err(|e| BrokerError::Internal(format!("invalid sentinel URL: {e}")))?;
                match &certificates {
                    Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
                    None => redis::Client::open(info),
                }
                .map_err(|e| BrokerError::Internal(format!("invalid sentinel settings: {e}")))
            })
            .collect::<Result<_, _>>()?;
        Ok(Sentinel {
            sentinels,
            master,
            template,
            certificates,
            next: 0,
        })
    }

    /// A client for the current primary, as the sentinels name it and as
    /// it confirms itself.
    pub async fn primary(&mut self, timeout: Duration) -> Result<redis::Client, String> {
        let mut failures = Vec::new();
        for i in 0..self.sentinels.len() {
            let index = (self.next + i) % self.sentinels.len();
            match self.ask(index, timeout).await {
                Ok((host, port)) => {
                    self.next = index;
                    let client = self.client_for(host, port)?;
                    let mut connection = connect(&client, timeout)
                        .await
                        .map_err(|e| format!("the primary the sentinels name: {e}"))?;
                    if !is_primary(&mut connection).await? {
                        return Err(
                            "the address the sentinels name is not a primary yet (failover under way)".into(),
                        );
                    }
                    return Ok(client);
                }
                Err(error) => failures.push(format!("sentinel {}: {error}", index + 1)),
            }
        }
        Err(failures.join("; "))
    }

    async fn ask(&self, index: usize, timeout: Duration) -> Result<(String, u16), String> {
        let mut connection = connect(&self.sentinels[index], timeout).await?;
        let address: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master)
            .query_async(&mut connection)
            .await
            .map_err(|e| e.to_string())?;
        address.ok_or_else(|| format!("does not know a master named {:?}", self.master))
    }

    fn client_for(&self, host: String, port: u16) -> Result<redis::Client, String> {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure, tls_params, ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = self.template.clone().set_addr(addr);
        match &self.certificates {
            Some(certificates) => redis::Client::build_with_tls(info, certificates.clone()),
            None => redis::Client::open(info),
        }
        .map_err(|e| format!("invalid primary settings: {e}"))
    }
}

async fn connect(client: &redis::Client, timeout: Duration) -> Result<MultiplexedConnection, String> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| e.to_string())
}

/// `ROLE` says `master`.
pub(super) async fn is_primary(connection: &mut MultiplexedConnection) -> Result<bool, String> {
    let role: Vec<redis::Value> = redis::cmd("ROLE")
        .query_async(connection)
        .await
        .map_err(|e| format!("ROLE: {e}"))?;
    Ok(matches!(
        role.first(),
        Some(redis::Value::BulkString(kind)) if kind.as_slice() == b"master"
    ) || matches!(role.first(), Some(redis::Value::SimpleString(kind)) if kind == "master"))
}
