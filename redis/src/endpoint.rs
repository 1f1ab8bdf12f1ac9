//! Where one lock server's connections go: a server's address, the master a group of Sentinels
//! names (asked again after every connection failure, so a failover is followed), or a Redis
//! Cluster (redis-rs's cluster client: the master that owns each key's slot, `MOVED`/`ASK`
//! followed, the slot map refreshed). The front ends pool what [`Endpoint::connect`] opens; this
//! module decides only where it goes and how long it may take.

use std::time::Duration;

use redis::cluster::{ClusterClient, ClusterConnection};
use redis::{Client, ConnectionAddr, ConnectionInfo, ConnectionLike, IntoConnectionInfo, Value};

use crate::error::{Error, InvalidInput};

/// How many times redis-rs's cluster client tries a request again after a redirection or a
/// connection error: enough for a `MOVED`, then an `ASK`, then a reconnect; few enough that a
/// call on a dead master's slot fails within a few timeouts.
const CLUSTER_RETRIES: u32 = 3;
/// The cluster client's waits between tries (ms): short, since a wait is only for a slot
/// migration or a failover to settle.
const CLUSTER_RETRY_WAIT_MS: (u64, u64) = (5, 100);

/// A lock server's connections: where they go.
pub(crate) enum Endpoint {
    /// One server.
    Server(Client),
    /// The master that a group of Sentinels names.
    Sentinel(Sentinels),
    /// A Redis Cluster.
    Cluster(Box<Cluster>),
}

/// A Redis Cluster's two clients: requests that may be sent twice (every lock script; see
/// [`Resend`](crate::node::Resend)) go through `retrying`, which follows redirections and
/// reconnects on its own; a fenced write goes through `once`, which never sends anything twice
/// (its `MOVED` is followed by the caller, on a connection with a fresh slot map).
pub(crate) struct Cluster {
    retrying: ClusterClient,
    once: ClusterClient,
    /// The first node's address, to name the cluster.
    seed: String,
}

/// The Sentinels of one master, and how to log in to whichever server they name.
pub(crate) struct Sentinels {
    master_name: String,
    sentinels: Vec<Client>,
    /// The master's connection settings (database, user, password, TLS); its address is
    /// replaced by the one a Sentinel gives.
    master: ConnectionInfo,
    #[cfg(feature = "tls")]
    tls: Option<redis::TlsCertificates>,
}

/// A pooled blocking connection.
pub(crate) enum Link {
    Server(redis::Connection),
    /// Boxed: many times the size of a server's connection, and opened rarely.
    Cluster(Box<ClusterConnection>),
}

impl Link {
    /// The connection, for `query`.
    #[inline]
    pub(crate) fn as_dyn(&mut self) -> &mut dyn ConnectionLike {
        match self {
            Self::Server(con) => con,
            Self::Cluster(con) => &mut **con,
        }
    }

    /// Sets how long a read may wait (raised for a blocking pop, set back after).
    pub(crate) fn set_read_timeout(&self, timeout: Option<Duration>) -> redis::RedisResult<()> {
        match self {
            Self::Server(con) => con.set_read_timeout(timeout),
            Self::Cluster(con) => con.set_read_timeout(timeout),
        }
    }
}

impl Endpoint {
    /// The cluster whose nodes include `urls` (any of its masters; the rest are found).
    pub(crate) fn cluster(
        urls: &[&str],
        connect_timeout: Duration,
        io_timeout: Duration,
        #[cfg(feature = "tls")] tls: Option<&redis::TlsCertificates>,
    ) -> Result<Self, Error> {
        let Some(first) = urls.first() else {
            return Err(
                InvalidInput::new("a cluster needs the URL of at least one of its nodes").into(),
            );
        };
        let client = |retries: u32| {
            #[allow(unused_mut)]
            let mut builder = ClusterClient::builder(urls.iter().copied())
                .connection_timeout(connect_timeout)
                .response_timeout(io_timeout)
                .retries(retries)
                .min_retry_wait(CLUSTER_RETRY_WAIT_MS.0)
                .max_retry_wait(CLUSTER_RETRY_WAIT_MS.1);
            #[cfg(feature = "tls")]
            if let Some(certificates) = tls {
                builder = builder.certs(certificates.clone());
            }
            builder.build()
        };
        let seed = first.into_connection_info()?.addr().to_string();
        Ok(Self::Cluster(Box::new(Cluster {
            retrying: client(CLUSTER_RETRIES)?,
            once: client(0)?,
            seed,
        })))
    }

    /// The master named `master_name` by the Sentinels at `sentinels`, logged in to with
    /// `master`'s settings.
    pub(crate) fn sentinel(
        master_name: &str,
        sentinels: Vec<Client>,
        master: ConnectionInfo,
        #[cfg(feature = "tls")] tls: Option<&redis::TlsCertificates>,
    ) -> Result<Self, Error> {
        if master_name.is_empty() || sentinels.is_empty() {
            return Err(InvalidInput::new(
                "Sentinel needs the master's name and the URL of at least one Sentinel",
            )
            .into());
        }
        Ok(Self::Sentinel(Sentinels {
            master_name: master_name.to_owned(),
            sentinels,
            master,
            #[cfg(feature = "tls")]
            tls: tls.cloned(),
        }))
    }

    /// Whether requests go to a Redis Cluster (keys must share a slot; see the crate docs).
    #[inline]
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Self::Cluster(_))
    }

    /// `host:port` and database, to tell servers apart; a Sentinel group and a cluster are named
    /// by the master's name and their first address.
    pub(crate) fn identity(&self) -> (String, i64) {
        match self {
            Self::Server(client) => {
                let info = client.get_connection_info();
                (info.addr().to_string(), info.redis_settings().db())
            }
            Self::Sentinel(group) => {
                let first = group.sentinels[0].get_connection_info().addr().to_string();
                (
                    format!("sentinel {} at {first}", group.master_name),
                    group.master.redis_settings().db(),
                )
            }
            Self::Cluster(cluster) => (format!("cluster at {}", cluster.seed), 0),
        }
    }

    /// Opens a blocking connection: `once` for a request that must not be sent twice (it
    /// matters on a cluster only), each step bounded by the timeouts.
    #[cold]
    pub(crate) fn connect(
        &self,
        once: bool,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Link, Error> {
        match self {
            Self::Server(client) => Ok(Link::Server(open(client, connect_timeout, io_timeout)?)),
            Self::Sentinel(group) => {
                let client = group.master_client(connect_timeout, io_timeout)?;
                let mut con = open(&client, connect_timeout, io_timeout)?;
                check_master(redis::cmd("ROLE").query(&mut con)?)?;
                Ok(Link::Server(con))
            }
            Self::Cluster(cluster) => {
                let client = if once {
                    &cluster.once
                } else {
                    &cluster.retrying
                };
                let con = client.get_connection()?;
                con.set_read_timeout(Some(io_timeout))?;
                con.set_write_timeout(Some(io_timeout))?;
                Ok(Link::Cluster(Box::new(con)))
            }
        }
    }
}

impl Sentinels {
    /// Asks the Sentinels in turn for the master's address (`SENTINEL get-master-addr-by-name`;
    /// the client specification's first two steps), each within the timeouts, and returns a
    /// client for the first address given. The third step — is that server a master? — is the
    /// caller's, on the connection it opens (`ROLE`).
    ///
    /// redis-rs's own Sentinel client opens its connections without a timeout, so a paused
    /// Sentinel would hang it; this lookup is one command per Sentinel, bounded here.
    #[cold]
    fn master_client(
        &self,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Client, Error> {
        let mut last = None;
        for sentinel in &self.sentinels {
            let asked = open(sentinel, connect_timeout, io_timeout).and_then(|mut con| {
                redis::cmd("SENTINEL")
                    .arg("get-master-addr-by-name")
                    .arg(&self.master_name)
                    .query::<Option<(String, u16)>>(&mut con)
            });
            match asked {
                Ok(Some((host, port))) => return self.client_for(host, port),
                Ok(None) => last = Some(no_such_master(&self.master_name)),
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| no_such_master(&self.master_name)))
    }

    /// As [`master_client`](Self::master_client), async: each Sentinel within the timeouts.
    #[cfg(feature = "tokio")]
    #[cold]
    pub(crate) async fn master_client_async(
        &self,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Client, Error> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(connect_timeout))
            .set_response_timeout(Some(io_timeout));
        let mut last = None;
        for sentinel in &self.sentinels {
            let asked = match sentinel
                .get_multiplexed_async_connection_with_config(&config)
                .await
            {
                Ok(mut con) => {
                    redis::cmd("SENTINEL")
                        .arg("get-master-addr-by-name")
                        .arg(&self.master_name)
                        .query_async::<Option<(String, u16)>>(&mut con)
                        .await
                }
                Err(e) => Err(e),
            };
            match asked {
                Ok(Some((host, port))) => return self.client_for(host, port),
                Ok(None) => last = Some(no_such_master(&self.master_name)),
                Err(e) => last = Some(e.into()),
            }
        }
        Err(last.unwrap_or_else(|| no_such_master(&self.master_name)))
    }

    /// A client for the master at `host:port`, with the master's settings (and TLS if its
    /// settings ask for it).
    fn client_for(&self, host: String, port: u16) -> Result<Client, Error> {
        let addr = match self.master.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        let info = self.master.clone().set_addr(addr);
        #[cfg(feature = "tls")]
        if let (Some(certificates), ConnectionAddr::TcpTls { .. }) = (&self.tls, info.addr()) {
            return Ok(Client::build_with_tls(info, certificates.clone())?);
        }
        Ok(Client::open(info)?)
    }
}

/// The async side of [`Endpoint`], with the `tokio` feature.
#[cfg(feature = "tokio")]
impl Endpoint {
    /// The client for the server requests go to now (a Sentinel group's current master); `None`
    /// on a cluster, whose connections come from [`connect_cluster_async`](Self::connect_cluster_async).
    pub(crate) async fn client_async(
        &self,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<Option<Client>, Error> {
        match self {
            Self::Server(client) => Ok(Some(client.clone())),
            Self::Sentinel(group) => Ok(Some(
                group
                    .master_client_async(connect_timeout, io_timeout)
                    .await?,
            )),
            Self::Cluster(_) => Ok(None),
        }
    }

    /// An async cluster connection (`once`: one that never sends a request twice).
    pub(crate) async fn connect_cluster_async(
        &self,
        once: bool,
        connect_timeout: Duration,
        io_timeout: Duration,
    ) -> Result<redis::cluster_async::ClusterConnection, Error> {
        let Self::Cluster(cluster) = self else {
            unreachable!("connect_cluster_async is called on a cluster endpoint only");
        };
        let client = if once {
            &cluster.once
        } else {
            &cluster.retrying
        };
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(connect_timeout)
            .set_response_timeout(io_timeout);
        let connect = client.get_async_connection_with_config(config);
        // The connect itself: every node's connection and the slot map, within one bound.
        match tokio::time::timeout(connect_timeout.saturating_add(io_timeout), connect).await {
            Ok(con) => Ok(con?),
            Err(_) => Err(Error::Redis(redis::RedisError::from((
                redis::ErrorKind::Io,
                "fencelock-redis: the cluster did not answer within the connect timeout",
            )))),
        }
    }
}

/// Whether a master's `ROLE` reply says it is one (the Sentinel client specification's third
/// step): a demoted master, or a Sentinel's stale view, is refused as `READONLY`, which drops
/// the connection and asks the Sentinels again.
pub(crate) fn check_master(role: Value) -> Result<(), Error> {
    if let Value::Array(items) = &role {
        if let Some(Value::BulkString(first)) = items.first() {
            if first == b"master" {
                return Ok(());
            }
        }
    }
    Err(Error::Redis(redis::RedisError::from((
        redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly),
        "fencelock-redis: the server the Sentinels named is not a master (a failover is under \
         way); asking them again on the next call",
    ))))
}

/// A blocking connection to `client`, its reads and writes bounded by `io_timeout`.
fn open(
    client: &Client,
    connect_timeout: Duration,
    io_timeout: Duration,
) -> redis::RedisResult<redis::Connection> {
    let con = client.get_connection_with_timeout(connect_timeout)?;
    con.set_read_timeout(Some(io_timeout))?;
    con.set_write_timeout(Some(io_timeout))?;
    Ok(con)
}

#[cold]
fn no_such_master(name: &str) -> Error {
    Error::Redis(redis::RedisError::from((
        redis::ErrorKind::MasterNameNotFoundBySentinel,
        "fencelock-redis: no Sentinel named a master",
        format!("the master name is `{name}`"),
    )))
}
