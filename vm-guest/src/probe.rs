//! `vm-guest try <action>`: performs one action and prints `OK` or the errno's name, so a test
//! asserts the exact errno a labelled process met.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::PathBuf, process::ExitCode};

use clap::Subcommand;

#[derive(Subcommand, Clone)]
pub enum Action {
    /// execve(PATH) with no arguments; on success the program replaces this process.
    Exec { path: PathBuf },
}

pub fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::ENOENT) => "ENOENT".into(),
        Some(libc::EEXIST) => "EEXIST".into(),
        Some(libc::ECONNREFUSED) => "ECONNREFUSED".into(),
        Some(n) => format!("errno {n}"),
        None => e.to_string(),
    }
}

fn report(result: io::Result<()>) -> ExitCode {
    match result {
        Ok(()) => {
            println!("OK");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", errno_name(&e));
            ExitCode::from(1)
        }
    }
}

fn cstring(p: &PathBuf) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn exec(path: &PathBuf) -> io::Result<()> {
    let c = cstring(path)?;
    let argv = [c.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated argument and environment arrays that outlive the call.
    unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(io::Error::last_os_error())
}

pub fn run(action: Action) -> ExitCode {
    match action {
        Action::Exec { path } => report(exec(&path)),
    }
}
