//! The crawler against a local stand-in for GitHub's REST Search API and the real
//! broker: window splitting past the 1,000-result cap, rate limits and faults, crash
//! and resume, and the URL-list and local-folder sources.

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use chrono::{TimeZone, Utc};
use codelupe_runtime::config::Config;
use codelupe_runtime::kafka::KafkaClients;
use codelupe_runtime::records::RepoUrl;
use codelupe_runtime::topology::Topology;
use codelupe_runtime::{AvroRecord, StageRuntime};
use support::fake_github::{FakeGithub, FakeRepo, Fault};
use support::*;
use tokio_util::sync::CancellationToken;

struct Setup {
    _dir: tempfile::TempDir,
    topology: PathBuf,
    config: PathBuf,
    output: String,
}

/// Topics of its own, created with `codelupe topology apply`, and a config whose crawler
/// options are `options` (YAML).
fn setup(options: &str) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (suffix, topology) = fresh_topics(dir.path(), "c");
    let config = dir.path().join("codelupe.yaml");
    let port = codelupe_testkit::free_port();
    std::fs::write(
        &config,
        format!(
            "kafka:\n  brokers: {}\n  dead_letter_topic: dead-letters-{suffix}\nstages:\n  crawler:\n    metrics_port: {port}\n    metrics_bind: 127.0.0.1\n    options:\n      state_topic: crawler-state-{suffix}\n      transactional_id: crawler-{suffix}\n{}",
            brokers(),
            options.lines().map(|l| format!("      {l}\n")).collect::<String>()
        ),
    )
    .unwrap();
    Setup {
        _dir: dir,
        topology,
        config,
        output: format!("repo-urls-{suffix}"),
    }
}

/// `codelupe stage crawler --once` with the setup's config and topology.
fn crawler_once(setup: &Setup) -> Command {
    let mut command = codelupe();
    command.args([
        "--config",
        setup.config.to_str().unwrap(),
        "--topology",
        setup.topology.to_str().unwrap(),
        "stage",
        "crawler",
        "--once",
    ]);
    command
}

/// One pass in this process; returns the stage's metrics registry.
async fn crawl_once(setup: &Setup) -> prometheus::Registry {
    let config = Config::load(Some(&setup.config)).unwrap();
    let topology = Topology::load(&setup.topology).unwrap();
    let clients = KafkaClients::new(brokers(), &config.kafka);
    let mut runtime = StageRuntime::resolve(
        "crawler",
        &topology,
        &config,
        clients,
        CancellationToken::new(),
    )
    .unwrap();
    runtime.once = true;
    let registry = runtime.registry.clone();
    codelupe_crawler::run(runtime).await.unwrap();
    registry
}

/// Published repositories, by name, with how often each was published.
fn published(topic: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for (key, value) in read_all(topic, Duration::from_secs(2)) {
        let repo = RepoUrl::decode(&value).expect("repo-urls record decodes");
        assert_eq!(repo.full_name, key);
        *counts.entry(key).or_insert(0) += 1;
    }
    counts
}

/// `n` Rust repositories pushed at distinct times through 2024.
fn repos(n: usize) -> Vec<FakeRepo> {
    let start = Utc
        .with_ymd_and_hms(2024, 1, 1, 0, 0, 0)
        .unwrap()
        .timestamp();
    let step = 365 * 86_400 / n as i64;
    (0..n)
        .map(|i| FakeRepo {
            full_name: format!("owner{}/repo{i}", i % 37),
            language: "Rust".into(),
            pushed_at: start + i as i64 * step,
            stars: 10 + (i as i64 * 7919) % 5000,
            clone_url: None,
        })
        .collect()
}

fn github_options(api: &str) -> String {
    format!("source: github\ngithub:\n  api_url: {api}\n  languages: [Rust]\n  since: 2024-01-01\n  until: 2024-12-31\n  max_backoff_s: 1\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_of_more_than_1000_is_fully_enumerated_by_window_splitting() {
    let all = repos(2_500);
    let github = FakeGithub::start(all.clone(), Duration::ZERO);
    let setup = setup(&github_options(&github.url));
    let registry = crawl_once(&setup).await;

    let counts = published(&setup.output);
    assert_eq!(counts.len(), 2_500, "every repository published");
    assert!(counts.values().all(|&c| c == 1), "each exactly once");
    assert_eq!(
        metric(&registry, "crawler_repos_indexed_total", None),
        2_500.0
    );
    let queries = github.queries();
    assert!(
        queries.len() > 25,
        "the range was split into windows: {} requests",
        queries.len()
    );
    assert!(queries
        .iter()
        .all(|q| q.contains("fork:false") && q.contains("language:\"Rust\"")));
    // A second pass publishes nothing again: nothing was pushed since.
    let again = crawl_once(&setup).await;
    assert_eq!(metric(&again, "crawler_repos_indexed_total", None), 0.0);
    assert_eq!(published(&setup.output).len(), 2_500);
}

/// Languages take turns of `turn_days` through the range, so a fresh crawl's stream
/// mixes them from the start; with turns of the whole range (0), one language's whole
/// backlog comes before the next language's first repository.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn languages_take_turns_through_the_range() {
    let mut all = Vec::new();
    for language in ["Rust", "Python", "Go"] {
        all.extend(repos(120).into_iter().map(|mut r| {
            r.full_name = format!("{}-{language}", r.full_name);
            r.language = language.into();
            r
        }));
    }
    // The order in which each language's queries came, one entry per query.
    let languages_queried = |turn_days: u32| {
        let all = all.clone();
        async move {
            let github = FakeGithub::start(all, Duration::ZERO);
            let options = github_options(&github.url)
                .replace("languages: [Rust]", "languages: [Rust, Python, Go]")
                + &format!("  turn_days: {turn_days}\n");
            let setup = setup(&options);
            crawl_once(&setup).await;
            assert_eq!(
                published(&setup.output).len(),
                360,
                "every repository published"
            );
            github
                .queries()
                .iter()
                .map(|q| q.split('"').nth(1).unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    let turns = languages_queried(30).await;
    let first_go = turns.iter().position(|l| l == "Go").unwrap();
    let last_rust = turns.iter().rposition(|l| l == "Rust").unwrap();
    assert!(first_go < 3, "Go's first turn comes third: {turns:?}");
    assert!(
        last_rust > turns.len() / 2,
        "Rust has turns to the end: {turns:?}"
    );
    let whole = languages_queried(0).await;
    let first_go = whole.iter().position(|l| l == "Go").unwrap();
    let last_rust = whole.iter().rposition(|l| l == "Rust").unwrap();
    assert!(
        last_rust < first_go,
        "one language's whole range at a time: {whole:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_server_errors_and_malformed_pages_are_waited_out_or_retried() {
    let github = FakeGithub::start(repos(300), Duration::ZERO);
    github.inject(&[
        Fault::RateLimit403 { secs: 1 },
        Fault::Retry429 { secs: 1 },
        Fault::BadGateway,
        Fault::MalformedBody,
    ]);
    let setup = setup(&github_options(&github.url));
    let registry = crawl_once(&setup).await;

    let counts = published(&setup.output);
    assert_eq!(counts.len(), 300);
    assert!(counts.values().all(|&c| c == 1));
    let errors = |reason| metric(&registry, "crawler_scrape_errors_total", Some(reason));
    assert_eq!(errors("rate_limited"), 2.0);
    assert_eq!(errors("server_error"), 1.0);
    assert_eq!(errors("malformed"), 1.0);
    assert!(
        metric(&registry, "crawler_scrape_duration_seconds", None) == 0.0,
        "histograms are not summed here"
    );
    assert!(metric(&registry, "crawler_rate_limit_remaining", None) > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_mid_crawl_it_resumes_from_its_cursor_and_publishes_nothing_twice() {
    let github = FakeGithub::start(repos(2_500), Duration::from_millis(40));
    let setup = setup(&github_options(&github.url));
    let crawler = |setup: &Setup| {
        crawler_once(setup)
            .env("GITHUB_TOKEN", "ghp_test_token_never_printed")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = KillOnDrop(crawler(&setup));
    let out = setup.output.clone();
    wait_for(
        "part of the crawl published",
        Duration::from_secs(120),
        || topic_size(&out, 6) >= 800,
    );
    first.0.kill().unwrap(); // SIGKILL, possibly inside a transaction
    first.0.wait().unwrap();
    let before = published(&setup.output);
    assert!(
        before.len() >= 100 && before.len() < 2_500,
        "killed mid-crawl: {} published",
        before.len()
    );
    let requests_before = github.queries().len();

    let second = crawler(&setup).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(
        second.status.success(),
        "restarted crawler failed:\n{stderr}"
    );
    assert!(
        !stderr.contains("ghp_test_token"),
        "the token leaked into the log"
    );
    let after = published(&setup.output);
    assert_eq!(after.len(), 2_500, "every repository published in the end");
    let twice: Vec<_> = after.iter().filter(|(_, &c)| c > 1).collect();
    assert!(twice.is_empty(), "published twice: {twice:?}");

    // Resumed from the cursor: the restart did not begin at the start of the range.
    let resumed = &github.queries()[requests_before];
    assert!(
        !resumed.contains("pushed:2024-01-01T00:00:00Z.."),
        "restart began from scratch: {resumed}"
    );
    let auth = github.shared.lock().unwrap().authorizations.clone();
    assert!(auth
        .iter()
        .all(|a| a.as_deref() == Some("Bearer ghp_test_token_never_printed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_url_list_source_publishes_valid_lines_and_reports_bad_ones_by_number() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("repos.txt");
    std::fs::write(
        &list,
        "# repositories to crawl\nhttps://github.com/rust-lang/rust\ntokio-rs/mini-redis\nnot a repository\nhttps://gitlab.example.com/group/project.git\n",
    )
    .unwrap();
    let setup = setup(&format!("source: url_list\nurl_list: {}\n", list.display()));
    let out = crawler_once(&setup).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("line 4:"),
        "the bad line is reported by number:\n{}",
        text(&out)
    );

    let mut records: Vec<RepoUrl> = read_all(&setup.output, Duration::from_secs(2))
        .into_iter()
        .map(|(_, v)| RepoUrl::decode(&v).unwrap())
        .collect();
    records.sort_by(|a, b| a.full_name.cmp(&b.full_name));
    let got: Vec<(&str, &str, &str)> = records
        .iter()
        .map(|r| {
            (
                r.full_name.as_str(),
                r.clone_url.as_str(),
                r.source.as_str(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (
                "group/project",
                "https://gitlab.example.com/group/project.git",
                "url_list"
            ),
            (
                "rust-lang/rust",
                "https://github.com/rust-lang/rust.git",
                "url_list"
            ),
            (
                "tokio-rs/mini-redis",
                "https://github.com/tokio-rs/mini-redis.git",
                "url_list"
            ),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_state_entry_is_skipped_instead_of_keeping_the_crawler_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    let list = dir.path().join("repos.txt");
    std::fs::write(&list, "tokio-rs/mini-redis\nrust-lang/rust\n").unwrap();
    let setup = setup(&format!("source: url_list\nurl_list: {}\n", list.display()));
    let state_topic = setup.output.replace("repo-urls", "crawler-state");
    // Written by anyone with produce rights: not Avro, and Avro's magic cut short.
    produce_to_partition(&state_topic, 0, "repo/rust-lang/rust", b"not avro").await;
    produce_to_partition(&state_topic, 0, "cursor/q", &[0xC3, 0x01, 0x00]).await;

    let out = crawler_once(&setup).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("undecodable state entry skipped"),
        "{}",
        text(&out)
    );
    assert_eq!(published(&setup.output).len(), 2);
}

fn git_repo(path: &Path, bare: bool) {
    std::fs::create_dir_all(path).unwrap();
    let repo = if bare {
        git2::Repository::init_bare(path)
    } else {
        git2::Repository::init(path)
    }
    .unwrap();
    let sig =
        git2::Signature::new("t", "t@example.com", &git2::Time::new(1_700_000_000, 0)).unwrap();
    let blob = repo.blob(b"fn main() {}\n").unwrap();
    let mut tree = repo.treebuilder(None).unwrap();
    tree.insert("main.rs", blob, 0o100644).unwrap();
    let tree = repo.find_tree(tree.write().unwrap()).unwrap();
    repo.commit(Some("HEAD"), &sig, &sig, "first", &tree, &[])
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_folder_source_finds_every_git_repository() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("repos");
    git_repo(&root.join("alice/tool"), false);
    git_repo(&root.join("bob/lib.git"), true);
    git_repo(&root.join("solo"), false);
    std::fs::create_dir_all(root.join("not-a-repo/empty")).unwrap();
    let setup = setup(&format!(
        "source: local_folder\nlocal_folder: {}\n",
        root.display()
    ));
    let registry = crawl_once(&setup).await;
    assert_eq!(metric(&registry, "crawler_repos_indexed_total", None), 3.0);

    let mut records: Vec<RepoUrl> = read_all(&setup.output, Duration::from_secs(2))
        .into_iter()
        .map(|(_, v)| RepoUrl::decode(&v).unwrap())
        .collect();
    records.sort_by(|a, b| a.full_name.cmp(&b.full_name));
    let root = root.canonicalize().unwrap();
    let got: Vec<(String, String, Option<i64>)> = records
        .iter()
        .map(|r| (r.full_name.clone(), r.clone_url.clone(), r.pushed_at_ms))
        .collect();
    let at = Some(1_700_000_000_000);
    assert_eq!(
        got,
        [
            (
                "alice/tool".to_string(),
                format!("file://{}", root.join("alice/tool").display()),
                at
            ),
            (
                "bob/lib".to_string(),
                format!("file://{}", root.join("bob/lib.git").display()),
                at
            ),
            (
                "local/solo".to_string(),
                format!("file://{}", root.join("solo").display()),
                at
            ),
        ]
    );
    assert!(records
        .iter()
        .all(|r| r.source == "local_folder" && r.default_branch.is_some()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repository_pushed_while_its_window_is_paged_shifts_nothing_out_of_reach() {
    // 250 repositories in one window: three pages of 100, in push order.
    let all = repos(250);
    let github = FakeGithub::start(all.clone(), Duration::ZERO);
    // Right after page 1 is served, one of its repositories is pushed: it leaves the
    // window, and the first repository of page 2 moves up onto page 1.
    github.inject(&[Fault::PushAfter {
        full_name: "owner0/repo0",
    }]);
    // The whole year is one turn, so it is one window of three pages.
    let setup = setup(&format!(
        "{}  per_page: 100\n  turn_days: 0\n",
        github_options(&github.url)
    ));
    let registry = crawl_once(&setup).await;
    let got = published(&setup.output);
    let missing: Vec<&str> = all
        .iter()
        .map(|r| r.full_name.as_str())
        .filter(|name| !got.contains_key(*name))
        .collect();
    assert!(missing.is_empty(), "never published: {missing:?}");
    assert_eq!(
        metric(
            &registry,
            "crawler_scrape_errors_total",
            Some("window_shifted")
        ),
        1.0
    );
    let queries = github.queries();
    assert!(
        queries.len() >= 6,
        "the window was read again: {} requests",
        queries.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_read_under_heavy_churn_loses_no_repository_that_stays_in_it() {
    // 40 repositories in one window of 8 pages of 5. After nearly every page served
    // (15 requests of 18), one repository already served is pushed and leaves the
    // window, as happens to busy windows: each read of the window comes up short, and
    // every read misses `owner34/repo34`, which never moves.
    let all = repos(40);
    let github = FakeGithub::start(all.clone(), Duration::ZERO);
    let schedule = [
        Some(0),
        Some(5),
        Some(3),
        Some(18),
        None,
        Some(13),
        Some(22),
        Some(2),
        Some(10),
        None,
        Some(7),
        Some(26),
        Some(33),
        Some(9),
        Some(14),
        Some(4),
        Some(25),
        None,
    ];
    let faults: Vec<Fault> = schedule
        .iter()
        .map(|pushed| match pushed {
            Some(i) => Fault::PushAfter {
                full_name: all[*i].full_name.clone().leak(),
            },
            None => Fault::Nothing,
        })
        .collect();
    github.inject(&faults);
    let setup = setup(&format!(
        "{}  per_page: 5\n  turn_days: 0\n",
        github_options(&github.url)
    ));
    crawl_once(&setup).await;
    let got = published(&setup.output);
    let pushed = github.shared.lock().unwrap().pushed.clone();
    // A pushed repository left the range for a later window; every other one stayed.
    let missing: Vec<&str> = all
        .iter()
        .map(|r| r.full_name.as_str())
        .filter(|name| !pushed.contains_key(*name) && !got.contains_key(*name))
        .collect();
    assert!(missing.is_empty(), "never published: {missing:?}");
}
