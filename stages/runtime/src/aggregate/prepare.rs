//! Work on each input that reads none of the aggregate's state (the batcher's
//! tokenizing), done on every core ahead of `push` while inputs still reach `push` in
//! the order they were read: an aggregate's outputs depend on that order.

use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use futures::{FutureExt as _, StreamExt as _};
use tokio::sync::Semaphore;

/// Jobs run on rayon's pool (one thread a core), at most `workers` at once, their
/// results handed back in the order the jobs were added. Not tokio's blocking threads:
/// a job there lands on any of up to 512 threads, and the batcher's tokenizing on two
/// cores ran 1.5× one thread there against 2.0× on rayon's.
pub struct Ordered<T> {
    workers: Arc<Semaphore>,
    queue: FuturesOrdered<BoxFuture<'static, T>>,
}

impl<T: Send + 'static> Ordered<T> {
    pub fn new(workers: NonZeroUsize) -> Self {
        Self {
            workers: Arc::new(Semaphore::new(workers.get())),
            queue: FuturesOrdered::new(),
        }
    }

    /// As many workers as rayon's pool has threads: the cores this process may use (a
    /// container's CPU quota included), or RAYON_NUM_THREADS.
    pub fn on_every_core() -> Self {
        Self::new(NonZeroUsize::new(rayon::current_num_threads()).unwrap_or(NonZeroUsize::MIN))
    }

    /// Jobs added and not yet handed back.
    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Queues `job`; it starts when a worker is free (jobs start in the order added).
    pub fn add(&mut self, job: impl FnOnce() -> T + Send + 'static) {
        let workers = self.workers.clone();
        self.queue.push_back(
            async move {
                let _worker = workers.acquire_owned().await.expect("never closed");
                let (done, result) = tokio::sync::oneshot::channel();
                rayon::spawn(move || {
                    let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(job)));
                });
                match result.await.expect("a rayon job always runs to its end") {
                    Ok(done) => done,
                    // A job that panicked panics its caller, as it would have inline.
                    Err(panic) => std::panic::resume_unwind(panic),
                }
            }
            .boxed(),
        );
    }

    /// The oldest job's result, once it is done; None when nothing is queued.
    pub async fn next(&mut self) -> Option<T> {
        self.queue.next().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn results_come_back_in_the_order_added_and_workers_are_bounded() {
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let cores = rayon::current_num_threads().min(3);
        let mut ordered = Ordered::new(NonZeroUsize::new(3).unwrap());
        for i in 0..12u64 {
            let (running, most) = (running.clone(), most.clone());
            ordered.add(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                // The first jobs wait (boundedly) for one another: other tests share
                // rayon's pool, so jobs that merely could overlap need not (this test
                // failed so in a CI run).
                let waiting = std::time::Instant::now();
                while (i as usize) < cores
                    && running.load(Ordering::SeqCst) < cores
                    && waiting.elapsed() < Duration::from_secs(10)
                {
                    std::thread::sleep(Duration::from_millis(1));
                }
                most.fetch_max(running.load(Ordering::SeqCst), Ordering::SeqCst);
                // Earlier jobs take longer, so they finish after later ones.
                std::thread::sleep(Duration::from_millis(5 * (12 - i)));
                running.fetch_sub(1, Ordering::SeqCst);
                i
            });
        }
        let mut out = Vec::new();
        while let Some(i) = ordered.next().await {
            out.push(i);
        }
        assert_eq!(out, (0..12).collect::<Vec<_>>());
        let most = most.load(Ordering::SeqCst);
        assert!((cores..=3).contains(&most), "{most} jobs ran at once");
    }

    #[tokio::test]
    #[should_panic(expected = "bad input")]
    async fn a_job_that_panics_panics_its_caller() {
        let mut ordered = Ordered::new(NonZeroUsize::MIN);
        ordered.add(|| -> u32 { panic!("bad input") });
        ordered.next().await;
    }
}
