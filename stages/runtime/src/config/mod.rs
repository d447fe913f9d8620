//! The one config loader: a YAML file, then `CODELUPE_*` environment overrides
//! ([`env`]), then command-line overrides. Unknown keys are errors that name the full
//! key path.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

mod env;
mod error;

pub use env::ENV_PREFIX;
use env::{apply_env_override, is_override};
pub use error::ConfigError;

/// The arguments every CodeLupe binary takes to find its config and topology.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// Config file (YAML); `CODELUPE_*` environment variables override it.
    #[arg(long, global = true, env = "CODELUPE_CONFIG")]
    pub config: Option<PathBuf>,
    /// topology.yaml to use instead of the config's `topology` key.
    #[arg(long, global = true)]
    pub topology: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    /// Path of topology.yaml; relative paths resolve against the working directory.
    pub topology: PathBuf,
    /// Per-stage overrides of topology.yaml and stage options, keyed by stage name.
    pub stages: BTreeMap<String, StageSettings>,
    /// The clone store the downloader writes and the processor reads, configured once
    /// for both.
    pub clone_store: CloneStoreConfig,
}

/// Where the clone store is (its readers come from topology.yaml: every group reading
/// the downloader's output).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CloneStoreConfig {
    /// `s3://bucket/prefix`, `file:///path`, `gs://…`, `az://…` or a local path; none:
    /// `/var/lib/codelupe/clones` (`codelupe run`: `.codelupe/clones`).
    pub url: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            kafka: KafkaConfig::default(),
            topology: PathBuf::from("topology.yaml"),
            stages: BTreeMap::new(),
            clone_store: CloneStoreConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `host:port,...`; absent means the embedded broker (`codelupe run` only).
    pub brokers: Option<String>,
    pub dead_letter_topic: String,
    /// Attempts to reach the cluster at start before giving up.
    pub connect_attempts: u32,
    /// First wait between attempts; doubles each time.
    pub connect_backoff_ms: u64,
    /// Extra librdkafka properties for every client (security.protocol, sasl.*, ...).
    #[serde(deserialize_with = "scalar_map")]
    pub client: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers only (session.timeout.ms, ...).
    #[serde(deserialize_with = "scalar_map")]
    pub consumer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: None,
            dead_letter_topic: "dead-letters".into(),
            connect_attempts: 5,
            connect_backoff_ms: 500,
            client: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }
}

/// librdkafka properties are strings; YAML (and env overrides) may spell them as
/// numbers or booleans.
fn scalar_map<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k, s)),
            Value::Number(n) => Ok((k, n.to_string())),
            Value::Bool(b) => Ok((k, b.to_string())),
            _ => Err(serde::de::Error::custom(format!(
                "{k}: expected a string, number or boolean"
            ))),
        })
        .collect()
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StageSettings {
    pub group: Option<String>,
    pub input: Option<String>,
    pub output: Option<String>,
    pub metrics_port: Option<u16>,
    pub metrics_bind: IpAddr,
    /// Input records being transformed at once (0 refused at load, as every count that
    /// must be positive is).
    pub max_in_flight: NonZeroUsize,
    /// Input records read and not yet committed: being transformed, waiting to be, or
    /// awaiting their outputs' acks (`at_least_once`) or their transaction
    /// (`exactly_once`). Larger than `max_in_flight`: waiting costs only memory, and a
    /// loop that holds a transform's place until the acks come is bound by the
    /// broker's round trip.
    pub max_uncommitted: NonZeroUsize,
    /// Attempts at a retryable transform error before the record is dead-lettered.
    pub max_attempts: NonZeroU32,
    /// A record failing transiently (a host down) for this long is dead-lettered with
    /// its reason, to be replayed with `codelupe dead-letters replay`: one host that
    /// never answers cannot hold its partition for good. 0: wait forever.
    pub transient_give_up_s: u64,
    /// How long shutdown waits for in-flight records before abandoning them uncommitted.
    pub drain_timeout_ms: u64,
    /// `at_least_once` (idempotent producer, offsets committed after the acks) or
    /// `exactly_once` (outputs and offsets in one transaction; needs a real broker).
    pub delivery: Delivery,
    /// The stage's own options, read by the stage with [`StageSettings::options`].
    pub options: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Delivery {
    AtLeastOnce,
    ExactlyOnce,
}

impl Default for StageSettings {
    fn default() -> Self {
        Self {
            group: None,
            input: None,
            output: None,
            metrics_port: None,
            metrics_bind: IpAddr::from([0, 0, 0, 0]),
            max_in_flight: NonZeroUsize::new(64).expect("positive"),
            max_uncommitted: NonZeroUsize::new(1024).expect("positive"),
            max_attempts: NonZeroU32::new(3).expect("positive"),
            transient_give_up_s: 3600,
            drain_timeout_ms: 10_000,
            delivery: Delivery::AtLeastOnce,
            options: Value::Null,
        }
    }
}

impl StageSettings {
    /// Reads this stage's `options` into the stage's own type (deny_unknown_fields there
    /// makes a misspelt option an error naming `stages.<stage>.options.<key>`).
    pub fn options<T: DeserializeOwned + Default>(&self, stage: &str) -> Result<T, ConfigError> {
        if self.options.is_null() {
            return Ok(T::default());
        }
        from_value(self.options.clone(), &format!("stages.{stage}.options"))
    }
}

impl Config {
    /// File (optional) + process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(file, std::env::vars())
    }

    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?,
            None => String::new(),
        };
        Self::from_yaml(&text, file.unwrap_or(Path::new("(none)")), env)
    }

    /// Parses config text (`path` names it in errors) and applies the environment.
    pub fn from_yaml(
        text: &str,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let value: Value = serde_yaml::from_str(text).map_err(|source| ConfigError::Syntax {
            path: path.into(),
            source,
        })?;
        let mut tree = if value.is_null() {
            Value::Mapping(Default::default())
        } else {
            value
        };
        let mut env: Vec<_> = env
            .into_iter()
            .filter_map(|(var, raw)| match is_override(&var) {
                Ok(true) => Some(Ok((var, raw))),
                Ok(false) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<_, _>>()?;
        env.sort();
        for (var, raw) in &env {
            apply_env_override(&mut tree, var, raw)?;
        }
        from_value(tree, "")
    }

    /// Settings for one stage; defaults when the config says nothing about it.
    pub fn stage(&self, name: &str) -> StageSettings {
        self.stages.get(name).cloned().unwrap_or_default()
    }
}

/// Deserializes with the full path of the offending key in the error.
pub fn from_value<T: DeserializeOwned>(value: Value, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let inner = err.path().to_string();
        let key = match (prefix.is_empty(), inner == ".") {
            (true, _) => inner,
            (false, true) => prefix.to_string(),
            (false, false) => format!("{prefix}.{inner}"),
        };
        ConfigError::Key {
            key,
            message: err.into_inner().to_string(),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_keeps_types() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(
            &file,
            "kafka:\n  brokers: a:1\nstages:\n  processor:\n    max_in_flight: 4\n",
        )
        .unwrap();
        let config = Config::load_with_env(
            Some(&file),
            env(&[
                ("CODELUPE_KAFKA__BROKERS", "127.0.0.1:19092"),
                ("CODELUPE_STAGES__PROCESSOR__METRICS_PORT", "9999"),
                ("CODELUPE_CONFIG", "ignored"),
                ("UNRELATED", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers.as_deref(), Some("127.0.0.1:19092"));
        let processor = config.stage("processor");
        assert_eq!(processor.max_in_flight.get(), 4);
        assert_eq!(processor.metrics_port, Some(9999));
    }

    #[test]
    fn unknown_key_in_file_names_the_full_path() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "stages:\n  processor:\n    max_inflight: 4\n").unwrap();
        let err = Config::load_with_env(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stages.processor"), "{err}");
        assert!(err.contains("max_inflight"), "{err}");
    }

    #[test]
    fn a_count_of_zero_is_refused_at_load_naming_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "stages:\n  processor:\n    max_in_flight: 0\n").unwrap();
        let err = Config::load_with_env(Some(&file), env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("stages.processor.max_in_flight"), "{err}");
        assert!(err.contains("nonzero"), "{err}");
    }

    /// Variables that share the prefix but are no override (a script's cache folder,
    /// Compose's object-store keys) leave the config alone.
    #[test]
    fn variables_that_only_share_the_prefix_are_not_config_keys() {
        let config = Config::load_with_env(
            None,
            env(&[
                ("CODELUPE_CACHE", "/tmp/cache"),
                ("CODELUPE_S3_ACCESS_KEY", "codelupe"),
                ("CODELUPE_LOG", "debug"),
                ("CODELUPE_KAFKA__BROKERS", "b:1"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers.as_deref(), Some("b:1"));
    }

    /// The override check knows every top-level key, so a misspelt override of a new
    /// section is refused too.
    #[test]
    fn the_override_check_knows_every_top_level_key() {
        let err = serde_yaml::from_str::<Config>("no_such_key: 1").unwrap_err();
        let expected = err.to_string();
        // "unknown field `no_such_key`, expected one of `kafka`, `topology`, …"
        let mut fields: Vec<&str> = expected.split('`').skip(3).step_by(2).collect();
        fields.sort();
        let mut known = env::TOP_LEVEL_KEYS.to_vec();
        known.sort();
        assert_eq!(known, fields, "{expected}");
    }

    /// The clone store is configured once, from the environment as from the file; a
    /// misspelt name is refused, not ignored.
    #[test]
    fn the_clone_store_is_set_from_the_environment_and_a_misspelt_name_refused() {
        let config =
            Config::load_with_env(None, env(&[("CODELUPE_CLONE_STORE__URL", "s3://b/c")])).unwrap();
        assert_eq!(config.clone_store.url.as_deref(), Some("s3://b/c"));
        let err = Config::load_with_env(None, env(&[("CODELUPE_CLONE_STORE_URL", "s3://b/c")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(CODELUPE_CLONE_STORE__URL)"), "{err}");
    }

    #[test]
    fn a_misspelt_override_is_refused_with_its_form() {
        let err = Config::load_with_env(None, env(&[("CODELUPE_KAFKA_BROKERS", "b:1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("(CODELUPE_KAFKA__BROKERS)"), "{err}");
    }

    /// TLS and SASL reach every client from the environment, as a Kubernetes Secret
    /// provides them.
    #[test]
    fn librdkafka_properties_are_set_with_underscores_for_dots() {
        let config = Config::load_with_env(
            None,
            env(&[
                ("CODELUPE_KAFKA__CLIENT__SECURITY_PROTOCOL", "SASL_SSL"),
                ("CODELUPE_KAFKA__CLIENT__SASL_MECHANISMS", "SCRAM-SHA-512"),
                ("CODELUPE_KAFKA__CONSUMER__SESSION.TIMEOUT.MS", "6000"),
            ]),
        )
        .unwrap();
        assert_eq!(config.kafka.client["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka.client["sasl.mechanisms"], "SCRAM-SHA-512");
        assert_eq!(config.kafka.consumer["session.timeout.ms"], "6000");
    }

    #[test]
    fn unknown_key_from_env_is_an_error() {
        let err = Config::load_with_env(None, env(&[("CODELUPE_KAFKA__BROKER", "x:1")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("broker"), "{err}");
        assert!(err.contains("kafka"), "{err}");
    }

    #[test]
    fn stage_options_errors_are_prefixed() {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Opts {
            #[allow(dead_code)]
            workers: Option<u32>,
        }
        let config = Config::load_with_env(
            None,
            env(&[("CODELUPE_STAGES__PROCESSOR__OPTIONS__WORKRS", "2")]),
        )
        .unwrap();
        let err = config
            .stage("processor")
            .options::<Opts>("processor")
            .unwrap_err()
            .to_string();
        assert!(err.contains("stages.processor.options"), "{err}");
        assert!(err.contains("workrs"), "{err}");
    }
}
