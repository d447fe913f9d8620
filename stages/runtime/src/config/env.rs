//! Environment overrides of the config. An override names its key path with `__`
//! between keys (`CODELUPE_STAGES__PROCESSOR__MAX_IN_FLIGHT`), so a variable that
//! merely shares the prefix (`CODELUPE_LOG`, a script's own) is never read as a config
//! key; one that looks like a misspelt override (`CODELUPE_KAFKA_BROKERS`) is refused
//! with the form.

use serde_yaml::Value;

use super::error::ConfigError;

pub const ENV_PREFIX: &str = "CODELUPE_";
/// The config's top-level keys, each a section but `topology`, a path.
pub(super) const TOP_LEVEL_KEYS: &[&str] = &["kafka", "stages", "topology", "clone_store"];
/// The sections whose keys are librdkafka properties: those are spelt with dots and
/// never with `_`, so an override's `_` stands for a dot there
/// (`CODELUPE_KAFKA__CLIENT__SECURITY_PROTOCOL` sets `security.protocol`), which a
/// shell's variable names cannot hold.
const LIBRDKAFKA_SECTIONS: &[[&str; 2]] = &[["kafka", "client"], ["kafka", "consumer"]];

/// Whether `var` is a config override: under the prefix, with `__` between keys (or
/// naming a top-level key alone). One that starts like a key path but joins its keys
/// with a single `_` is an error, so a misspelt override is not silently ignored.
pub(super) fn is_override(var: &str) -> Result<bool, ConfigError> {
    let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
        return Ok(false);
    };
    let rest = rest.to_ascii_lowercase();
    if rest.contains("__") || TOP_LEVEL_KEYS.contains(&rest.as_str()) {
        return Ok(true);
    }
    match TOP_LEVEL_KEYS
        .iter()
        .find(|key| rest.starts_with(&format!("{key}_")))
    {
        Some(key) => Err(ConfigError::Env {
            var: var.into(),
            message: format!(
                "not a config override: keys are joined with __ \
                 ({ENV_PREFIX}{}__{})",
                key.to_ascii_uppercase(),
                rest[key.len() + 1..].to_ascii_uppercase()
            ),
        }),
        None => Ok(false),
    }
}

/// `CODELUPE_STAGES__PROCESSOR__MAX_IN_FLIGHT=8` sets `stages.processor.max_in_flight`.
pub(super) fn apply_env_override(
    tree: &mut Value,
    var: &str,
    raw: &str,
) -> Result<(), ConfigError> {
    let mut path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.len() == 3 && LIBRDKAFKA_SECTIONS.iter().any(|s| path[..2] == s[..]) {
        path[2] = path[2].replace('_', ".");
    }
    if path.iter().any(|p| p.is_empty()) {
        return Err(ConfigError::Env {
            var: var.into(),
            message: "empty key segment (use __ between keys)".into(),
        });
    }
    // A scalar in YAML syntax, so numbers and booleans keep their types.
    let value: Value = serde_yaml::from_str(raw).unwrap_or_else(|_| Value::String(raw.into()));
    let mut node = tree;
    for (i, segment) in path.iter().enumerate() {
        let map = match node {
            Value::Mapping(map) => map,
            other if other.is_null() => {
                *other = Value::Mapping(Default::default());
                other.as_mapping_mut().expect("just made a mapping")
            }
            _ => {
                return Err(ConfigError::Env {
                    var: var.into(),
                    message: format!("`{}` is not a section", path[..i].join(".")),
                })
            }
        };
        let key = Value::String(segment.clone());
        if i + 1 == path.len() {
            map.insert(key, value);
            return Ok(());
        }
        node = map.entry(key).or_insert(Value::Null);
    }
    Ok(())
}
