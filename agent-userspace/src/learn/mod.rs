//! Learning a policy from what a label did, and replaying recorded events against one.
//!
//! `events` reads the daemon's JSON lines → `observe` counts each action's targets →
//! `fold` makes rules of paths → `write` writes the policy's YAML. `diff` replays events
//! against a policy (`actgate diff`). All of it is pure but for reading the files named.

pub mod diff;
pub mod events;
pub mod fold;
// `actgate learn`'s records and writer (and through them `fold`): the command that runs a
// workload and records it uses them (issue 17); until it lands only the tests do.
#[cfg_attr(not(test), expect(dead_code, reason = "the API of `actgate learn`"))]
pub mod observe;
#[cfg_attr(not(test), expect(dead_code, reason = "the API of `actgate learn`"))]
pub mod write;
