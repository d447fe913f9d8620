//! Work on each input that reads none of the aggregate's state (the batcher's
//! tokenizing), done on every core ahead of `push` while inputs still reach `push` in
//! the order they were read: an aggregate's outputs depend on that order.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};

use futures::stream::FuturesOrdered;
use futures::StreamExt as _;
use tokio::sync::oneshot;

type Job = Box<dyn FnOnce() + Send>;

/// Jobs run on rayon's pool (one thread a core), at most `workers` at once, their
/// results handed back in the order the jobs were added. Not tokio's blocking threads:
/// a job there lands on any of up to 512 threads, and the batcher's tokenizing on two
/// cores ran 1.5× one thread there against 2.0× on rayon's.
///
/// A worker that finishes a job takes the next one itself: were jobs started by the
/// caller's polling, the cores would idle whenever the caller is busy with a result
/// (the batcher packing a file, encoding a sealed batch, awaiting Kafka).
pub struct Ordered<T> {
    queue: FuturesOrdered<oneshot::Receiver<std::thread::Result<T>>>,
    waiting: Arc<Waiting>,
}

/// Jobs not yet started, and the workers taking them.
struct Waiting {
    limit: usize,
    state: Mutex<WaitingState>,
}

#[derive(Default)]
struct WaitingState {
    jobs: VecDeque<Job>,
    workers: usize,
}

impl Waiting {
    /// Runs waiting jobs until none is left, then stops being a worker.
    fn work(self: Arc<Self>) {
        loop {
            let job = {
                let mut state = self
                    .state
                    .lock()
                    .expect("never poisoned: jobs run unlocked");
                match state.jobs.pop_front() {
                    Some(job) => job,
                    None => {
                        state.workers -= 1;
                        return;
                    }
                }
            };
            job();
        }
    }
}

impl<T: Send + 'static> Ordered<T> {
    pub fn new(workers: NonZeroUsize) -> Self {
        Self {
            queue: FuturesOrdered::new(),
            waiting: Arc::new(Waiting {
                limit: workers.get(),
                state: Mutex::default(),
            }),
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

    /// Queues `job`; it starts when a worker is free (jobs start in the order added),
    /// whether or not the caller is polling.
    pub fn add(&mut self, job: impl FnOnce() -> T + Send + 'static) {
        let (done, result) = oneshot::channel();
        self.queue.push_back(result);
        let job: Job = Box::new(move || {
            let _ = done.send(std::panic::catch_unwind(AssertUnwindSafe(job)));
        });
        let mut state = self
            .waiting
            .state
            .lock()
            .expect("never poisoned: jobs run unlocked");
        state.jobs.push_back(job);
        if state.workers < self.waiting.limit {
            state.workers += 1;
            let waiting = self.waiting.clone();
            rayon::spawn(move || waiting.work());
        }
    }

    /// The oldest job's result, once it is done; None when nothing is queued.
    pub async fn next(&mut self) -> Option<T> {
        let result = self.queue.next().await?;
        match result.expect("a queued job runs to its end: only dropping the queue drops it") {
            Ok(done) => Some(done),
            // A job that panicked panics its caller, as it would have inline.
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

impl<T> Drop for Ordered<T> {
    /// Jobs not yet started are not started: nobody would read their results.
    fn drop(&mut self) {
        if let Ok(mut state) = self.waiting.state.lock() {
            state.jobs.clear();
        }
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
    async fn jobs_go_on_while_the_caller_is_busy_elsewhere() {
        let finished = Arc::new(AtomicUsize::new(0));
        let mut ordered = Ordered::new(NonZeroUsize::MIN);
        for i in 0..4u32 {
            let finished = finished.clone();
            ordered.add(move || {
                finished.fetch_add(1, Ordering::SeqCst);
                i
            });
        }
        // The caller works without polling (as the batcher packs a file): one worker
        // still runs every job, one after another.
        let waiting = std::time::Instant::now();
        while finished.load(Ordering::SeqCst) < 4 && waiting.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(
            finished.load(Ordering::SeqCst),
            4,
            "jobs waited for the caller"
        );
        let mut out = Vec::new();
        while let Some(i) = ordered.next().await {
            out.push(i);
        }
        assert_eq!(out, [0, 1, 2, 3]);
    }

    #[tokio::test]
    #[should_panic(expected = "bad input")]
    async fn a_job_that_panics_panics_its_caller() {
        let mut ordered = Ordered::new(NonZeroUsize::MIN);
        ordered.add(|| -> u32 { panic!("bad input") });
        ordered.next().await;
    }
}
