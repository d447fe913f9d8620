//! `codelupe dead-letters list|replay` on the real broker: letters listed with their
//! reason and origin, the chosen ones published again to the topic they came from
//! (a value the letter carries cut is read back from its original place), the others
//! left alone.

mod support;

use codelupe_runtime::codec::AvroRecord;
use codelupe_runtime::records::{now_ms, DeadLetter, RepoUrl};
use support::*;

fn letter(
    reason: &str,
    topic: &str,
    offset: i64,
    key: &str,
    value: Vec<u8>,
    error: &str,
) -> DeadLetter {
    DeadLetter {
        stage: "downloader".into(),
        reason: reason.into(),
        error: error.into(),
        topic: topic.into(),
        partition: 0,
        offset,
        attempts: 3,
        key: Some(key.as_bytes().to_vec()),
        value: Some(value),
        failed_at_ms: now_ms(),
    }
}

/// The topics of one test: where the letters came from, where they lie, and two
/// internal topics forged letters name.
struct Topics {
    origin: String,
    dead: String,
    crawler_state: String,
    seen: String,
}

#[tokio::test(flavor = "multi_thread")]
async fn dead_letters_are_listed_and_the_chosen_ones_replayed_to_their_topic() {
    let dir = tempfile::tempdir().unwrap();
    let (suffix, topology) = fresh_topics(dir.path(), "dl");
    let topics = Topics {
        origin: format!("repo-urls-{suffix}"),
        dead: format!("dead-letters-{suffix}"),
        crawler_state: format!("crawler-state-{suffix}"),
        seen: format!("batcher-seen-{suffix}"),
    };
    let replayable = letters_of_every_kind_produced(&topics).await;
    let run_with_stderr = |args: &[&str]| {
        let out = codelupe()
            .args(["--topology", topology.to_str().unwrap(), "dead-letters"])
            .args(args)
            .args(["--brokers", &brokers()])
            .env("CODELUPE_KAFKA__DEAD_LETTER_TOPIC", &topics.dead)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out));
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let run = |args: &[&str]| run_with_stderr(args).0;

    check_the_listing(&run(&["list"]), &topics.origin);

    let dry = run(&["replay", "--reason", "network", "--dry-run"]);
    assert!(dry.contains("would replay 3 of 5"), "{dry}");
    assert_eq!(
        topic_size(&topics.origin, 6),
        1,
        "a dry run published something"
    );

    let (replayed, refused) = run_with_stderr(&["replay", "--reason", "network"]);
    check_the_replay(&topics, &replayed, &refused, replayable);
}

/// Seven letters in the dead-letter topic: three `network` ones of real records (one
/// of them cut, its original in the origin topic at offset 0), a `decode` one, and
/// the forged ones. Returns the records a `network` replay must publish, in name order.
async fn letters_of_every_kind_produced(topics: &Topics) -> Vec<RepoUrl> {
    let Topics { origin, dead, .. } = topics;
    let (outage_a, outage_b) = (repo_url(1), repo_url(2));
    // A large record whose letter carries only its first bytes; the original is still
    // in its topic, at offset 0 of the partition written to below.
    let mut large = repo_url(3);
    large.description = Some("x".repeat(300_000));
    let large_value = large.encode().unwrap();
    produce_to_partition(origin, 0, &large.full_name, &large_value).await;
    let mut letters = vec![
        letter(
            "network",
            origin,
            10,
            &outage_a.full_name,
            outage_a.encode().unwrap(),
            "host unreachable",
        ),
        letter(
            "network",
            origin,
            11,
            &outage_b.full_name,
            outage_b.encode().unwrap(),
            "timed out",
        ),
        letter(
            "decode",
            origin,
            12,
            "garbage",
            b"not avro".to_vec(),
            "not Avro single-object encoded",
        ),
        letter(
            "network",
            origin,
            0,
            &large.full_name,
            large_value[..1000].to_vec(),
            "timed out (value cut to its first 1000 of 300100 bytes)",
        ),
    ];
    letters.extend(forged_letters(topics));
    produce_all(
        dead,
        letters
            .iter()
            .map(|l| {
                (
                    String::from_utf8(l.key.clone().unwrap()).unwrap(),
                    l.encode().unwrap(),
                )
            })
            .collect(),
    )
    .await;
    // The large one twice: the original and its replay, whole.
    vec![outage_a, outage_b, large.clone(), large]
}

/// Forged letters: two naming internal topics, which a replay must never write, and
/// one whose fields would drive an operator's terminal.
fn forged_letters(topics: &Topics) -> [DeadLetter; 3] {
    let Topics {
        origin,
        crawler_state,
        seen,
        ..
    } = topics;
    [
        letter(
            "network",
            crawler_state,
            0,
            "cursor",
            b"forged state".to_vec(),
            "timed out",
        ),
        DeadLetter {
            stage: "batcher".into(),
            ..letter("network", seen, 0, "mark", b"forged".to_vec(), "timed out")
        },
        letter(
            "decode",
            origin,
            13,
            "\x1b[2Jcleared",
            b"x".to_vec(),
            "bad\x1b]0;title\x07",
        ),
    ]
}

/// `list` counts the letters by stage and reason, names each one's origin, and prints
/// no control character raw.
fn check_the_listing(listed: &str, origin: &str) {
    assert!(listed.contains("7 dead letters"), "{listed}");
    assert!(listed.contains("4  downloader network"), "{listed}");
    assert!(listed.contains("2  downloader decode"), "{listed}");
    assert!(
        listed.contains(&format!("{origin}[0]@12  key=garbage")),
        "{listed}"
    );
    assert!(
        !listed.contains('\x1b'),
        "a control character printed raw: {listed:?}"
    );
    assert!(
        listed.contains("key=\\u{1b}[2Jcleared  bad\\u{1b}]0;title\\u{7}"),
        "{listed}"
    );
}

/// The `network` replay published the three real records to their input (the cut one
/// whole, from its original place) and skipped the two forged ones, writing neither
/// internal topic.
fn check_the_replay(topics: &Topics, replayed: &str, refused: &str, expected: Vec<RepoUrl>) {
    let Topics {
        origin,
        crawler_state,
        seen,
        ..
    } = topics;
    assert!(
        replayed.contains(&format!("replayed 3 records to {origin}"))
            && replayed.contains("replayed 3 of 5 selected dead letters (2 skipped)"),
        "{replayed}"
    );
    assert!(
        refused.contains(&format!(
            "skipped {crawler_state}[0]@0: {crawler_state} is not the input of stage \
             downloader ({origin})"
        )),
        "{refused}"
    );
    assert!(
        refused.contains(&format!(
            "skipped {seen}[0]@0: {seen} is not the input of stage batcher"
        )),
        "{refused}"
    );
    assert_eq!(
        topic_size(crawler_state, 1),
        0,
        "replay wrote the crawler's state"
    );
    assert_eq!(topic_size(seen, 12), 0, "replay wrote the batcher's marks");
    let mut got: Vec<RepoUrl> = read_all(origin, std::time::Duration::from_secs(2))
        .into_iter()
        .map(|(_, v)| RepoUrl::decode(&v).unwrap())
        .collect();
    got.sort_by(|a, b| a.full_name.cmp(&b.full_name));
    assert_eq!(got, expected);
}
