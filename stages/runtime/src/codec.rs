//! Avro single-object encoding (C3 01, 8-byte Rabin fingerprint, datum) of the records
//! in `schemas/`. The fingerprint in every value is the schema identity: a consumer
//! rejects a value written with a schema it does not know instead of misreading it.

use std::sync::OnceLock;

use serde::{de::DeserializeOwned, Serialize};
use serde_avro_fast::{ser::SerializerConfig, Schema};

/// A Rust type bound to one `.avsc` file in `schemas/`.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// File name under `schemas/`, e.g. `repo-urls.avsc`.
    const SCHEMA_FILE: &'static str;
    /// The schema text, embedded at compile time from `schemas/`.
    const SCHEMA_JSON: &'static str;

    /// The parsed schema; parsed once per process.
    fn schema() -> &'static Schema;

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let schema = Self::schema();
        let mut config = SerializerConfig::new(schema);
        serde_avro_fast::to_single_object_vec(self, &mut config).map_err(|e| CodecError::Encode {
            schema: Self::SCHEMA_FILE,
            message: e.to_string(),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        check_header(bytes, Self::schema(), Self::SCHEMA_FILE)?;
        serde_avro_fast::from_single_object_slice(bytes, Self::schema()).map_err(|e| {
            CodecError::Decode {
                schema: Self::SCHEMA_FILE,
                message: e.to_string(),
            }
        })
    }
}

/// Parses an embedded schema once; a broken `.avsc` is a build defect, caught by tests.
pub fn parse_embedded(cell: &'static OnceLock<Schema>, file: &str, json: &str) -> &'static Schema {
    cell.get_or_init(|| {
        json.parse()
            .unwrap_or_else(|e| panic!("schemas/{file} is not a valid Avro schema: {e}"))
    })
}

fn check_header(bytes: &[u8], schema: &Schema, file: &'static str) -> Result<(), CodecError> {
    if bytes.len() < 10 || bytes[0..2] != [0xC3, 0x01] {
        return Err(CodecError::NotSingleObject { schema: file });
    }
    if &bytes[2..10] != schema.rabin_fingerprint() {
        return Err(CodecError::UnknownFingerprint {
            schema: file,
            found: hex(&bytes[2..10]),
            expected: hex(schema.rabin_fingerprint()),
        });
    }
    Ok(())
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is not Avro single-object encoded (expected header C3 01 for {schema})")]
    NotSingleObject { schema: &'static str },
    #[error("value was written with schema fingerprint {found}, but {schema} has {expected}")]
    UnknownFingerprint {
        schema: &'static str,
        found: String,
        expected: String,
    },
    #[error("cannot decode value as {schema}: {message}")]
    Decode {
        schema: &'static str,
        message: String,
    },
    #[error("cannot encode value as {schema}: {message}")]
    Encode {
        schema: &'static str,
        message: String,
    },
}
