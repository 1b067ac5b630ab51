//! The command line without a cluster: `plan`, `apply`, `import`, `check`, driven by files.
//!
//! Each command has its `Args` (clap) and an async `run` returning the process exit code, plus
//! a library function doing the work (`plan::plan`, `apply::apply`, `import::import`,
//! `check::check`). `connect` decides where calls go (a gateway, a connectionRef Secret of the
//! input, or the embedded simulator when asked for); `state_file` is the CLI's memory, `lock`
//! keeps two `apply` runs off one state file; `output` is where every line is printed
//! (escaped, and quiet on a closed pipe); `docs/cli.md` is the user's guide.

pub mod apply;
pub mod check;
pub mod common;
pub mod connect;
pub mod from_cluster;
pub mod import;
pub mod lock;
pub mod manifests;
pub mod output;
pub mod plan;
pub mod state_file;
pub mod stats;
