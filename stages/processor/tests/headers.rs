//! A `.h` file's language by GitHub Linguist's heuristics: real headers of C++ and of C
//! libraries vendored by crates in the local cargo registry, each given the language
//! Linguist gives it, and a C++ header kept as C++ by the processor.

mod support;

use codelupe_processor::select::by_content;
use codelupe_processor::{ProcessorOptions, Verdict};
use codelupe_runtime::language::Kept;
use support::processor;

/// (crate, path in it, Linguist's language).
const HEADERS: &[(&str, &str, &str)] = &[
    ("rdkafka-sys-4", "librdkafka/src-cpp/rdkafkacpp.h", "C++"),
    (
        "rdkafka-sys-4",
        "librdkafka/src-cpp/rdkafkacpp_int.h",
        "C++",
    ),
    ("rdkafka-sys-4", "librdkafka/tests/testcpp.h", "C++"),
    ("torch-sys-0", "libtch/torch_api.h", "C++"),
    // A C library's header, but its `__cplusplus >=` checks match Linguist's C++
    // pattern: GitHub calls it C++ too.
    ("zstd-sys-2", "zstd/lib/zstd.h", "C++"),
    ("libgit2-sys-0", "libgit2/include/git2.h", "C"),
    ("libgit2-sys-0", "libgit2/include/git2/repository.h", "C"),
    ("tree-sitter-0", "include/tree_sitter/api.h", "C"),
    ("libz-sys-1", "src/zlib/zlib.h", "C"),
    ("rdkafka-sys-4", "librdkafka/src/rdkafka.h", "C"),
    ("torch-sys-0", "libtch/stb_image.h", "C"),
    ("openssl-src-300", "openssl/include/crypto/evp.h", "C"),
];

fn read(krate: &str, path: &str) -> String {
    let roots = codelupe_testkit::registry_crates(&[krate]);
    let root = roots
        .first()
        .unwrap_or_else(|| panic!("{krate} not in the registry"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{krate}/{path}: {e}"))
}

#[test]
fn headers_of_cpp_and_c_libraries_get_linguists_language() {
    let mut disagreements = Vec::new();
    for (krate, path, expected) in HEADERS {
        let got = by_content(path, &read(krate, path), &Kept::default());
        if got != Ok(*expected) {
            disagreements.push(format!("{krate}/{path}: {got:?}, Linguist {expected}"));
        }
    }
    assert!(disagreements.is_empty(), "{disagreements:#?}");
    // An extension only C or only C++ claims keeps its language whatever the content.
    let cpp = read("rdkafka-sys-4", "librdkafka/src-cpp/rdkafkacpp_int.h");
    assert_eq!(by_content("src/defs.c", &cpp, &Kept::default()), Ok("C"));
    assert_eq!(
        by_content("src/defs.hpp", &cpp, &Kept::default()),
        Ok("C++")
    );
}

/// rdkafkacpp.h, parsed as C, fell to syntax 0 and was dropped as `low_quality`.
#[test]
fn a_cpp_header_is_kept_as_cpp() {
    let (processor, _dir) = processor(ProcessorOptions::default());
    let clone = codelupe_testkit::unstored_clone_record("fixture/headers", &"0".repeat(40));
    let path = "src-cpp/rdkafkacpp.h";
    let text = read("rdkafka-sys-4", "librdkafka/src-cpp/rdkafkacpp.h");
    match processor.examine_file(&clone, path, Some("C"), text.as_bytes()) {
        Verdict::Keep(file) => {
            assert_eq!(file.language, "C++");
            assert!(
                file.quality_components["syntax"] > 0.5,
                "{:?}",
                file.quality_components
            );
        }
        Verdict::Skip(reason) => panic!("{path} skipped as {reason}"),
    }
}
