//! Processor: reads each clone's HEAD tree from the bare repository, selects, parses
//! and scores files, publishing `code-files`. Built by issue #5; until then the stage
//! refuses to run rather than pretend.

pub mod metrics;

pub const STAGE: &str = "processor";
pub const BUILT_BY_ISSUE: u32 = 5;
