//! Learning a policy from what a label did, and replaying recorded events against one.
//!
//! `command` runs the workload and gets its events from the daemon (`crate::learning`) →
//! `events` reads the JSON lines → `observe` counts each action's targets → `fold` makes
//! rules of paths → `write` writes the policy's YAML. `diff` replays events against a policy
//! (`actgate diff`). All but `command` is pure but for reading the files named.

pub mod command;
pub mod diff;
pub mod events;
pub mod fold;
pub mod observe;
pub mod write;
