//! Avro single-object encoding (C3 01, 8-byte Rabin fingerprint, datum) of the records
//! in `schemas/`. The fingerprint in every value is the schema identity: a value written
//! with today's schema decodes directly; one written with an earlier released version
//! (`schemas/earlier/`) is resolved into today's type by Avro schema resolution; one of
//! a schema this build does not know is refused instead of misread.

use std::collections::{BTreeSet, HashMap};
use std::sync::OnceLock;

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::schema_compatibility::{Compatibility, SchemaCompatibility};
use apache_avro::writer::datum::GenericDatumWriter;

use serde::{de::DeserializeOwned, Serialize};
use serde_avro_fast::{ser::SerializerConfig, Schema};

/// A Rust type bound to one `.avsc` file in `schemas/`.
pub trait AvroRecord: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// File name under `schemas/`, e.g. `repo-urls.avsc`.
    const SCHEMA_FILE: &'static str;
    /// The schema text, embedded at compile time from `schemas/`.
    const SCHEMA_JSON: &'static str;

    /// Every earlier released version of the schema (`schemas/earlier/<name>/<n>.avsc`).
    const EARLIER_JSON: &'static [&'static str];

    /// The parsed schema; parsed once per process.
    fn schema() -> &'static Schema;

    /// The earlier versions by fingerprint, parsed once per process.
    fn lineage() -> &'static SchemaLineage;

    fn encode(&self) -> Result<Vec<u8>, CodecError> {
        let schema = Self::schema();
        let mut config = SerializerConfig::new(schema);
        serde_avro_fast::to_single_object_vec(self, &mut config).map_err(|e| CodecError::Encode {
            schema: Self::SCHEMA_FILE,
            message: e.to_string(),
        })
    }

    fn decode(bytes: &[u8]) -> Result<Self, CodecError> {
        let fingerprint = single_object_fingerprint(bytes, Self::SCHEMA_FILE)?;
        let decoded = if fingerprint == Self::schema().rabin_fingerprint() {
            serde_avro_fast::from_datum_slice(&bytes[10..], Self::schema())
        } else {
            let datum = Self::lineage().resolve(fingerprint, &bytes[10..])?;
            serde_avro_fast::from_datum_slice(&datum, Self::schema())
        };
        decoded.map_err(|e| CodecError::Decode {
            schema: Self::SCHEMA_FILE,
            message: e.to_string(),
        })
    }
}

/// One schema's earlier released versions, the writer schemas a value may carry, with
/// today's version as the reader schema they resolve to.
pub struct SchemaLineage {
    file: &'static str,
    current: apache_avro::Schema,
    current_fingerprint: [u8; 8],
    earlier: HashMap<[u8; 8], apache_avro::Schema>,
}

impl SchemaLineage {
    /// Parses today's schema and its earlier versions; a broken file is a build defect.
    pub fn parse(file: &'static str, current: &str, earlier: &[&str]) -> Self {
        let parse = |json: &str| -> (apache_avro::Schema, [u8; 8]) {
            let fingerprint: Schema = json
                .parse()
                .unwrap_or_else(|e| panic!("a version of schemas/{file} is not valid Avro: {e}"));
            let schema = apache_avro::Schema::parse_str(json)
                .unwrap_or_else(|e| panic!("a version of schemas/{file} is not valid Avro: {e}"));
            (schema, *fingerprint.rabin_fingerprint())
        };
        let (current, current_fingerprint) = parse(current);
        let earlier = earlier
            .iter()
            .map(|json| {
                let (schema, fingerprint) = parse(json);
                (fingerprint, schema)
            })
            .collect();
        SchemaLineage {
            file,
            current,
            current_fingerprint,
            earlier,
        }
    }

    pub fn earlier_fingerprints(&self) -> BTreeSet<[u8; 8]> {
        self.earlier.keys().copied().collect()
    }

    /// The datum written with the earlier version `fingerprint`, re-written in today's
    /// schema: fields added since take their defaults, removed ones are skipped.
    fn resolve(&self, fingerprint: &[u8], datum: &[u8]) -> Result<Vec<u8>, CodecError> {
        let Some(writer) = self.earlier.get(fingerprint) else {
            return Err(CodecError::UnknownFingerprint {
                schema: self.file,
                found: hex(fingerprint),
                expected: hex(&self.current_fingerprint),
                earlier: self.earlier.len(),
            });
        };
        let failed = |e: apache_avro::Error| CodecError::Decode {
            schema: self.file,
            message: format!("resolving version {} to today's: {e}", hex(fingerprint)),
        };
        let value = GenericDatumReader::builder(writer)
            .reader_schema(&self.current)
            .build()
            .map_err(failed)?
            .read_value(&mut &datum[..])
            .map_err(failed)?;
        GenericDatumWriter::builder(&self.current)
            .build()
            .map_err(failed)?
            .write_value_to_vec(value)
            .map_err(failed)
    }
}

/// Whether a reader with schema `reader_json` reads every value written with
/// `writer_json` (a schema registry's BACKWARD rule): a new field needs a default, a
/// type may only promote, nothing a writer could write may be unreadable.
pub fn check_backward(writer_json: &str, reader_json: &str) -> Result<(), String> {
    let writer = apache_avro::Schema::parse_str(writer_json).map_err(|e| e.to_string())?;
    let reader = apache_avro::Schema::parse_str(reader_json).map_err(|e| e.to_string())?;
    match SchemaCompatibility::can_read(&writer, &reader) {
        Ok(Compatibility::Full) => Ok(()),
        Ok(Compatibility::Partial) => {
            Err("some values of the writer schema cannot be read (a union branch or enum symbol is missing)".into())
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Parses an embedded schema once; a broken `.avsc` is a build defect, caught by tests.
pub fn parse_embedded(cell: &'static OnceLock<Schema>, file: &str, json: &str) -> &'static Schema {
    cell.get_or_init(|| {
        json.parse()
            .unwrap_or_else(|e| panic!("schemas/{file} is not a valid Avro schema: {e}"))
    })
}

/// The writer schema's fingerprint from a single-object header.
fn single_object_fingerprint<'a>(
    bytes: &'a [u8],
    file: &'static str,
) -> Result<&'a [u8], CodecError> {
    if bytes.len() < 10 || bytes[0..2] != [0xC3, 0x01] {
        return Err(CodecError::NotSingleObject { schema: file });
    }
    Ok(&bytes[2..10])
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("value is not Avro single-object encoded (expected header C3 01 for {schema})")]
    NotSingleObject { schema: &'static str },
    #[error(
        "value was written with schema fingerprint {found}, a version of {schema} this build \
         does not know (today's is {expected}, {earlier} earlier kept): a newer producer's? \
         replay it after the upgrade"
    )]
    UnknownFingerprint {
        schema: &'static str,
        found: String,
        expected: String,
        earlier: usize,
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
