//! The command line without a cluster: `plan`, `apply`, `import`, `check`, driven by files.

pub mod manifests;
pub mod state_file;
