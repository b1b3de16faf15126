//! The publishing side: one multiplexed connection (standalone `PUBLISH`) or one cluster
//! connection (`SPUBLISH`, routed by slot), shared by every publish, direct send and
//! standalone canary.
//!
//! Fail fast: the connection lives in a slot that a background connector fills. In standalone
//! mode a connection-class error or a timeout empties the slot, and until the connector has a
//! new connection every publish fails at once with [`Error::Unavailable`] instead of waiting:
//! callers see the outage immediately and nothing queues. In cluster mode one master being
//! down must not stop publishes to the others, so the connection is kept and each publish is
//! only bounded by the timeout (redis-rs reconnects per node; its retries are set low).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use tokio::sync::Notify;

use crate::backoff::Backoff;
use crate::error::Error;

/// A Lua script and its SHA1 (the name EVALSHA calls it by).
#[derive(Debug)]
pub(crate) struct LuaScript {
    /// The source.
    pub code: &'static str,
    /// Lowercase hex SHA1 of `code`.
    pub sha: String,
}

impl LuaScript {
    pub(crate) fn new(code: &'static str) -> Self {
        use sha1::Digest;
        let digest = sha1::Sha1::digest(code.as_bytes());
        let sha = digest.iter().map(|b| format!("{b:02x}")).collect();
        LuaScript { code, sha }
    }
}

/// How to (re)connect.
pub(crate) enum Target {
    Standalone(redis::Client),
    Cluster(Box<ClusterClient>),
}

#[derive(Clone)]
enum Conn {
    Standalone(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// The shared publishing connection with its fail-fast slot.
pub(crate) struct Publisher {
    target: Target,
    /// The live connection and its generation; `None` while (re)connecting.
    slot: Mutex<Option<(u64, Conn)>>,
    /// Source of connection generations, so a late failure of an old connection cannot
    /// empty the slot of a newer one.
    generations: AtomicU64,
    /// Wakes the connector when the slot is emptied.
    wake: Notify,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let up = self.slot.lock().unwrap().is_some();
        f.debug_struct("Publisher").field("connected", &up).finish()
    }
}

impl Publisher {
    pub(crate) fn new(target: Target, timeout: Duration, connect_timeout: Duration) -> Self {
        Publisher {
            target,
            slot: Mutex::new(None),
            generations: AtomicU64::new(0),
            wake: Notify::new(),
            timeout,
            connect_timeout,
        }
    }

    /// One connection attempt, bounded by the connect timeout; fills the slot on success.
    pub(crate) async fn connect_once(&self) -> Result<(), Error> {
        let attempt = async {
            Ok::<_, redis::RedisError>(match &self.target {
                Target::Standalone(client) => {
                    let cfg = redis::AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(self.connect_timeout))
                        .set_response_timeout(Some(self.timeout));
                    Conn::Standalone(
                        client
                            .get_multiplexed_async_connection_with_config(&cfg)
                            .await?,
                    )
                }
                Target::Cluster(client) => Conn::Cluster(client.get_async_connection().await?),
            })
        };
        let conn = tokio::time::timeout(self.connect_timeout, attempt)
            .await
            .map_err(|_| Error::Timeout(self.connect_timeout))??;
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        *self.slot.lock().unwrap() = Some((generation, conn));
        Ok(())
    }

    /// Keeps the slot filled: reconnects with backoff whenever it is emptied. Runs forever.
    pub(crate) async fn run_connector(&self, max_backoff: Duration) {
        let mut backoff = Backoff::new(max_backoff);
        loop {
            if self.slot.lock().unwrap().is_some() {
                // A permit stored by `notify_one` before we got here is not lost.
                self.wake.notified().await;
                continue;
            }
            match self.connect_once().await {
                Ok(()) => {
                    tracing::info!("redis publisher connected");
                    backoff.reset();
                }
                Err(err) => {
                    tracing::debug!(%err, "redis publisher connect failed");
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// `PUBLISH` (standalone) or `SPUBLISH` (cluster) `payload` on `channel`; returns how many
    /// subscriber connections received it.
    pub(crate) async fn publish(&self, channel: &str, payload: &[u8]) -> Result<u64, Error> {
        let command = if self.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        };
        let mut cmd = redis::cmd(command);
        cmd.arg(channel).arg(payload);
        self.bounded(|conn| async move {
            match conn {
                Conn::Standalone(mut c) => cmd.query_async::<u64>(&mut c).await,
                Conn::Cluster(mut c) => cmd.query_async::<u64>(&mut c).await,
            }
        })
        .await
    }

    /// Runs a Lua script with EVALSHA, and with EVAL (which also caches it) when Redis does
    /// not know it yet (first use, or after a restart), on the shared connection, with the
    /// same timeout and fail-fast rules as a publish.
    pub(crate) async fn script<T: redis::FromRedisValue + Send>(
        &self,
        script: &LuaScript,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, Error> {
        let build = |name: &str, body: &str| {
            let mut cmd = redis::cmd(name);
            cmd.arg(body).arg(keys.len()).arg(keys).arg(args);
            cmd
        };
        let by_sha = build("EVALSHA", &script.sha);
        let result = self
            .bounded(|conn| async move {
                match conn {
                    Conn::Standalone(mut c) => by_sha.query_async::<T>(&mut c).await,
                    Conn::Cluster(mut c) => by_sha.query_async::<T>(&mut c).await,
                }
            })
            .await;
        match result {
            Err(Error::Redis(e)) if e.code() == Some("NOSCRIPT") => {
                let eval = build("EVAL", script.code);
                self.bounded(|conn| async move {
                    match conn {
                        Conn::Standalone(mut c) => eval.query_async::<T>(&mut c).await,
                        Conn::Cluster(mut c) => eval.query_async::<T>(&mut c).await,
                    }
                })
                .await
            }
            other => other,
        }
    }

    /// Whether this is a Redis Cluster connection (sharded pub/sub commands).
    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self.target, Target::Cluster(_))
    }

    /// Runs `call` on the current connection within the timeout; a connection-class error or
    /// a timeout empties the slot (standalone), so later calls fail fast until it is back.
    async fn bounded<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<T>>,
    {
        let Some((generation, conn)) = self.slot.lock().unwrap().clone() else {
            return Err(Error::Unavailable);
        };
        let (result, broken) = match tokio::time::timeout(self.timeout, call(conn)).await {
            Ok(Ok(n)) => return Ok(n),
            Ok(Err(err)) => {
                let broken = err.is_io_error()
                    || err.is_connection_dropped()
                    || err.is_connection_refusal()
                    || err.is_unrecoverable_error();
                (Error::Redis(err), broken)
            }
            Err(_) => (Error::Timeout(self.timeout), true),
        };
        if broken && matches!(self.target, Target::Standalone(_)) {
            self.invalidate(generation);
        }
        Err(result)
    }

    /// Runs `PUBSUB NUMSUB channel` (standalone only; used for the duplicate node id check).
    pub(crate) async fn numsub(&self, channel: &str) -> Result<u64, Error> {
        let Some((_, Conn::Standalone(mut conn))) = self.slot.lock().unwrap().clone() else {
            return Err(Error::Unavailable);
        };
        let mut cmd = redis::cmd("PUBSUB");
        cmd.arg("NUMSUB").arg(channel);
        let fut = cmd.query_async::<(String, u64)>(&mut conn);
        let (_, n) = tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| Error::Timeout(self.timeout))??;
        Ok(n)
    }

    /// Empties the slot if it still holds generation `generation`, and wakes the connector.
    fn invalidate(&self, generation: u64) {
        let mut slot = self.slot.lock().unwrap();
        if slot.as_ref().is_some_and(|(g, _)| *g == generation) {
            *slot = None;
            tracing::warn!("redis publisher connection lost; publishes fail fast until it is back");
            self.wake.notify_one();
        }
    }
}
