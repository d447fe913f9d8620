//! Crawler: discovers repositories (GitHub Search API, URL lists, local folders) and
//! publishes them to `repo-urls`. The discovery logic lands with issue #3; until then
//! the stage refuses to run rather than pretend.

pub mod metrics;

pub const STAGE: &str = "crawler";
pub const BUILT_BY_ISSUE: u32 = 3;
