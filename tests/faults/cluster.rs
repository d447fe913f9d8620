//! The pipeline as separate processes (every stage of topology.yaml, two replicas of
//! each scalable one) and the faults done to it: SIGKILL and restart, poison values
//! produced with kcat. The brokers' faults are in brokers.rs.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use codelupe_runtime::kafka::LagReader;

use crate::support::{brokers, free_port, http_get, lag_readers, repo_root};

/// Each stage and how many replicas of it run.
pub const STAGES: [(&str, usize); 7] = [
    ("crawler", 1),
    ("downloader", 2),
    ("processor", 2),
    ("neardup", 2),
    ("batcher", 2),
    ("export", 2),
    ("trainer", 1),
];

/// Starts the line the harness writes into a replica's log when it ended on its own.
const EXIT_MARK: &str = "=== fault harness: the replica ended on its own:";

/// Unplanned exits of one replica that make a crash loop, wherever its group stood.
pub const CRASH_LOOP: usize = 3;

/// The secret every stage is given as GITHUB_TOKEN; no host but GitHub may see it.
pub const TOKEN: &str = "ghp_fault-harness-secret";

pub struct Replica {
    pub stage: &'static str,
    pub index: usize,
    pub port: u16,
    child: Option<Child>,
    /// At each time it ended without being killed by the harness, its group's committed offset of each input partition,
    /// when input was left to read (None: the group had read everything, or its
    /// offsets could not be read).
    exits_at: Vec<Option<Vec<(i32, i64)>>>,
}

impl Replica {
    pub fn name(&self) -> String {
        format!("{}-{}", self.stage, self.index)
    }
}

pub struct Cluster {
    pub replicas: Vec<Replica>,
    config: PathBuf,
    topology: PathBuf,
    logs: PathBuf,
    /// Each consuming stage's group on its input, to tell where a replica ended.
    inputs: Vec<(String, LagReader)>,
}

fn binary(stage: &str) -> PathBuf {
    let codelupe = PathBuf::from(env!("CARGO_BIN_EXE_codelupe"));
    if stage != "trainer" {
        return codelupe;
    }
    let trainer = codelupe.with_file_name(codelupe_trainer_api::BINARY);
    assert!(
        trainer.exists(),
        "{} is not built: `cargo build -p codelupe-trainer` (tests/run builds the workspace)",
        trainer.display()
    );
    trainer
}

impl Cluster {
    /// Starts every replica on the topics of `suffix`; their stderr goes to
    /// `<logs>/<stage>-<i>.log`.
    pub fn start(config: &Path, topology: &Path, logs: &Path, suffix: &str) -> Self {
        std::fs::create_dir_all(logs).unwrap();
        let mut cluster = Self {
            replicas: Vec::new(),
            config: config.to_path_buf(),
            topology: topology.to_path_buf(),
            logs: logs.to_path_buf(),
            inputs: lag_readers(suffix, &[]),
        };
        for (stage, replicas) in STAGES {
            for index in 0..replicas {
                let mut replica = Replica {
                    stage,
                    index,
                    port: free_port(),
                    child: None,
                    exits_at: Vec::new(),
                };
                replica.child = Some(cluster.spawn(&replica));
                cluster.replicas.push(replica);
            }
        }
        cluster
    }

    pub fn log(&self, replica: &Replica) -> PathBuf {
        self.logs.join(format!("{}.log", replica.name()))
    }

    /// Each replica that ended on its own: how often, and the last lines it wrote.
    pub fn exit_reasons(&self) -> String {
        let mut out = String::from("unplanned exits (restarted): ");
        if self.replicas.iter().all(|r| r.exits_at.is_empty()) {
            out.push_str("none\n");
        }
        for replica in self.replicas.iter().filter(|r| !r.exits_at.is_empty()) {
            let log = std::fs::read_to_string(self.log(replica)).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            out.push_str(&format!(
                "{} ended {} times; its log before each end:\n",
                replica.name(),
                replica.exits_at.len()
            ));
            for (at, _) in lines
                .iter()
                .enumerate()
                .filter(|(_, l)| l.starts_with(EXIT_MARK))
            {
                out.push_str(&lines[at.saturating_sub(8)..=at].join("\n"));
                out.push('\n');
            }
        }
        out
    }

    fn spawn(&self, replica: &Replica) -> Child {
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(replica))
            .unwrap();
        Command::new(binary(replica.stage))
            .current_dir(repo_root())
            .arg("--config")
            .arg(&self.config)
            .arg("--topology")
            .arg(&self.topology)
            .arg("stage")
            // The trainer's binary runs only the trainer.
            .args((replica.stage != "trainer").then_some(replica.stage))
            .env(
                format!(
                    "CODELUPE_STAGES__{}__METRICS_PORT",
                    replica.stage.to_uppercase()
                ),
                replica.port.to_string(),
            )
            .env("CODELUPE_LOG", "warn")
            .env("GITHUB_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    /// SIGKILL, then a fresh process in its place (same port, same config).
    pub fn kill_and_restart(&mut self, i: usize, down_for: Duration) {
        if let Some(mut child) = self.replicas[i].child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
        std::thread::sleep(down_for);
        let child = self.spawn(&self.replicas[i]);
        self.replicas[i].child = Some(child);
    }

    /// Restarts replicas that ended on their own, as an orchestrator's restart policy
    /// would, counting each.
    pub fn restart_exited(&mut self) {
        for i in 0..self.replicas.len() {
            let exited = match self.replicas[i].child.as_mut() {
                Some(child) => child.try_wait().unwrap(),
                None => None,
            };
            if let Some(status) = exited {
                let at = self.input_left(self.replicas[i].stage);
                self.replicas[i].exits_at.push(at);
                // The life that ended is told from the next one in the log.
                let mut log = OpenOptions::new()
                    .append(true)
                    .open(self.log(&self.replicas[i]))
                    .unwrap();
                writeln!(log, "{EXIT_MARK} {status}; restarted").unwrap();
                let child = self.spawn(&self.replicas[i]);
                self.replicas[i].child = Some(child);
            }
        }
    }

    /// Where `stage`'s group stood on its input: the committed offset of each
    /// partition, when some input was left to read.
    fn input_left(&mut self, stage: &str) -> Option<Vec<(i32, i64)>> {
        let (_, reader) = self.inputs.iter_mut().find(|(name, _)| name == stage)?;
        let unread = reader.unread().ok()?;
        let left = unread.iter().any(|(_, from, high)| from < high);
        left.then(|| unread.iter().map(|(p, from, _)| (*p, *from)).collect())
    }

    /// Replicas crash-looping: ended twice with their group at the same offsets and
    /// input left to read (the same record met again after a restart), or ended on
    /// their own `CRASH_LOOP` times or more. A one-off exit (a broker outage
    /// outlasting the start-up retries) is neither.
    pub fn crash_looping(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter_map(|r| crash_loop(&r.exits_at).map(|why| format!("{} {why}", r.name())))
            .collect()
    }

    /// Replicas whose /readyz does not answer 200.
    pub fn not_ready(&self) -> Vec<String> {
        self.replicas
            .iter()
            .filter(|r| !matches!(http_get(r.port, "/readyz"), Ok((200, _))))
            .map(Replica::name)
            .collect()
    }

    /// SIGTERM to every replica; the ones that do not exit within 30 s are killed.
    /// Returns the replicas that did not exit cleanly.
    pub fn stop(&mut self) -> Vec<String> {
        for replica in &self.replicas {
            if let Some(child) = &replica.child {
                let _ = Command::new("kill")
                    .args(["-TERM", &child.id().to_string()])
                    .status();
            }
        }
        let mut unclean = Vec::new();
        for replica in &mut self.replicas {
            let Some(mut child) = replica.child.take() else {
                continue;
            };
            let mut status = None;
            for _ in 0..150 {
                if let Some(s) = child.try_wait().unwrap() {
                    status = Some(s);
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            match status {
                Some(s) if s.success() => {}
                other => {
                    let _ = child.kill();
                    let _ = child.wait();
                    unclean.push(format!("{} ({other:?})", replica.name()));
                }
            }
        }
        unclean
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut child) = replica.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// The kinds of poison produced into every topic, each derived from one real record of
/// the topic so only the named part is wrong.
pub const POISON: [&str; 4] = ["not_avro", "wrong_fingerprint", "truncated", "oversized"];

fn poison_value(kind: &str, real: &[u8]) -> Vec<u8> {
    match kind {
        "not_avro" => b"{\"this\": \"is JSON, not Avro\"}".to_vec(),
        // Avro single-object header: C3 01, then the schema's 8-byte fingerprint.
        "wrong_fingerprint" => {
            let mut value = real.to_vec();
            value[2..10].copy_from_slice(&[0xAB; 8]);
            value
        }
        "truncated" => real[..real.len() / 2].to_vec(),
        "oversized" => {
            let mut value = real[..10].to_vec();
            value.extend(crate::support::incompressible(900 * 1024, 11));
            value
        }
        _ => unreachable!("{kind}"),
    }
}

/// Produces each kind of poison into `topic` with kcat, keyed `poison-<kind>`.
pub fn poison(topic: &str, real: &[u8], scratch: &Path) {
    for kind in POISON {
        let file = scratch.join(format!("{topic}-{kind}.bin"));
        std::fs::write(&file, poison_value(kind, real)).unwrap();
        let out = Command::new("kcat")
            .args(["-P", "-b", &brokers(), "-t", topic, "-k"])
            .arg(format!("poison-{kind}"))
            .arg(&file)
            .output()
            .expect("kcat is installed (setup/deps.sh)");
        assert!(
            out.status.success(),
            "kcat into {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Records that decode and carry hostile contents, each shaped from a real one (`real`
/// gives a topic's first record) and keyed `poison-forged-<kind>`: a clone URL of
/// 450 kB (its letter must stay bounded), a batch with the trainer's tokenizer whose
/// token id is past the vocabulary (a crash loop before), and a dead letter naming the
/// batcher's dedup state as its topic (which `dead-letters replay` must refuse).
pub fn forge(topic: impl Fn(&str) -> String, real: impl Fn(&str) -> Vec<u8>) {
    use codelupe_runtime::records::{now_ms, DeadLetter, RepoUrl, TrainingBatch};
    use codelupe_runtime::AvroRecord;
    let mut url = RepoUrl::decode(&real("repo-urls")).unwrap();
    url.full_name = "forged/huge-url".into();
    url.clone_url = format!("{}://127.0.0.1/forged/huge-url.git", "x".repeat(450_000));
    let mut batch = TrainingBatch::decode(&real("training-batches")).unwrap();
    batch.batch_id = "poison-forged-token-id".into();
    batch.token_ids[1] = 1_000_000;
    let letter = DeadLetter {
        stage: "batcher".into(),
        reason: "forged".into(),
        error: "forged".into(),
        topic: topic("batcher-seen"),
        partition: 0,
        offset: 0,
        attempts: 1,
        key: Some(b"poison-forged-letter".to_vec()),
        value: Some(b"forged mark".to_vec()),
        failed_at_ms: now_ms(),
    };
    let records = [
        ("repo-urls", "huge-url", url.encode().unwrap()),
        ("training-batches", "token-id", batch.encode().unwrap()),
        ("dead-letters", "letter", letter.encode().unwrap()),
    ];
    let rt = tokio::runtime::Runtime::new().unwrap();
    for (name, kind, value) in records {
        let key = format!("poison-forged-{kind}");
        rt.block_on(crate::support::produce_all(
            &topic(name),
            vec![(key, value)],
        ));
    }
}

/// `codelupe dead-letters replay` of the forged letter: (stdout, stderr).
pub fn replay_forged(config: &Path, topology: &Path) -> (String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_codelupe"))
        .args(["--config", config.to_str().unwrap()])
        .args(["--topology", topology.to_str().unwrap()])
        .args(["dead-letters", "replay", "--reason", "forged"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Why a replica that ended on its own at `exits_at` (where its group stood each
/// time) is crash-looping, if it is.
fn crash_loop(exits_at: &[Option<Vec<(i32, i64)>>]) -> Option<String> {
    let stood: Vec<&Vec<(i32, i64)>> = exits_at.iter().flatten().collect();
    let twice = (1..stood.len()).find_map(|i| stood[..i].contains(&stood[i]).then_some(stood[i]));
    match twice {
        Some(offsets) => Some(format!("ended twice at input offsets {offsets:?}")),
        None if exits_at.len() >= CRASH_LOOP => Some(format!("ended {} times", exits_at.len())),
        None => None,
    }
}

#[test]
fn a_replica_ending_twice_where_its_group_stood_still_is_crash_looping() {
    let at = |offsets: &[(i32, i64)]| Some(offsets.to_vec());
    // Twice at the same offsets with input left: the same record met again.
    assert!(crash_loop(&[at(&[(0, 5), (1, 9)]), at(&[(0, 5), (1, 9)])]).is_some());
    // The group moved on between the two ends, or had read everything: no loop.
    assert!(crash_loop(&[at(&[(0, 5)]), at(&[(0, 6)])]).is_none());
    assert!(crash_loop(&[None, None]).is_none());
    // Three ends wherever it stood.
    assert!(crash_loop(&[None, at(&[(0, 1)]), None]).is_some());
}
