//! Running an untrusted program (a model's completion with a benchmark's tests) so it
//! can neither harm the machine nor reach the network.
//!
//! Every program runs in a temporary folder, in a process group of its own, under
//! rlimits (CPU seconds, address space, file size, open files) and a wall-clock
//! deadline after which its whole group is killed. Run as root, the sandbox also gives
//! it:
//! - a user id of its own, leased for the run (a lock file per id, so sandboxes in
//!   other threads and processes never share one), so it can touch no file or
//!   process of anyone else's, `RLIMIT_NPROC` bounds a fork bomb, and every
//!   process it left behind, even ones that left its group, is killed by user id;
//! - a new network namespace (no interface but a loopback that is down);
//! - a new mount namespace in which every filesystem is read-only but its working
//!   folder, a size-capped tmpfs;
//! - `no_new_privs`, so no setuid binary lifts it back.
//!
//! Not root, only the first paragraph holds, and `Isolation::Limited` says so. There
//! is no seccomp filter: the kernel's syscalls are all reachable, under the above.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::os::unix::fs::MetadataExt as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;

/// The user ids programs run as, `UID_BASE..UID_BASE + UIDS`: ids no distribution
/// hands out, with no entry in /etc/passwd.
pub const UID_BASE: u32 = 61_000;
const UIDS: u32 = 1024;

/// What a new sandbox runs first.
const PROBE: &str = "import sys\nsys.exit(0)\n";

/// What one program may use.
#[derive(Debug, Clone, Serialize)]
pub struct Limits {
    /// Killed, with every process it started, after this long.
    pub wall: Duration,
    pub cpu_seconds: u64,
    /// Address space (RLIMIT_AS).
    pub memory_bytes: u64,
    /// The largest file it may write, its stdout and stderr included.
    pub file_bytes: u64,
    /// Its working folder's size (root only: a tmpfs).
    pub folder_bytes: u64,
    /// Processes of its user id at once (root only: a user id of its own).
    pub processes: u64,
    pub open_files: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            wall: Duration::from_secs(10),
            cpu_seconds: 10,
            memory_bytes: 1 << 30,
            file_bytes: 16 << 20,
            folder_bytes: 64 << 20,
            processes: 32,
            open_files: 64,
        }
    }
}

/// What keeps a program in beyond its rlimits, deadline and process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Isolation {
    /// Its own user id, network namespace and read-only filesystems.
    Full,
    /// Only rlimits, a deadline and a process group, and why no more.
    Limited { why: String },
}

impl std::fmt::Display for Isolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Isolation::Full => f.write_str(
                "own user id, no network (new network namespace), filesystems read-only \
                 but a tmpfs working folder, rlimits, deadline",
            ),
            Isolation::Limited { why } => write!(
                f,
                "rlimits, deadline and process group only; NO network or filesystem \
                 isolation ({why})"
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Passed,
    Failed,
    TimedOut,
}

/// How one program ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: Verdict,
    /// "exit 1", "signal 9", "timed out after 10 s".
    pub ending: String,
    /// The last 2 KiB of its stderr.
    pub stderr_tail: String,
    pub elapsed: Duration,
    /// The user id it ran as (root only).
    pub uid: Option<u32>,
}

pub struct Sandbox {
    interpreter: PathBuf,
    limits: Limits,
    isolation: Isolation,
    /// Every mount point with its per-mount flags, "/" first (made read-only).
    mounts: Vec<(CString, libc::c_ulong)>,
}

impl Sandbox {
    /// A sandbox running `interpreter` (a Python 3), as isolated as this process may
    /// make it; it tries a trivial program first and says why it cannot run one.
    pub fn new(interpreter: &Path, limits: Limits) -> anyhow::Result<Self> {
        if !interpreter.is_file() {
            bail!("no interpreter at {}", interpreter.display());
        }
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut sandbox = Self {
            interpreter: interpreter.to_path_buf(),
            limits,
            isolation: if root {
                Isolation::Full
            } else {
                Isolation::Limited {
                    why: "not running as root".into(),
                }
            },
            mounts: if root { mount_points()? } else { Vec::new() },
        };
        if root {
            // Orphans of a program are reparented here, to be reaped after its sweep.
            // SAFETY: prctl with these arguments only sets a flag of this process.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
        }
        // A trivial program: run fully isolated where the kernel lets it (a refusal
        // shows as an error starting it), else with what is left.
        let probe = match sandbox.run(PROBE) {
            Err(e) if root => {
                sandbox.isolation = Isolation::Limited {
                    why: format!("the kernel refused namespaces or a user id: {e:#}"),
                };
                sandbox.mounts.clear();
                sandbox.run(PROBE)?
            }
            probe => probe?,
        };
        if probe.verdict != Verdict::Passed {
            bail!(
                "{} does not run a trivial program in the sandbox ({}): {}",
                interpreter.display(),
                probe.ending,
                probe.stderr_tail
            );
        }
        Ok(sandbox)
    }

    pub fn isolation(&self) -> &Isolation {
        &self.isolation
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Runs `program`: passed when it exits 0 within the deadline. Safe to call from
    /// many threads at once.
    pub fn run(&self, program: &str) -> anyhow::Result<Outcome> {
        let dir = tempfile::Builder::new()
            .prefix("codelupe-sandbox-")
            .tempdir()
            .context("cannot make the sandbox's folder")?;
        let program_path = dir.path().join("program.py");
        let work = dir.path().join("work");
        std::fs::write(&program_path, program)?;
        std::fs::create_dir(&work)?;
        let stderr_path = dir.path().join("stderr");
        let stdout = File::create(dir.path().join("stdout"))?;
        let stderr = File::create(&stderr_path)?;
        let full = self.isolation == Isolation::Full;
        let lease = if full { Some(UidLease::take()?) } else { None };
        let uid = lease.as_ref().map_or(0, |l| l.uid);
        if full {
            for path in [dir.path(), &program_path, &work] {
                std::os::unix::fs::chown(path, Some(uid), Some(uid))?;
            }
        }
        let entry = Entry {
            full,
            uid,
            work: c_path(&work)?,
            tmpfs: CString::new(format!(
                "size={},mode=0700,uid={uid},gid={uid}",
                self.limits.folder_bytes
            ))?,
            mounts: self.mounts.clone(),
            limits: self.limits.clone(),
        };
        let mut command = Command::new(&self.interpreter);
        command
            .args(["-I", "-B"])
            .arg(&program_path)
            .current_dir(&work)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("LANG", "C.UTF-8")
            .env("HOME", &work)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // SAFETY: `enter` makes only async-signal-safe system calls and allocates nothing.
        unsafe { command.pre_exec(move || entry.enter()) };
        let started = Instant::now();
        let mut child = command
            .spawn()
            .context("cannot start the sandboxed program")?;
        let status = wait_until(&mut child, self.limits.wall);
        // Whatever it started dies with it, in its group or (root) by user id.
        // SAFETY: kill has no memory preconditions; setsid made the group's id its pid.
        unsafe { libc::kill(-(child.id() as libc::pid_t), libc::SIGKILL) };
        let status = match status? {
            Some(status) => Some(status),
            None => {
                child.wait()?;
                None
            }
        };
        if full {
            sweep(uid, &self.interpreter)?;
        }
        let elapsed = started.elapsed();
        let (verdict, ending) = match status {
            None => (
                Verdict::TimedOut,
                format!("timed out after {} s", self.limits.wall.as_secs_f64()),
            ),
            Some(s) if s.success() => (Verdict::Passed, "exit 0".into()),
            Some(s) => (Verdict::Failed, describe(s)),
        };
        Ok(Outcome {
            verdict,
            ending,
            stderr_tail: tail(&stderr_path, 2048),
            elapsed,
            uid: lease.map(|l| l.uid),
        })
    }
}

/// A user id no other sandbox uses while this is held: an exclusive lock on a file
/// named after it, released when dropped (or when the process dies).
struct UidLease {
    uid: u32,
    _lock: File,
}

impl UidLease {
    fn take() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join("codelupe-sandbox-uids");
        std::fs::create_dir_all(&dir)?;
        for uid in UID_BASE..UID_BASE + UIDS {
            let lock = File::create(dir.join(uid.to_string()))?;
            if lock.try_lock().is_ok() {
                return Ok(Self { uid, _lock: lock });
            }
        }
        bail!("all {UIDS} sandbox user ids are in use")
    }
}

/// What the child does between fork and exec. Only system calls: no allocation, no
/// locks (the parent may have had other threads).
struct Entry {
    full: bool,
    uid: u32,
    work: CString,
    tmpfs: CString,
    mounts: Vec<(CString, libc::c_ulong)>,
    limits: Limits,
}

impl Entry {
    fn enter(&self) -> std::io::Result<()> {
        // SAFETY: each call is a plain system call on pointers that outlive it.
        unsafe {
            check(libc::setsid())?;
            if self.full {
                self.isolate()?;
            }
            check(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0))?;
        }
        let l = &self.limits;
        limit(libc::RLIMIT_CPU, l.cpu_seconds)?;
        limit(libc::RLIMIT_AS, l.memory_bytes)?;
        limit(libc::RLIMIT_FSIZE, l.file_bytes)?;
        limit(libc::RLIMIT_NOFILE, l.open_files)?;
        limit(libc::RLIMIT_CORE, 0)?;
        if self.full {
            // Counted per user id, which is this slot's own.
            limit(libc::RLIMIT_NPROC, l.processes)?;
            // SAFETY: plain system calls; the ids are ints.
            unsafe {
                check(libc::setgroups(0, std::ptr::null()))?;
                check(libc::setgid(self.uid))?;
                check(libc::setuid(self.uid))?;
            }
        }
        Ok(())
    }

    /// New mount and network namespaces; the working folder becomes a tmpfs and
    /// every other mount read-only.
    unsafe fn isolate(&self) -> std::io::Result<()> {
        let none = std::ptr::null();
        check(libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWNET))?;
        check(libc::mount(
            none,
            c"/".as_ptr(),
            none,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        check(libc::mount(
            c"codelupe-sandbox".as_ptr(),
            self.work.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            self.tmpfs.as_ptr().cast(),
        ))?;
        for (i, (point, flags)) in self.mounts.iter().enumerate() {
            let done = libc::mount(
                none,
                point.as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | flags,
                std::ptr::null(),
            );
            // The root must be read-only; a pseudo filesystem that refuses is let be.
            if done != 0 && i == 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        check(libc::chdir(self.work.as_ptr()))
    }
}

fn check(result: libc::c_int) -> std::io::Result<()> {
    if result < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn limit(resource: libc::__rlimit_resource_t, value: u64) -> std::io::Result<()> {
    let soft = libc::rlimit {
        rlim_cur: value,
        // One more CPU second before SIGKILL, so SIGXCPU can end it first.
        rlim_max: if resource == libc::RLIMIT_CPU {
            value + 1
        } else {
            value
        },
    };
    // SAFETY: setrlimit reads the struct it is given.
    check(unsafe { libc::setrlimit(resource, &soft) })
}

fn c_path(path: &Path) -> anyhow::Result<CString> {
    Ok(CString::new(path.as_os_str().as_encoded_bytes())?)
}

/// The child's status, or None when it is still running at the deadline.
fn wait_until(child: &mut Child, wall: Duration) -> anyhow::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + wall;
    let mut pauses = polling_pauses();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(pauses.next().expect("endless"));
    }
}

/// Pauses between two looks at processes: 1 ms, doubling up to 20 ms, for ever.
fn polling_pauses() -> impl Iterator<Item = Duration> {
    std::iter::successors(Some(Duration::from_millis(1)), |pause| {
        Some((*pause * 2).min(Duration::from_millis(20)))
    })
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        _ => status.to_string(),
    }
}

/// How long a sweep may take: a process SIGKILLed in uninterruptible sleep (a page
/// fault on a busy disk) dies only when that I/O ends, so the bound is a time, not a
/// count of rounds (200 rounds, well under a second, once fell short under load).
const SWEEP_FOR: Duration = Duration::from_secs(10);

/// Kills every process of `uid` until none is left, and reaps those orphaned to us.
fn sweep(uid: u32, any_binary: &Path) -> anyhow::Result<()> {
    let deadline = Instant::now() + SWEEP_FOR;
    let mut pauses = polling_pauses();
    while Instant::now() < deadline {
        let processes = processes_of(uid);
        // SAFETY: getpid has no preconditions.
        let me = unsafe { libc::getpid() };
        for p in processes.iter().filter(|p| p.zombie && p.parent == me) {
            // SAFETY: waitpid on a zombie child of ours; no status is read.
            unsafe { libc::waitpid(p.pid, std::ptr::null_mut(), libc::WNOHANG) };
        }
        if processes.iter().all(|p| p.zombie) {
            return Ok(());
        }
        kill_all_as(uid, any_binary)?;
        std::thread::sleep(pauses.next().expect("endless"));
    }
    bail!("processes of user id {uid} outlived {SWEEP_FOR:?} of sweeps")
}

/// kill(-1) from a process of `uid` signals exactly that user's processes (but
/// itself), so no pid read from /proc can have been reused by someone else's.
fn kill_all_as(uid: u32, any_binary: &Path) -> anyhow::Result<()> {
    let mut killer = Command::new(any_binary);
    // SAFETY: system calls only; the child ends in _exit, never returning to Rust.
    unsafe {
        killer.pre_exec(move || {
            check(libc::setgroups(0, std::ptr::null()))?;
            check(libc::setgid(uid))?;
            check(libc::setuid(uid))?;
            libc::kill(-1, libc::SIGKILL);
            libc::_exit(0)
        })
    };
    killer
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    killer.status().context("cannot start the sweep")?;
    Ok(())
}

struct Process {
    pid: libc::pid_t,
    parent: libc::pid_t,
    zombie: bool,
}

fn processes_of(uid: u32) -> Vec<Process> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: libc::pid_t = e.file_name().to_str()?.parse().ok()?;
            if e.metadata().ok()?.uid() != uid {
                return None;
            }
            let stat = std::fs::read_to_string(e.path().join("stat")).ok()?;
            // "pid (comm) S ppid …": comm may hold anything, so read after its ')'.
            let mut rest = stat[stat.rfind(')')? + 1..].split_whitespace();
            let state = rest.next()?;
            let parent = rest.next()?.parse().ok()?;
            Some(Process {
                pid,
                parent,
                zombie: state == "Z",
            })
        })
        .collect()
}

/// Every mount point of this process with the per-mount flags a bind remount must
/// keep, "/" first.
fn mount_points() -> anyhow::Result<Vec<(CString, libc::c_ulong)>> {
    let table = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    let mut points: Vec<(CString, libc::c_ulong)> = table
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let point = unescape(fields.get(4)?);
            let flags = fields
                .get(5)?
                .split(',')
                .map(mount_flag)
                .fold(0, |a, f| a | f);
            Some((CString::new(point).ok()?, flags))
        })
        .collect();
    points.sort_by_key(|(p, _)| p.as_bytes() != b"/");
    points.dedup_by(|a, b| a.0 == b.0);
    Ok(points)
}

fn mount_flag(option: &str) -> libc::c_ulong {
    match option {
        "nosuid" => libc::MS_NOSUID,
        "nodev" => libc::MS_NODEV,
        "noexec" => libc::MS_NOEXEC,
        "noatime" => libc::MS_NOATIME,
        "nodiratime" => libc::MS_NODIRATIME,
        "relatime" => libc::MS_RELATIME,
        _ => 0,
    }
}

/// mountinfo writes space, tab, newline and backslash as octal escapes.
fn unescape(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|d| {
            std::str::from_utf8(d)
                .ok()
                .and_then(|d| u8::from_str_radix(d, 8).ok())
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}

/// The last `max` bytes of a file, as text.
fn tail(path: &Path, max: u64) -> String {
    let Ok(mut file) = File::open(path) else {
        return String::new();
    };
    let len = file.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
    let mut bytes = Vec::new();
    let _ = file.take(max).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The interpreter programs run with: the system's Python 3 where there is one (a
/// virtual environment's may live in a folder the sandbox's user cannot read).
pub fn default_interpreter() -> PathBuf {
    let system = PathBuf::from("/usr/bin/python3");
    if system.is_file() {
        return system;
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join("python3"))
        .find(|p| p.is_file())
        .unwrap_or(system)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/with\040space"), b"/mnt/with space");
        assert_eq!(unescape("/plain"), b"/plain");
        assert_eq!(unescape(r"/odd\"), b"/odd\\");
    }

    #[test]
    fn the_root_is_remounted_first() {
        let points = mount_points().unwrap();
        assert_eq!(points[0].0.as_c_str(), c"/");
    }
}
