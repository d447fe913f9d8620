//! The process's memory allocators and the threads that use them: jemalloc for Rust's
//! heap, glibc's malloc for the C libraries that call it (libgit2, librdkafka), and
//! how much freed memory each keeps for reuse, set by the work the process does.

use codelupe_runtime::descriptor::Bound;

/// jemalloc instead of glibc's malloc for every stage: the batcher's tokenizing frees
/// millions of small allocations across its threads, and glibc's per-thread arenas
/// held on to the freed memory. Side by side on the whole-pipeline benchmark the
/// batcher spent 42 CPU seconds on the 4x corpus against 65.5, and its peak grew
/// 1.18-1.40x from the 1x corpus (four runs) against 1.58x (benches/RESULTS.md, Memory).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The async runtime, built before any thread of the process allocates. For work bound
/// by I/O, the allocators keep nothing for reuse. The downloader runs each clone and
/// each write to its store on a blocking thread, and tokio starts more of them
/// whenever the ones it has are busy: 35-82 over one corpus, each with a jemalloc
/// thread cache of what it freed, so the peak followed the thread count (alone on 313
/// repositories: 49-65 MB over six runs, 37-40 MB over three with this, at the same
/// speed). A CPU-bound stage would pay for it (the batcher ran 1.8x slower with
/// jemalloc's decay at 0, 3x without thread caches).
pub fn runtime(work: Bound) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if work == Bound::Io {
        return_freed_memory_at_once();
        builder.on_thread_start(without_thread_cache);
    }
    builder.build()
}

/// jemalloc's arenas purge freed pages at once, and glibc's malloc keeps one arena
/// instead of one per thread.
fn return_freed_memory_at_once() {
    for default in [&b"arenas.dirty_decay_ms\0"[..], b"arenas.muzzy_decay_ms\0"] {
        // SAFETY: documented jemalloc controls of type ssize_t; they set the decay of
        // every arena created from now on (only the main thread's exists yet).
        if let Err(e) = unsafe { tikv_jemalloc_ctl::raw::write(default, 0isize) } {
            tracing::warn!(error = %e, "cannot set jemalloc's decay");
        }
    }
    for arena in ["arena.0.dirty_decay_ms\0", "arena.0.muzzy_decay_ms\0"] {
        // SAFETY: as above, for the arena that exists already.
        let _ = unsafe { tikv_jemalloc_ctl::raw::write(arena.as_bytes(), 0isize) };
    }
    // SAFETY: mallopt takes any option and value; glibc ignores what it does not know.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
}

/// This thread allocates from its arena directly, keeping no cache of what it freed.
fn without_thread_cache() {
    // SAFETY: a documented jemalloc control of type bool, for the calling thread.
    if let Err(e) = unsafe { tikv_jemalloc_ctl::raw::write(b"thread.tcache.enabled\0", false) } {
        tracing::warn!(error = %e, "cannot turn off jemalloc's thread cache");
    }
}

/// What one allocator has handed out and not had back (`live`) and what it keeps
/// resident for that (`held`: live data, freed memory kept for reuse, its own books).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Usage {
    pub live: u64,
    pub held: u64,
}

/// Both allocators' usage now: a peak RSS above what the data needs shows up as `held`
/// well above `live`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Heap {
    pub jemalloc: Usage,
    pub glibc: Usage,
}

impl Heap {
    pub fn now() -> Self {
        // jemalloc's statistics are a snapshot, refreshed by advancing its epoch.
        let jemalloc = match tikv_jemalloc_ctl::epoch::advance() {
            Ok(_) => Usage {
                live: tikv_jemalloc_ctl::stats::allocated::read().unwrap_or(0) as u64,
                held: tikv_jemalloc_ctl::stats::resident::read().unwrap_or(0) as u64,
            },
            Err(_) => Usage { live: 0, held: 0 },
        };
        // SAFETY: mallinfo2 takes no arguments and only reads glibc's arenas under
        // their locks.
        let info = unsafe { libc::mallinfo2() };
        let glibc = Usage {
            // Chunks in use, and blocks too large for an arena (their own mmaps).
            live: (info.uordblks + info.hblkhd) as u64,
            held: (info.arena + info.hblkhd) as u64,
        };
        Heap { jemalloc, glibc }
    }
}

/// `codelupe_heap_live_bytes` and `codelupe_heap_held_bytes` by allocator, read at
/// each scrape.
pub struct HeapCollector {
    live: prometheus::IntGaugeVec,
    held: prometheus::IntGaugeVec,
}

impl HeapCollector {
    pub fn boxed() -> Box<dyn prometheus::core::Collector> {
        let gauge = |name: &str, help: &str| {
            prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), &["allocator"])
                .expect("valid metric")
        };
        Box::new(HeapCollector {
            live: gauge(
                "codelupe_heap_live_bytes",
                "Bytes the allocator has handed out and not had back.",
            ),
            held: gauge(
                "codelupe_heap_held_bytes",
                "Bytes the allocator keeps resident: live data, freed memory kept for reuse, its own books.",
            ),
        })
    }
}

impl prometheus::core::Collector for HeapCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.live
            .desc()
            .into_iter()
            .chain(self.held.desc())
            .collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let heap = Heap::now();
        for (allocator, usage) in [("jemalloc", heap.jemalloc), ("glibc", heap.glibc)] {
            self.live
                .with_label_values(&[allocator])
                .set(usage.live as i64);
            self.held
                .with_label_values(&[allocator])
                .set(usage.held as i64);
        }
        self.live
            .collect()
            .into_iter()
            .chain(self.held.collect())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether the thread it runs on keeps a jemalloc thread cache.
    fn thread_cache() -> bool {
        // SAFETY: a documented jemalloc control of type bool.
        unsafe { tikv_jemalloc_ctl::raw::read(b"thread.tcache.enabled\0").unwrap() }
    }

    fn decay() -> isize {
        // SAFETY: a documented jemalloc control of type ssize_t.
        unsafe { tikv_jemalloc_ctl::raw::read(b"arenas.dirty_decay_ms\0").unwrap() }
    }

    /// One test, as the decay is the process's: the CPU-bound runtime first.
    #[test]
    fn only_io_bound_work_runs_without_thread_caches_and_returns_freed_memory() {
        let cpu = runtime(Bound::Cpu).unwrap();
        assert!(cpu.block_on(cpu.spawn_blocking(thread_cache)).unwrap());
        assert_ne!(decay(), 0, "jemalloc keeps freed memory by default");

        let io = runtime(Bound::Io).unwrap();
        assert!(!io.block_on(io.spawn_blocking(thread_cache)).unwrap());
        assert!(!io.block_on(io.spawn(async { thread_cache() })).unwrap());
        assert_eq!(decay(), 0);
    }

    const MIB: u64 = 1 << 20;

    #[test]
    fn the_heap_counts_what_each_allocator_hands_out() {
        let before = Heap::now();
        let rust = vec![7u8; 64 * MIB as usize];
        // SAFETY: a plain allocation, written whole and freed below.
        let c = unsafe {
            let block = libc::malloc(32 * MIB as usize);
            assert!(!block.is_null());
            libc::memset(block, 7, 32 * MIB as usize);
            block
        };
        let during = Heap::now();
        // SAFETY: allocated above by malloc, freed once.
        unsafe { libc::free(c) };
        drop(rust);
        let after = Heap::now();

        // Margins: the other tests of this binary allocate and free meanwhile.
        assert!(
            during.jemalloc.live > before.jemalloc.live + 60 * MIB,
            "{before:?} {during:?}"
        );
        assert!(
            during.glibc.live > before.glibc.live + 30 * MIB,
            "{before:?} {during:?}"
        );
        for usage in [during.jemalloc, during.glibc] {
            assert!(usage.held >= usage.live, "{during:?}");
        }
        assert!(
            after.jemalloc.live + 32 * MIB < during.jemalloc.live,
            "{after:?}"
        );
        assert!(after.glibc.live + 16 * MIB < during.glibc.live, "{after:?}");
    }

    #[test]
    fn every_stage_registry_reports_both_heaps() {
        codelupe_runtime::telemetry::report_heap_with(HeapCollector::boxed);
        let families = codelupe_runtime::telemetry::new_registry().gather();
        for name in ["codelupe_heap_live_bytes", "codelupe_heap_held_bytes"] {
            let family = families.iter().find(|f| f.name() == name).expect(name);
            let mut allocators: Vec<(&str, f64)> = family
                .get_metric()
                .iter()
                .map(|m| (m.get_label()[0].value(), m.get_gauge().get_value()))
                .collect();
            allocators.sort_by(|a, b| a.0.cmp(b.0));
            assert_eq!(allocators.len(), 2, "{name}: {allocators:?}");
            assert_eq!((allocators[0].0, allocators[1].0), ("glibc", "jemalloc"));
            assert!(allocators[1].1 > 0.0, "{name}: jemalloc reports nothing");
        }
    }
}
