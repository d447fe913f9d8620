//! The clone store as a claim check against the shared folder it replaced, on the same
//! repositories (crate sources Cargo downloaded, served by `git daemon` on 127.0.0.1):
//!
//! - before: the bare shallow clone stayed in a shared folder, and the processor opened
//!   it there (bytes stored: the clone directory);
//! - after: the clone is made in the downloader's working folder, its pack (the one its
//!   shallow fetch received) written to the store (upload), then read back by reference, checked and indexed
//!   into a temporary repository (read), as the processor does (bytes stored: the pack).
//!
//! Per repository, medians of ROUNDS rounds: clone ms, pack + upload ms, read ms, and
//! bytes stored either way; then totals and ratios. The local folder store always; the
//! S3 server too when `AWS_ENDPOINT` and `TEST_S3_BUCKET` are set (`tests/s3/server.sh
//! up` and `eval "$(tests/s3/server.sh env)"`).
//!
//!     cargo bench -p codelupe-downloader --bench clone_store

use std::time::{Duration, Instant};

use codelupe_clone_store::{self as clone_store, CloneStore};
use codelupe_downloader::clone::{clone_bare, Limits, Source};
use codelupe_testkit::bench::{disk_bytes, median, served_crates, ROUNDS};

struct Row {
    clone: Duration,
    upload: Duration,
    read: Duration,
    clone_bytes: u64,
    pack_bytes: u64,
}

#[tokio::main]
async fn main() {
    let (dir, names, daemon) = served_crates(5);
    let out = dir.path().join("out");
    let limits = Limits {
        max_bytes: 1 << 30,
        timeout: Duration::from_secs(600),
    };

    let mut stores = vec![(
        "local folder".to_string(),
        CloneStore::open(dir.path().join("store").to_str().unwrap()).unwrap(),
    )];
    match (
        std::env::var("AWS_ENDPOINT"),
        std::env::var("TEST_S3_BUCKET"),
    ) {
        (Ok(endpoint), Ok(bucket)) => stores.push((
            format!("S3 ({endpoint})"),
            CloneStore::open(&format!("s3://{bucket}/bench-{}", std::process::id())).unwrap(),
        )),
        _ => println!("(no S3 server in the environment: the local folder store only)"),
    }

    for (i, (label, store)) in stores.iter().enumerate() {
        println!("\nclone store: {label}, {ROUNDS} rounds, medians");
        println!("repository              clone ms  pack+upload ms  read ms  bare clone KiB  pack KiB  pack/clone");
        let mut rows = Vec::new();
        for name in &names {
            let source = Source {
                url: daemon.url(&format!("{name}.git")),
                host: "127.0.0.1".into(),
                shallow: true,
            };
            let (mut clones, mut uploads, mut reads) = (Vec::new(), Vec::new(), Vec::new());
            let (mut clone_bytes, mut pack_bytes) = (0, 0);
            for round in 0..ROUNDS {
                let target = out.join(format!("{i}-{name}-{round}.git"));
                let t = Instant::now();
                let repo = clone_bare(&source, &target, limits, None).unwrap();
                clones.push(t.elapsed());
                clone_bytes = disk_bytes(&target);

                let t = Instant::now();
                let head = repo.head().unwrap().peel_to_commit().unwrap().id();
                let pack = clone_store::pack_of(&repo, head).unwrap();
                let reference = store.put_pack(pack.into()).await.unwrap();
                uploads.push(t.elapsed());
                pack_bytes = reference.bytes as u64;

                let t = Instant::now();
                let read = store.read_pack(&reference).await.unwrap();
                let into = out.join(format!("{i}-{name}-{round}-read.git"));
                let indexed = clone_store::unpack(&read, &into).unwrap();
                indexed.find_commit(head).unwrap().tree().unwrap();
                reads.push(t.elapsed());
            }
            let row = Row {
                clone: median(clones),
                upload: median(uploads),
                read: median(reads),
                clone_bytes,
                pack_bytes,
            };
            println!(
                "{name:<22} {:>9.1} {:>15.1} {:>8.1} {:>15.0} {:>9.0} {:>10.2}",
                ms(row.clone),
                ms(row.upload),
                ms(row.read),
                row.clone_bytes as f64 / 1024.0,
                row.pack_bytes as f64 / 1024.0,
                row.pack_bytes as f64 / row.clone_bytes as f64
            );
            rows.push(row);
        }
        let sum = |f: fn(&Row) -> f64| rows.iter().map(f).sum::<f64>();
        let (clone, upload, read) = (
            sum(|r| ms(r.clone)),
            sum(|r| ms(r.upload)),
            sum(|r| ms(r.read)),
        );
        let (clone_kib, pack_kib) = (
            sum(|r| r.clone_bytes as f64 / 1024.0),
            sum(|r| r.pack_bytes as f64 / 1024.0),
        );
        println!(
            "total                  {clone:>9.1} {upload:>15.1} {read:>8.1} {clone_kib:>15.0} {pack_kib:>9.0} {:>10.2}",
            pack_kib / clone_kib
        );
        println!(
            "per repository: upload + read {:.1} ms on top of a {:.1} ms clone ({:.2}x the clone's time); \
             bytes stored {:.2}x the bare clone's",
            (upload + read) / rows.len() as f64,
            clone / rows.len() as f64,
            (clone + upload + read) / clone,
            pack_kib / clone_kib
        );
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
