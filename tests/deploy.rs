//! The Kubernetes manifests (deploy/k8s) against topology.yaml and against the schemas:
//! one Deployment per stage with Prometheus scrape annotations on its metrics port, a
//! KEDA ScaledObject per consuming stage scaling on its groups' lag (never past its
//! input's partitions), the trainer one replica with its checkpoints on a persistent
//! volume, no folder shared by downloader and processor; and kubeconform, offline and
//! strict, accepts them and refuses a broken copy.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;

use codelupe_runtime::topology::Topology;
use serde::Deserialize as _;
use serde_yaml::Value;
use support::*;

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("deploy/k8s"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// Every resource of the manifests, by kind and name.
fn resources() -> HashMap<(String, String), Value> {
    let mut out = HashMap::new();
    for file in manifests() {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let value = Value::deserialize(doc).unwrap();
            let kind = value["kind"].as_str().unwrap().to_string();
            let name = value["metadata"]["name"].as_str().unwrap().to_string();
            out.insert((kind, name), value);
        }
    }
    out
}

fn str_list(v: &Value) -> Vec<String> {
    v.as_sequence()
        .map(|s| {
            s.iter()
                .map(|x| match x {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other).unwrap().trim().to_string(),
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn every_stage_is_a_deployment_and_every_consumer_scales_on_its_lag() {
    let topology = Topology::load(&repo_root().join("topology.yaml")).unwrap();
    let resources = resources();
    let get = |kind: &str, name: &str| resources.get(&(kind.to_string(), name.to_string()));
    for (name, stage) in &topology.stages {
        let deployment = get("Deployment", &format!("codelupe-{name}"))
            .unwrap_or_else(|| panic!("no Deployment for stage {name}"));
        let pod = &deployment["spec"]["template"];
        let annotations = &pod["metadata"]["annotations"];
        assert_eq!(annotations["prometheus.io/scrape"], "true", "{name}");
        assert_eq!(
            annotations["prometheus.io/port"],
            stage.metrics.port.to_string().as_str(),
            "{name}"
        );
        assert_eq!(
            annotations["prometheus.io/path"],
            stage.metrics.path.as_str(),
            "{name}"
        );
        let container = &pod["spec"]["containers"][0];
        assert_eq!(str_list(&container["args"]), ["stage", name.as_str()]);
        assert_eq!(
            container["ports"][0]["containerPort"].as_u64(),
            Some(u64::from(stage.metrics.port)),
            "{name}"
        );

        let scaled = get("ScaledObject", &format!("codelupe-{name}"));
        if name == "trainer" {
            assert!(scaled.is_none(), "the trainer is one replica, never scaled");
            assert_eq!(deployment["spec"]["replicas"].as_u64(), Some(1));
            assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
            let claims: Vec<&Value> = pod["spec"]["volumes"]
                .as_sequence()
                .unwrap()
                .iter()
                .map(|v| &v["persistentVolumeClaim"]["claimName"])
                .collect();
            assert!(claims.iter().any(|c| *c == "codelupe-checkpoints"));
            assert!(get("PersistentVolumeClaim", "codelupe-checkpoints").is_some());
            continue;
        }
        let Some(input) = &stage.input else {
            assert!(scaled.is_none(), "{name} consumes nothing to scale on");
            continue;
        };
        let scaled = scaled.unwrap_or_else(|| panic!("no ScaledObject for {name}"));
        assert_eq!(
            scaled["spec"]["scaleTargetRef"]["name"],
            format!("codelupe-{name}").as_str()
        );
        let triggers = scaled["spec"]["triggers"].as_sequence().unwrap();
        let on_input = triggers.iter().any(|t| {
            t["type"] == "kafka"
                && t["metadata"]["topic"] == input.as_str()
                && t["metadata"]["consumerGroup"] == stage.group.as_deref().unwrap()
        });
        assert!(
            on_input,
            "{name} does not scale on its group's lag on {input}"
        );
        for trigger in triggers {
            let topic = trigger["metadata"]["topic"].as_str().unwrap();
            let partitions = topology.topics[topic].partitions;
            assert!(
                scaled["spec"]["maxReplicaCount"].as_u64().unwrap() <= partitions as u64,
                "{name} may scale past {topic}'s {partitions} partitions"
            );
        }
    }
    // Downloader and processor meet in the object store: no shared volume (a scratch
    // /tmp of their own only), the store's keys from a Secret.
    for name in ["downloader", "processor"] {
        let pod = &get("Deployment", &format!("codelupe-{name}")).unwrap()["spec"]["template"];
        let shared = pod["spec"]["volumes"]
            .as_sequence()
            .into_iter()
            .flatten()
            .any(|v| v["emptyDir"].is_null());
        assert!(!shared, "{name} mounts a shared volume");
        let env = serde_yaml::to_string(&pod["spec"]["containers"][0]["envFrom"]).unwrap();
        assert!(env.contains("codelupe-object-store"), "{name}: {env}");
    }
    let env = &get("ConfigMap", "codelupe-env").unwrap()["data"];
    // One setting for both: the clone store is configured once.
    let store = env["CODELUPE_CLONE_STORE__URL"].as_str().unwrap();
    assert!(store.starts_with("s3://"), "{store}");
}

/// Every pod runs as a non-root user on a read-only root filesystem, with requests and
/// limits; only the metrics port is reachable; KEDA reads Kafka through one
/// TriggerAuthentication, and the stages take TLS/SASL settings from a Secret.
#[test]
fn every_pod_is_locked_down_bounded_and_reaches_a_secured_kafka() {
    let resources = resources();
    let mut pods = 0;
    for ((kind, name), resource) in &resources {
        let pod = match kind.as_str() {
            "Deployment" | "Job" => &resource["spec"]["template"]["spec"],
            _ => continue,
        };
        pods += 1;
        assert_eq!(
            pod["securityContext"]["runAsNonRoot"].as_bool(),
            Some(true),
            "{name}"
        );
        let container = &pod["containers"][0];
        let security = &container["securityContext"];
        assert_eq!(
            security["readOnlyRootFilesystem"].as_bool(),
            Some(true),
            "{name}"
        );
        assert_eq!(
            security["allowPrivilegeEscalation"].as_bool(),
            Some(false),
            "{name}"
        );
        assert_eq!(
            str_list(&security["capabilities"]["drop"]),
            ["ALL"],
            "{name}"
        );
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][bound][resource].is_null(),
                    "{name}: no {bound}.{resource}"
                );
            }
        }
        let env = serde_yaml::to_string(&container["envFrom"]).unwrap();
        assert!(env.contains("codelupe-kafka-client"), "{name}: {env}");
        if kind == "Deployment" {
            let tmp = container["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .any(|m| m["mountPath"] == "/tmp");
            assert!(tmp, "{name}: no writable /tmp");
        }
    }
    assert_eq!(pods, 8, "seven stages and the topics job");
    let policy = resources
        .get(&("NetworkPolicy".to_string(), "codelupe-stages".to_string()))
        .expect("a NetworkPolicy");
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["app.kubernetes.io/part-of"],
        "codelupe"
    );
    assert_eq!(policy["spec"]["ingress"][0]["ports"][0]["port"], "metrics");
    assert!(resources.contains_key(&(
        "TriggerAuthentication".to_string(),
        "codelupe-kafka".to_string()
    )));
    for ((kind, name), resource) in &resources {
        if kind != "ScaledObject" {
            continue;
        }
        for trigger in resource["spec"]["triggers"].as_sequence().unwrap() {
            assert_eq!(
                trigger["authenticationRef"]["name"], "codelupe-kafka",
                "{name}"
            );
        }
    }
}

fn validate(files: &[PathBuf]) -> std::process::Output {
    Command::new("bash")
        .arg(repo_root().join("deploy/validate.sh"))
        .args(files)
        .output()
        .unwrap()
}

#[test]
fn kubeconform_accepts_the_manifests_and_refuses_a_broken_copy() {
    let out = validate(&manifests());
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("Invalid: 0, Errors: 0"),
        "{}",
        text(&out)
    );

    // The validator is not vacuous: a field of the wrong type, an unknown field, and a
    // ScaledObject with a bad count are each refused.
    let dir = tempfile::tempdir().unwrap();
    let original = std::fs::read_to_string(repo_root().join("deploy/k8s/processor.yaml")).unwrap();
    for (what, broken) in [
        (
            "a string replica count",
            original.replace("replicas: 4", "replicas: four"),
        ),
        (
            "an unknown field",
            original.replace("terminationGracePeriodSeconds", "terminationGraceSeconds"),
        ),
        (
            "a string minReplicaCount",
            original.replace("minReplicaCount: 1", "minReplicaCount: one"),
        ),
    ] {
        assert_ne!(broken, original, "{what}: nothing was broken");
        let file = dir.path().join("broken.yaml");
        std::fs::write(&file, broken).unwrap();
        let out = validate(&[file]);
        assert!(!out.status.success(), "{what} passed: {}", text(&out));
    }
}
