//! The operator's brain, usable with or without a cluster: `render` a spec into the desired
//! job body, `normalise` desired and live alike, `diff` them over the managed fields, build the
//! bodies to send, and (in `engine`) execute the resulting plan against a Qualys client.
//! No Kubernetes client below this line.

pub mod compare;
pub mod desired;
pub mod diff;
pub mod digest;
pub mod directory;
pub mod engine;
pub mod gateway;
pub mod import;
pub mod normalise;
pub mod render;
pub mod state;
pub mod update;

pub use compare::{Compact, diff_live};
pub use desired::{CacheSlot, Desired, DesiredCache};
pub use diff::{FieldDiff, diff};
pub use directory::Directory;
pub use engine::{
    Claims, Context, IdentifiedBy, Mode, NoClaims, Notice, NoticeType, Observation, Outcome,
};
pub use gateway::{GatewayRead, GatewayWrite, MemoryGateway};
pub use normalise::{normalise, normalise_desired, normalise_live, normalise_live_managed};
pub use render::{RenderError, RenderInputs, Rendered, ScriptResolver, render};
pub use state::{EngineState, MemoryStore, StateStore, StoreError};
pub use update::{create_body, update_body};

#[cfg(test)]
mod tests;
