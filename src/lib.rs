//! qpm-operator: manage Qualys Patch Management deployment jobs declaratively.
//!
//! The flow runs one way: `api` (the DeploymentJob resource) → `reconcile` (render, normalise,
//! diff, plan, engine) → `qualys` (wire model and HTTP client). `controller` adapts the engine to
//! Kubernetes; `cli` to files on disk; `sim` stands in for the Qualys gateway. The allowed
//! arrows between modules, all of them, are listed in ARCHITECTURE.md.

pub mod api;
pub mod cli;
pub mod controller;
pub mod files;
pub mod probe;
pub mod qualys;
pub mod reconcile;
pub mod sim;

#[cfg(test)]
mod seed_fixtures;
