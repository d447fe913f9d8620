//! A file's programming language by GitHub Linguist's data, for every stage that asks:
//! the `linguist` crate carries Linguist's `languages.yml` and `heuristics.yml`
//! (compiled in), and this module runs Linguist's strategies over them in Linguist's
//! order (modeline, file name, shebang, extension, XML header, manual page names,
//! heuristics), then, where candidates remain, Linguist's naive Bayes classifier over
//! the file's tokens ([`classifier`], with go-enry's trained tables). [`tie_break`]
//! settles what the classifier cannot: a name alone, or candidates it was not trained on.

pub mod classifier;
mod detect;
mod index;
mod selection;
mod shebang;
mod tokens;

pub use classifier::Classifier;
pub use detect::{of_file, of_file_with, of_path};
pub use index::{candidates, canonical, kind, resolve, tie_break, Kind, DEFAULT_LANGUAGES};
pub use selection::{Kept, Selection};
pub use tokens::tokenize;
