//! docker-compose.yml against topology.yaml: every stage is a service, scalable stages
//! publish no fixed host port (so `--scale` works), Prometheus gets the rendered config.
//! Validated by Compose itself (`config`); there is no Docker engine to run it here.

mod support;

use std::process::Command;

use support::*;

fn compose_config() -> serde_json::Value {
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    let mut command = if plugin.is_ok_and(|o| o.status.success()) {
        let mut c = Command::new("docker");
        c.arg("compose");
        c
    } else {
        Command::new("docker-compose")
    };
    let out = command
        .current_dir(repo_root())
        // Compose refuses to render without the object store's keys: none is committed.
        .env("CODELUPE_S3_ACCESS_KEY", "test-access")
        .env("CODELUPE_S3_SECRET_KEY", "test-secret")
        .args(["--profile", "trainer", "config"])
        .output()
        .expect("docker compose (or docker-compose) is installed by setup/deps.sh");
    assert!(out.status.success(), "compose config: {}", text(&out));
    let yaml: serde_yaml::Value = serde_yaml::from_slice(&out.stdout).unwrap();
    serde_json::to_value(yaml).unwrap()
}

#[test]
fn compose_runs_every_stage_and_scales() {
    let config = compose_config();
    let topology =
        codelupe_runtime::topology::Topology::load(&repo_root().join("topology.yaml")).unwrap();
    let services = &config["services"];
    for (name, stage) in &topology.stages {
        let service = &services[name.as_str()];
        assert!(service.is_object(), "no service for stage {name}");
        assert_eq!(service["command"][0], "stage", "{name}");
        assert_eq!(service["command"][1], name.as_str(), "{name}");
        assert_eq!(
            service["environment"]["CODELUPE_KAFKA__BROKERS"], "kafka:9092",
            "{name}"
        );
        if stage.replicas > 1 {
            assert!(
                service["ports"].is_null(),
                "{name} has {} replicas but publishes host ports, so --scale would collide",
                stage.replicas
            );
            let port = stage.metrics.port.to_string();
            let exposed: Vec<String> = service["expose"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|p| {
                            p.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| p.to_string())
                        })
                        .collect()
                })
                .unwrap_or_default();
            assert!(
                exposed.contains(&port),
                "{name} does not expose its metrics port {port}"
            );
        }
    }
    for needed in ["kafka", "prometheus", "grafana", "topics", "seaweedfs"] {
        assert!(services[needed].is_object(), "no {needed} service");
    }
    // Downloader and processor meet in the object store, not in a shared folder, and
    // get its keys from the environment.
    for stage in ["downloader", "processor"] {
        let service = &services[stage];
        assert!(service["volumes"].is_null(), "{stage} mounts a volume");
        assert_eq!(
            service["environment"]["CODELUPE_CLONE_STORE__URL"],
            "s3://codelupe/clones"
        );
        assert_eq!(
            service["environment"]["AWS_SECRET_ACCESS_KEY"],
            "test-secret"
        );
    }
    assert_eq!(
        services["export"]["environment"]["CODELUPE_STAGES__EXPORT__OPTIONS__DATASET"],
        "s3://codelupe/dataset"
    );
    assert!(
        config["volumes"]["clone-store"].is_null(),
        "a shared clone volume"
    );
    let mounts = serde_json::to_string(&services["prometheus"]["volumes"]).unwrap();
    assert!(mounts.contains("configs/prometheus.yml"), "{mounts}");
    // The host's 9092 is the crawler's metrics port; the broker must be elsewhere.
    let kafka_ports = serde_json::to_string(&services["kafka"]["ports"]).unwrap();
    assert!(!kafka_ports.contains("\"9092"), "{kafka_ports}");
}
