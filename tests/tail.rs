//! `codelupe tail` on the real broker: records decoded with their topic's schema as
//! JSON lines, a value that does not decode shown with why, and a clear error when no
//! broker can be found.

mod support;

use codelupe_runtime::codec::AvroRecord;
use support::*;

fn lines(out: &std::process::Output) -> Vec<serde_json::Value> {
    assert!(out.status.success(), "{}", text(out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_prints_decoded_records_and_says_why_a_value_does_not_decode() {
    let dir = tempfile::tempdir().unwrap();
    let (suffix, topology) = fresh_topics(dir.path(), "tail");
    let topic = format!("repo-urls-{suffix}");
    let mut records: Vec<(String, Vec<u8>)> = (0..5)
        .map(|i| {
            let url = repo_url(i);
            (url.full_name.clone(), url.encode().unwrap())
        })
        .collect();
    records.push(("poison".into(), b"not avro at all".to_vec()));
    produce_all(&topic, records).await;
    let tail = |args: &[&str]| {
        codelupe()
            .args(["--topology", topology.to_str().unwrap(), "tail", &topic])
            .args(["--brokers", &brokers()])
            .args(args)
            .output()
            .unwrap()
    };

    let all = lines(&tail(&["--from-beginning", "--max", "6"]));
    assert_eq!(all.len(), 6);
    let mut names: Vec<&str> = all
        .iter()
        .filter_map(|r| r["value"]["full_name"].as_str())
        .collect();
    names.sort();
    let mut expected: Vec<String> = (0..5).map(|i| repo_url(i).full_name).collect();
    expected.sort();
    assert_eq!(names, expected);
    for record in all.iter().filter(|r| r["value"].is_object()) {
        assert_eq!(record["key"], record["value"]["full_name"]);
        assert!(record["offset"].is_i64() && record["partition"].is_i64());
    }
    let poison: Vec<_> = all.iter().filter(|r| r["key"] == "poison").collect();
    assert_eq!(poison.len(), 1);
    assert!(
        poison[0]["error"]
            .as_str()
            .unwrap()
            .contains("not Avro single-object encoded"),
        "{}",
        poison[0]
    );

    // Without --from-beginning: from the last records of each partition.
    assert_eq!(lines(&tail(&["--max", "2"])).len(), 2);

    // A topic topology.yaml does not declare is refused by name.
    let out = codelupe()
        .args([
            "--topology",
            topology.to_str().unwrap(),
            "tail",
            "no-such-topic",
        ])
        .args(["--brokers", &brokers(), "--max", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("topic no-such-topic is not in topology.yaml"));
}

#[test]
fn tail_without_brokers_or_a_running_embedded_run_says_where_it_looked() {
    let dir = tempfile::tempdir().unwrap();
    let out = codelupe()
        .current_dir(dir.path())
        .args(["--topology"])
        .arg(repo_root().join("topology.yaml"))
        .args(["tail", "code-files", "--max", "1"])
        .env_remove("CODELUPE_KAFKA__BROKERS")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = text(&out);
    assert!(
        said.contains("no `codelupe run` running in this folder")
            && said.contains(".codelupe/broker"),
        "{said}"
    );
}
