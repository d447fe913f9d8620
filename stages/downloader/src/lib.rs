//! Downloader: filters `repo-urls` by metadata and makes bare shallow clones into the
//! clone store, publishing `repo-clones`. Built by issue #4; until then the stage
//! refuses to run rather than pretend.

pub mod metrics;

pub const STAGE: &str = "downloader";
pub const BUILT_BY_ISSUE: u32 = 4;
