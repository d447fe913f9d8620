//! Waiting between tries. Every retry loop in CodeLupe waits through [`Backoff`]:
//! one schedule (doubling from a first pause up to a ceiling) and one pause that ends
//! early when the stage shuts down, so no loop sleeps through a shutdown.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The pauses between the tries of one operation.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    ceiling: Duration,
}

/// The stage began shutting down during a pause: stop trying.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("shutting down")]
pub struct Cancelled;

impl Backoff {
    /// Pauses of `first`, then twice as long each time, never above `ceiling`.
    pub fn new(first: Duration, ceiling: Duration) -> Self {
        Self {
            first,
            next: first.min(ceiling),
            ceiling,
        }
    }

    /// The pause to wait now; the one after is twice as long, up to the ceiling.
    pub fn next_pause(&mut self) -> Duration {
        let pause = self.next;
        self.next = self.next.saturating_mul(2).min(self.ceiling);
        pause
    }

    /// Back to the first pause: the operation succeeded, the next failure starts anew.
    pub fn reset(&mut self) {
        self.next = self.first.min(self.ceiling);
    }

    /// Waits the next pause and returns it, or returns `Cancelled` as soon as `cancel`
    /// fires (at once when it already has).
    pub async fn pause(&mut self, cancel: &CancellationToken) -> Result<Duration, Cancelled> {
        let pause = self.next_pause();
        sleep(pause, cancel).await.map(|()| pause)
    }
}

/// Waits `pause` (one the other side asked for, such as a rate limit's), or returns
/// `Cancelled` as soon as `cancel` fires (at once when it already has).
pub async fn sleep(pause: Duration, cancel: &CancellationToken) -> Result<(), Cancelled> {
    if cancel.is_cancelled() {
        return Err(Cancelled);
    }
    tokio::select! {
        _ = cancel.cancelled() => Err(Cancelled),
        _ = tokio::time::sleep(pause) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_up_to_the_ceiling_and_start_again_after_a_reset() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let pauses: Vec<u128> = (0..5).map(|_| backoff.next_pause().as_millis()).collect();
        assert_eq!(pauses, [100, 200, 400, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_pause(), Duration::from_millis(100));
    }

    #[tokio::test]
    async fn a_pause_ends_when_the_stage_shuts_down() {
        let cancel = CancellationToken::new();
        let mut backoff = Backoff::new(Duration::from_secs(3600), Duration::from_secs(3600));
        let waiting = tokio::spawn({
            let cancel = cancel.clone();
            async move { backoff.pause(&cancel).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancel.cancel();
        assert_eq!(waiting.await.unwrap(), Err(Cancelled));
        let mut backoff = Backoff::new(Duration::from_millis(1), Duration::from_millis(1));
        assert_eq!(
            backoff.pause(&cancel).await,
            Err(Cancelled),
            "already cancelled"
        );
    }
}
