//! What a parse found, and why a parse gave nothing: shared by the parse, the macro
//! reparse and the syntax score.

use codelupe_runtime::records::ParseStats;

/// What the parse found: the record's statistics, plus the share of bytes inside
/// ERROR nodes (a few ERROR nodes can swallow most of a broken file).
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub stats: ParseStats,
    pub error_byte_share: f64,
    /// ERROR and MISSING nodes.
    pub errors: u64,
}

#[derive(Debug)]
pub enum ParseFailure {
    Timeout,
    NoTree,
}
