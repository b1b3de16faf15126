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
        let Some((generation, conn)) = self.slot.lock().unwrap().clone() else {
            return Err(Error::Unavailable);
        };
        let fut = async {
            match conn {
                Conn::Standalone(mut c) => {
                    redis::cmd("PUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<u64>(&mut c)
                        .await
                }
                Conn::Cluster(mut c) => {
                    redis::cmd("SPUBLISH")
                        .arg(channel)
                        .arg(payload)
                        .query_async::<u64>(&mut c)
                        .await
                }
            }
        };
        let (result, broken) = match tokio::time::timeout(self.timeout, fut).await {
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
