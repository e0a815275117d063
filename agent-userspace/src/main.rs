//! actgate: governs what labelled AI-agent workloads may do, with BPF LSM programs that
//! decide in the kernel.
//!
//! A policy travels: `agent_policy` parses and compiles it → `plan` resolves what it names on
//! this host → `maps` writes it into the kernel → the agent-ebpf programs decide →
//! `counters`/`events` report → `metrics`/`status` show.

mod attach;
mod binding;
mod bpf;
mod btf;
mod cgroup;
mod control;
mod counters;
mod daemon;
mod dns;
mod events;
mod generate;
mod health;
mod http;
mod inodes;
mod kallsyms;
mod kube;
mod launch;
mod learn;
mod learning;
mod maps;
mod metrics;
mod pin;
mod plan;
mod rcu;
mod revocation;
mod selftest;
mod state;
mod status;
mod takeover;
mod unload;
mod watch;

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Parser)]
#[command(
    name = "actgate",
    version,
    about = "Governs what AI-agent workloads may do, in the kernel"
)]
struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Validate a policy file or directory; print every problem as file:line:column.
    Check {
        /// A policy file or a directory of *.yaml files.
        path: PathBuf,
    },
    /// Replay recorded events against a policy; print those it would refuse.
    ///
    /// Each refused event is a line `EVENTS:LINE: VERDICT ACTION "TARGET" (by EXE): SECTION:
    /// WHAT DECIDES` (a deny rule, the section's default, or what actgate refuses to every
    /// label), and a count ends the output. Each event is judged by the policy naming its label, as
    /// the kernel would judge it now; budgets are not replayed.
    ///
    /// Exit status: 0 when the policy refuses none of the events, 1 when it refuses some (in
    /// `mode: audit`, would report some), 2 when the events or the policy can't be read, or
    /// no event is of a label the policy names.
    Diff {
        /// JSON lines written by `actgate run --events` (with `--events-allow`, every action).
        #[arg(long)]
        events: PathBuf,
        /// A policy file or a directory of *.yaml files; each event is judged by the policy
        /// naming its label.
        #[arg(long)]
        policy: PathBuf,
    },
    /// Learn a policy: run CMD under a label that denies nothing and records everything,
    /// then write the policy that lets the same run pass.
    ///
    /// The label runs under an allow-everything audit policy while learning (in the kernel,
    /// with allow events on), then under its own policy again. Writes are folded into trees
    /// only below the working directory (this one) and the temp directories, on evidence;
    /// reads are allowed but for credentials, which the policy's top lists for review; execs
    /// and connects are listed as seen. `actgate check` accepts what it writes.
    ///
    /// Exit status: CMD's own when it ran (the policy is written whatever it was), 0 without
    /// CMD, 125 when nothing could be learnt (no daemon, a revoked label, ...).
    Learn(learn::command::Options),
    /// Run the daemon: load the BPF LSM programs and enforce the policies.
    Run(daemon::Options),
    /// Internal: the start-up self-test's probe process.
    #[command(hide = true)]
    SelftestProbe {
        #[arg(long)]
        cgroup: PathBuf,
        /// The self-test's probe files.
        #[arg(long)]
        dir: PathBuf,
        /// The daemon, which signals and ptrace must not reach.
        #[arg(long)]
        daemon_pid: u32,
    },
    /// Run CMD under a label; refuses unless a running daemon enforces that label.
    Exec {
        /// The label (a `labels:` entry of a loaded policy).
        #[arg(long)]
        label: String,
        /// Run CMD as this user (a name or a uid), with that user's groups. Without it, under
        /// sudo CMD runs as the invoking user; root must say `--user root` to run it as root.
        #[arg(long)]
        user: Option<String>,
        /// The daemon's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Move a running process and every process it started into a label, for an agent
    /// started without `actgate exec`; refuses unless a running daemon enforces that label.
    ///
    /// Processes it started meanwhile are moved too. A process under another label stays
    /// there. What the processes hold already (open files, connections) is not judged again.
    /// Exit status: 0 when the tree is in the label, 125 when actgate refuses or fails.
    Attach {
        /// The label (a `labels:` entry of a loaded policy).
        #[arg(long)]
        label: String,
        /// The process at the top of the tree.
        #[arg(long)]
        pid: u32,
        /// The daemon's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Remove actgate's programs from the kernel: enforcement ends. Refused while labelled
    /// processes run, unless --force. A running daemon unloads and exits.
    Unload {
        /// Unload even though labelled processes run (they run unconfined afterwards).
        #[arg(long)]
        force: bool,
        /// The daemon's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Where actgate pins its programs in bpffs.
        #[arg(long, default_value = pin::DEFAULT_ROOT)]
        pin_dir: PathBuf,
    },
    /// Deny every action of a label's processes, at once and until `actgate restore`; it
    /// lasts across reloads and daemon restarts.
    Revoke {
        /// The label (a `labels:` entry of a loaded policy).
        label: String,
        /// Why, for `actgate status`.
        #[arg(long, default_value = "revoked by the operator")]
        reason: String,
        /// Also end the label's processes (cgroup.kill).
        #[arg(long)]
        kill: bool,
        /// The daemon's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Lift a label's revocation.
    Restore {
        /// The label.
        label: String,
        /// The daemon's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Internal: write the man pages and shell completions (`cargo xtask package` ships them).
    #[command(hide = true)]
    Generate {
        /// Where to write actgate.1 and a page per subcommand.
        #[arg(long)]
        man: PathBuf,
        /// Where to write the bash, zsh and fish completions.
        #[arg(long)]
        completions: PathBuf,
    },
    /// Show the running daemon's policies, labels, verification and counters.
    Status {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// The daemon's control socket.
        #[arg(long, default_value = control::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ACTGATE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match agent_policy::load_path(path) {
        Ok(set) => {
            for warning in agent_policy::symlinks::warnings(&set, agent_policy::symlinks::on_host) {
                println!("{warning}");
            }
            println!(
                "{}: ok: {} policies, {} labels, {} rules",
                path.display(),
                set.policies.len(),
                set.label_count(),
                set.rule_count()
            );
            ExitCode::SUCCESS
        }
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            eprintln!("{}: {} problem(s)", path.display(), problems.len());
            ExitCode::from(1)
        }
    }
}

/// `actgate run`: the daemon, until SIGTERM or a fatal error.
fn run(opts: daemon::Options) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("actgate: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(daemon::run(opts)) {
        Ok(daemon::Stopped::Signal) => ExitCode::SUCCESS,
        Ok(daemon::Stopped::Unloaded) => ExitCode::from(daemon::EXIT_UNLOADED),
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("actgate: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sends `req` to the daemon for `actgate NAME`; `done` prints the expected reply and says
/// whether it was one. Exit 0 when it was, 1 on an error or anything else.
fn ask(
    name: &str,
    socket: &std::path::Path,
    req: &control::Request,
    done: impl FnOnce(&control::Reply) -> bool,
) -> ExitCode {
    match control::request(socket, req) {
        Ok(control::Reply::Error(e)) => {
            eprintln!("actgate {name}: {e}");
            ExitCode::FAILURE
        }
        Ok(reply) if done(&reply) => ExitCode::SUCCESS,
        Ok(other) => {
            eprintln!("actgate {name}: unexpected reply: {other:?}");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("actgate {name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match cli.command {
        Command::Check { path } => check(&path),
        Command::Diff { events, policy } => learn::diff::command(&events, &policy),
        Command::Learn(opts) => learn::command::command(&opts),
        Command::Run(args) => run(args),
        Command::SelftestProbe {
            cgroup,
            dir,
            daemon_pid,
        } => match selftest::probe(&cgroup, &dir, daemon_pid) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("actgate selftest-probe: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Exec {
            label,
            user,
            socket,
            cmd,
        } => {
            let (code, err) = launch::exec(&socket, &label, user.as_deref(), &cmd);
            eprintln!("actgate exec: {err:#}");
            ExitCode::from(code as u8)
        }
        Command::Attach { label, pid, socket } => match attach::attach(&socket, &label, pid) {
            Ok(done) => {
                println!(
                    "actgate attach: process {pid}'s tree is under label {label:?}: {} moved, {} \
                     there already",
                    done.moved, done.already
                );
                for (p, other) in &done.other_labels {
                    println!("  process {p} stays under label {other:?}");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("actgate attach: {e:#}");
                ExitCode::from(launch::EXIT_REFUSED as u8)
            }
        },
        Command::Unload {
            force,
            socket,
            pin_dir,
        } => match unload::unload(&socket, &pin_dir, force) {
            Ok(done) => {
                println!("{done}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("actgate unload: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Revoke {
            label,
            reason,
            kill,
            socket,
        } => {
            let req = control::Request::Revoke {
                label: label.clone(),
                reason,
                kill,
            };
            ask("revoke", &socket, &req, |reply| match reply {
                control::Reply::Revoked { already, killed } => {
                    match already {
                        Some(r) => println!(
                            "label {label:?} was revoked already ({} since {}: {})",
                            r.trigger, r.since, r.reason
                        ),
                        None => println!(
                            "label {label:?} revoked: the kernel denies every action of its \
                             processes until `actgate restore {label}`"
                        ),
                    }
                    if kill {
                        println!("ended {killed} process(es) of label {label:?}");
                    }
                    true
                }
                _ => false,
            })
        }
        Command::Restore { label, socket } => {
            let req = control::Request::Restore {
                label: label.clone(),
            };
            ask("restore", &socket, &req, |reply| match reply {
                control::Reply::Restored { was_revoked: true } => {
                    println!("label {label:?} restored: its policy decides again");
                    true
                }
                control::Reply::Restored { was_revoked: false } => {
                    println!("label {label:?} was not revoked");
                    true
                }
                _ => false,
            })
        }
        Command::Generate { man, completions } => {
            use clap::CommandFactory;
            match generate::generate(Cli::command(), &man, &completions) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("actgate generate: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Status { json, socket } => {
            match control::request(&socket, &control::Request::Status) {
                Ok(control::Reply::Status(s)) => {
                    if json {
                        println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default());
                    } else {
                        print!("{}", status::render(&s));
                    }
                    ExitCode::SUCCESS
                }
                Ok(control::Reply::Error(e)) => {
                    eprintln!("actgate status: {e}");
                    ExitCode::FAILURE
                }
                Ok(other) => {
                    eprintln!("actgate status: unexpected reply: {other:?}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("actgate status: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    /// clap checks its definitions (unique names and groups) only when a debug build parses
    /// a command line; this test does it for every subcommand at once.
    #[test]
    fn the_command_line_definitions_are_consistent() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
