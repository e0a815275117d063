//! network.connect enforcement end to end against local listeners (loopback addresses only),
//! audit mode, policy reload on SIGHUP, and a policy of 20,000 rules: each group with a daemon
//! of its own, one daemon at a time.

pub mod connect;
mod listeners;
pub mod reload;
pub mod scale;
