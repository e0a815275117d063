//! actgate's policy model: parse and validate `policies/*.yaml`, and compile policies into the
//! entries of the kernel's rule maps.
#![forbid(unsafe_code)]

pub mod compile;
pub mod compiled;
pub mod decide;
pub mod diagnostic;
pub mod hosts;
pub mod model;
pub mod parse;
pub mod pattern;
pub mod symlinks;
mod yaml;

pub use compile::{
    compile_guards, compile_limits, compile_net, compile_paths, defaults, denied_capabilities,
    has_rules, limit_bits,
};
pub use compiled::{CompileError, CompiledLabel, CompiledRuleset, CompiledSet, compile_set};
pub use decide::{DecidedBy, Decision};
pub use diagnostic::Diagnostic;
pub use hosts::NameJudgement;
pub use model::{
    Breaker, Budget, Fallback, HostName, HostPattern, Hosts, Mode, NetPattern, PathPattern,
    PathSite, Policy, PolicySet, ProcessRules, Rules, UnixPattern,
};
pub use parse::{load_path, parse_str};
pub use pattern::{
    CgroupPattern, ConnectPattern, PatternError, parse_connect, parse_host, parse_listen,
    parse_net, parse_path, parse_unix,
};
