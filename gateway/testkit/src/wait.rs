//! Awaiting a condition that has no event to await (state only observable by asking: a gauge,
//! `PUBSUB NUMSUB`, `/readyz`): poll it, with a deadline that names what never happened.

use std::future::Future;
use std::time::{Duration, Instant};

/// Polls `f` every 20 ms until it holds; panics naming `what` after `limit`. Returns how long
/// it took.
pub async fn eventually<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}
