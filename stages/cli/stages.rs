//! The stages this binary knows, one line each: how to run each one, in this process
//! or (the trainer, which links libtorch) as its own executable.

use std::path::PathBuf;

use anyhow::bail;
use codelupe_runtime::config::Config;
use codelupe_runtime::descriptor::{Runs, StageDescriptor};
use codelupe_runtime::topology::Topology;

/// Every stage this binary knows, each described by its own crate.
pub const STAGES: &[&StageDescriptor] = &[
    &codelupe_crawler::DESCRIPTOR,
    &codelupe_downloader::DESCRIPTOR,
    &codelupe_processor::DESCRIPTOR,
    &codelupe_neardup::DESCRIPTOR,
    &codelupe_batcher::DESCRIPTOR,
    &codelupe_export::DESCRIPTOR,
    &codelupe_trainer_api::DESCRIPTOR,
];

pub fn entry(name: &str) -> anyhow::Result<&'static StageDescriptor> {
    match STAGES.iter().find(|s| s.name == name) {
        Some(entry) => Ok(*entry),
        None => bail!(
            "unknown stage {name}; stages are {}",
            STAGES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// An external stage's executable: next to this one (as cargo builds them), else on PATH.
pub fn find_binary(binary: &str) -> anyhow::Result<PathBuf> {
    let sibling = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.join(binary)));
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|dir| dir.join(binary));
    match sibling.into_iter().chain(on_path).find(|p| p.is_file()) {
        Some(path) => Ok(path),
        None => bail!(
            "{binary} was not found next to codelupe or on PATH; build it with \
             `cargo build --release -p codelupe-trainer` (it links libtorch: see docs/src/guide/first-run.md)"
        ),
    }
}

/// The config and topology a stage runs with, and the files they came from (passed on
/// to an external stage).
pub struct Setup<'a> {
    pub topology_file: &'a std::path::Path,
    pub topology: &'a Topology,
    pub config_file: Option<&'a std::path::Path>,
    pub config: &'a Config,
}

/// `codelupe stage NAME`: one replica, metrics server included, until shutdown. An
/// external stage replaces this process (so signals reach it directly).
pub async fn run_one(name: &str, brokers: &str, once: bool, at: Setup<'_>) -> anyhow::Result<()> {
    match entry(name)?.runs {
        Runs::InProcess(launch) => {
            codelupe_runtime::stage::run_stage(name, brokers, at.topology, at.config, once, launch)
                .await
        }
        Runs::External { binary, .. } => {
            let mut command = std::process::Command::new(find_binary(binary)?);
            command.arg("--topology").arg(at.topology_file);
            if let Some(file) = at.config_file {
                command.arg("--config").arg(file);
            }
            command.args(["stage", "--brokers", brokers]);
            Err(std::os::unix::process::CommandExt::exec(&mut command).into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_stage_of_topology_yaml_is_registered_with_embedded_defaults_that_parse() {
        let topology_file = concat!(env!("CARGO_MANIFEST_DIR"), "/topology.yaml");
        let topology = Topology::load(std::path::Path::new(topology_file)).unwrap();
        for name in topology.stages.keys() {
            let stage = entry(name).unwrap();
            let options: serde_yaml::Value = serde_yaml::from_str(stage.offline_options)
                .unwrap_or_else(|e| panic!("{name}'s offline_options: {e}"));
            assert!(options.is_mapping(), "{name}: {options:?}");
        }
        assert_eq!(
            STAGES.len(),
            topology.stages.len(),
            "a stage topology.yaml lacks"
        );
    }
}
