//! Records as a producer built with an earlier schema wrote them, for the evolution
//! tests: the old `.avsc` itself does the writing.

use std::path::{Path, PathBuf};

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::writer::datum::GenericDatumWriter;
use codelupe_runtime::codec::AvroRecord;

/// The versions kept in `schemas/earlier/` for one schema file, oldest first.
pub fn earlier_files(schema_file: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../schemas/earlier")
        .join(schema_file.trim_end_matches(".avsc"));
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(dir) => dir.map(|entry| entry.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    files.sort_by_key(|path| version_number(path));
    files
}

/// The `n` of `schemas/earlier/<name>/<n>.avsc`.
pub fn version_number(path: &Path) -> u32 {
    let stem = path.file_stem().unwrap().to_str().unwrap();
    stem.parse()
        .unwrap_or_else(|_| panic!("{}: earlier versions are named <n>.avsc", path.display()))
}

/// The Rabin fingerprint a single-object header carries for `json`.
pub fn fingerprint(json: &str) -> [u8; 8] {
    let schema: serde_avro_fast::Schema = json.parse().unwrap();
    *schema.rabin_fingerprint()
}

/// `value` as a producer built with the schema `old_json` wrote it: the fields the old
/// schema lacks are left out, the header carries the old fingerprint.
pub fn written_with<T: AvroRecord>(value: &T, old_json: &str) -> Vec<u8> {
    let current = apache_avro::Schema::parse_str(T::SCHEMA_JSON).unwrap();
    let old = apache_avro::Schema::parse_str(old_json).unwrap();
    let today = value.encode().unwrap();
    let as_old = GenericDatumReader::builder(&current)
        .reader_schema(&old)
        .build()
        .unwrap()
        .read_value(&mut &today[10..])
        .unwrap();
    let mut bytes = vec![0xC3, 0x01];
    bytes.extend_from_slice(&fingerprint(old_json));
    let writer = GenericDatumWriter::builder(&old).build().unwrap();
    bytes.extend(writer.write_value_to_vec(as_old).unwrap());
    bytes
}
