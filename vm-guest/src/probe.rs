//! `vm-guest try <action>`: performs one action and prints `OK` or the errno's name, so a test
//! asserts the exact errno a labelled process met.
//!
//! Every action is exactly one system call on the object under test (plus `socket` and `close`
//! for the network ones), made through libc, so a test knows which hook judged it and how many
//! decisions it cost.

mod dns;

use std::{
    ffi::CString,
    io,
    net::SocketAddr,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::ExitCode,
};

use clap::Subcommand;

#[derive(Subcommand, Clone)]
pub enum Action {
    /// execve(PATH) with no arguments; on success the program replaces this process.
    Exec { path: PathBuf },
    /// open(PATH, O_RDONLY).
    OpenRead { path: PathBuf },
    /// open(PATH, O_WRONLY).
    OpenWrite { path: PathBuf },
    /// open(PATH, O_WRONLY|O_APPEND).
    OpenAppend { path: PathBuf },
    /// open(PATH, O_RDWR).
    OpenRdwr { path: PathBuf },
    /// open(PATH, O_WRONLY|O_TRUNC).
    OpenTrunc { path: PathBuf },
    /// open(PATH, O_CREAT|O_WRONLY|O_EXCL, 0644).
    Create { path: PathBuf },
    /// open(PATH, O_CREAT|O_RDONLY, 0644).
    CreateRdonly { path: PathBuf },
    /// truncate(PATH, LEN).
    Truncate { path: PathBuf, len: i64 },
    /// unlink(PATH).
    Unlink { path: PathBuf },
    /// mkdir(PATH, 0755).
    Mkdir { path: PathBuf },
    /// rmdir(PATH).
    Rmdir { path: PathBuf },
    /// mkfifo(PATH, 0644).
    Mkfifo { path: PathBuf },
    /// rename(FROM, TO).
    Rename { from: PathBuf, to: PathBuf },
    /// link(FROM, TO).
    Link { from: PathBuf, to: PathBuf },
    /// symlink(TARGET, LINKPATH).
    Symlink { target: PathBuf, linkpath: PathBuf },
    /// chmod(PATH, MODE), MODE in octal.
    Chmod { path: PathBuf, mode: String },
    /// chown(PATH, UID, GID).
    Chown { path: PathBuf, uid: u32, gid: u32 },
    /// A TCP socket's connect(ADDR:PORT); IPv6 as `[::1]:9000`.
    ConnectTcp { addr: SocketAddr },
    /// A UDP socket's connect(ADDR:PORT), then send(2) of one datagram (no destination).
    ConnectUdp { addr: SocketAddr },
    /// sendto(ADDR:PORT) of one datagram from an unconnected, unbound UDP socket.
    SendtoUdp { addr: SocketAddr },
    /// A TCP socket's sendto(ADDR:PORT, MSG_FASTOPEN): a connect carried by its first send
    /// (TCP Fast Open), which passes no connect(2).
    SendtoTcpFastopen { addr: SocketAddr },
    /// An IPv4 UDP socket's sendto(ADDR:PORT) of one datagram, the address given with
    /// sin_family AF_UNSPEC, which the kernel sends to as if it were AF_INET.
    SendtoUdpUnspec { addr: std::net::SocketAddrV4 },
    /// An AF_UNIX stream socket's connect(PATH).
    ConnectUnix { path: PathBuf },
    /// kill(PID, SIGNAL).
    Kill { pid: i32, signal: i32 },
    /// ptrace(PTRACE_ATTACH, PID), detaching again if it succeeds.
    PtraceAttach { pid: i32 },
    /// bpf(BPF_MAP_CREATE) of a one-element array.
    BpfMapCreate,
    /// mount("none", PATH, FSTYPE), unmounted again if it succeeds (CAP_SYS_ADMIN).
    Mount { fstype: String, path: PathBuf },
    /// mount(FROM, TO, MS_BIND), unmounted again if it succeeds (CAP_SYS_ADMIN).
    BindMount { from: PathBuf, to: PathBuf },
    /// move_mount(FROM, TO) (CAP_SYS_ADMIN).
    MoveMount { from: PathBuf, to: PathBuf },
    /// pivot_root(NEW_ROOT, PUT_OLD) (CAP_SYS_ADMIN).
    PivotRoot { new_root: PathBuf, put_old: PathBuf },
    /// chroot(PATH) (CAP_SYS_CHROOT).
    Chroot { path: PathBuf },
    /// unshare(CLONE_NEWNS) (CAP_SYS_ADMIN), then a bind mount of FROM over TO in the new
    /// mount namespace: the bind is what must be refused.
    UnshareMountBind { from: PathBuf, to: PathBuf },
    /// unshare(CLONE_NEWUSER|CLONE_NEWNS) (`unshare -Urm`, no capability needed), then a bind
    /// mount of FROM over TO.
    UnshareUserMountBind { from: PathBuf, to: PathBuf },
    /// ioctl(TIOCSTI) of one byte into a new pseudo-terminal's input.
    Tiocsti,
    /// name_to_handle_at(PATH), then open_by_handle_at(O_RDONLY) through PATH's directory
    /// (CAP_DAC_READ_SEARCH).
    OpenByHandle { path: PathBuf },
    /// socket(AF_INET, SOCK_RAW, IPPROTO_ICMP) (CAP_NET_RAW).
    RawSocket,
    /// unshare(CLONE_NEWUSER).
    UnshareUser,
    /// clone3(CLONE_INTO_CGROUP) into the cgroup directory DIR (opened first); the child
    /// exits at once.
    CloneIntoCgroup { dir: PathBuf },
    /// open(PATH, O_RDONLY) as fast as possible for SECONDS; prints the number of attempts
    /// (every one of which must meet EPERM).
    FloodOpen { path: PathBuf, seconds: f64 },
    /// One DNS query for NAME, then TCP connects to the addresses answered; prints the
    /// rcode, the addresses and what each connect met (see `probe/dns.rs`).
    DnsQuery(dns::Lookup),
}

pub fn errno_name(e: &io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM",
        Some(libc::EACCES) => "EACCES",
        Some(libc::ENOENT) => "ENOENT",
        Some(libc::EEXIST) => "EEXIST",
        Some(libc::ENOTDIR) => "ENOTDIR",
        Some(libc::EISDIR) => "EISDIR",
        Some(libc::ENOTEMPTY) => "ENOTEMPTY",
        Some(libc::EINVAL) => "EINVAL",
        Some(libc::EBADF) => "EBADF",
        Some(libc::EXDEV) => "EXDEV",
        Some(libc::EROFS) => "EROFS",
        Some(libc::ELOOP) => "ELOOP",
        Some(libc::ENXIO) => "ENXIO",
        Some(libc::ETXTBSY) => "ETXTBSY",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        Some(libc::EAFNOSUPPORT) => "EAFNOSUPPORT",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EINPROGRESS) => "EINPROGRESS",
        Some(libc::EDESTADDRREQ) => "EDESTADDRREQ",
        Some(n) => return format!("errno {n}"),
        None => return e.to_string(),
    };
    name.into()
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

fn cstring(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// A libc return value: -1 means errno says why.
fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn exec(path: &Path) -> io::Result<()> {
    let c = cstring(path)?;
    let argv = [c.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null()];
    // SAFETY: NUL-terminated argument and environment arrays that outlive the call.
    unsafe { libc::execve(c.as_ptr(), argv.as_ptr(), envp.as_ptr()) };
    Err(io::Error::last_os_error())
}

/// open(2) with FLAGS (O_CLOEXEC added), then close.
fn open(path: &Path, flags: libc::c_int) -> io::Result<()> {
    let c = cstring(path)?;
    // SAFETY: a NUL-terminated path; the mode argument is read only with O_CREAT.
    let fd =
        check(unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC, 0o644 as libc::c_uint) })?;
    // SAFETY: closing the descriptor we just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

/// A call taking one path.
fn path_call(path: &Path, call: impl FnOnce(*const libc::c_char) -> libc::c_int) -> io::Result<()> {
    let c = cstring(path)?;
    check(call(c.as_ptr())).map(drop)
}

/// A call taking two paths.
fn two_path_call(
    a: &Path,
    b: &Path,
    call: impl FnOnce(*const libc::c_char, *const libc::c_char) -> libc::c_int,
) -> io::Result<()> {
    let (a, b) = (cstring(a)?, cstring(b)?);
    check(call(a.as_ptr(), b.as_ptr())).map(drop)
}

/// A socket address in the layout the kernel takes, with its length.
fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; all zeroes is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in, sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write(&mut storage as *mut _ as *mut libc::sockaddr_in6, sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A socket closed when dropped.
struct Socket(libc::c_int);

impl Socket {
    fn new(family: libc::c_int, kind: libc::c_int) -> io::Result<Socket> {
        // SAFETY: plain system call.
        check(unsafe { libc::socket(family, kind | libc::SOCK_CLOEXEC, 0) }).map(Socket)
    }

    fn for_addr(addr: &SocketAddr, kind: libc::c_int) -> io::Result<Socket> {
        let family = match addr {
            SocketAddr::V4(_) => libc::AF_INET,
            SocketAddr::V6(_) => libc::AF_INET6,
        };
        Socket::new(family, kind)
    }

    fn connect_raw(&self, sa: *const libc::sockaddr, len: libc::socklen_t) -> io::Result<()> {
        // SAFETY: `sa` points to `len` valid bytes of a socket address.
        check(unsafe { libc::connect(self.0, sa, len) }).map(drop)
    }

    fn connect(&self, addr: &SocketAddr) -> io::Result<()> {
        let (storage, len) = sockaddr(addr);
        self.connect_raw(&storage as *const _ as *const libc::sockaddr, len)
    }
}

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(self.0) };
    }
}

const DATAGRAM: &[u8] = b"actgate-probe";

fn connect_tcp(addr: &SocketAddr) -> io::Result<()> {
    Socket::for_addr(addr, libc::SOCK_STREAM)?.connect(addr)
}

fn connect_udp(addr: &SocketAddr) -> io::Result<()> {
    let s = Socket::for_addr(addr, libc::SOCK_DGRAM)?;
    s.connect(addr)?;
    // SAFETY: a valid buffer of the given length.
    let sent = unsafe { libc::send(s.0, DATAGRAM.as_ptr().cast(), DATAGRAM.len(), 0) };
    check(sent as libc::c_int).map(drop)
}

/// sendto(ADDR:PORT) of one datagram (or TCP segment) from a new, unbound socket of `ty`.
fn sendto(addr: &SocketAddr, ty: libc::c_int, flags: libc::c_int) -> io::Result<()> {
    let s = Socket::for_addr(addr, ty)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: a valid buffer and socket address of the given lengths.
    let sent = unsafe {
        libc::sendto(
            s.0,
            DATAGRAM.as_ptr().cast(),
            DATAGRAM.len(),
            flags,
            &storage as *const _ as *const libc::sockaddr,
            len,
        )
    };
    check(sent as libc::c_int).map(drop)
}

fn sendto_udp_unspec(addr: &std::net::SocketAddrV4) -> io::Result<()> {
    let s = Socket::for_addr(&SocketAddr::V4(*addr), libc::SOCK_DGRAM)?;
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_UNSPEC as libc::sa_family_t,
        sin_port: addr.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(addr.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid buffer and socket address of the given lengths.
    let sent = unsafe {
        libc::sendto(
            s.0,
            DATAGRAM.as_ptr().cast(),
            DATAGRAM.len(),
            0,
            &sin as *const libc::sockaddr_in as *const libc::sockaddr,
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    check(sent as libc::c_int).map(drop)
}

fn connect_unix(path: &Path) -> io::Result<()> {
    let s = Socket::new(libc::AF_UNIX, libc::SOCK_STREAM)?;
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    for (dst, src) in sun.sun_path.iter_mut().zip(bytes) {
        *dst = *src as libc::c_char;
    }
    s.connect_raw(
        &sun as *const _ as *const libc::sockaddr,
        std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
    )
}

fn chmod(path: &Path, mode: &str) -> io::Result<()> {
    let mode = libc::mode_t::from_str_radix(mode, 8)
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY (all the path calls below): NUL-terminated paths that outlive the call.
    path_call(path, |p| unsafe { libc::chmod(p, mode) })
}

fn ptrace_attach(pid: libc::pid_t) -> io::Result<()> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: PTRACE_ATTACH takes no pointers.
    check(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, null, null) } as libc::c_int)?;
    // SAFETY: waiting for the stop of the tracee, then letting it go.
    unsafe {
        libc::waitpid(pid, std::ptr::null_mut(), libc::__WALL);
        libc::ptrace(libc::PTRACE_DETACH, pid, null, null);
    }
    Ok(())
}

fn bpf_map_create() -> io::Result<()> {
    use aya_obj::generated::bpf_map_type;
    agent_common::sys::create_map(bpf_map_type::BPF_MAP_TYPE_ARRAY, None).map(drop)
}

fn mount(fstype: &str, path: &Path) -> io::Result<()> {
    let target = cstring(path)?;
    let fstype = cstring(fstype.as_ref())?;
    let src = c"none";
    // SAFETY: NUL-terminated strings that outlive the calls; no mount data.
    unsafe {
        check(libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        ))?;
        libc::umount(target.as_ptr());
    }
    Ok(())
}

/// mount(FROM, TO, MS_BIND), then umount(TO).
fn bind_mount(from: &Path, to: &Path) -> io::Result<()> {
    let (src, target) = (cstring(from)?, cstring(to)?);
    // SAFETY: NUL-terminated strings that outlive the calls; no mount data.
    unsafe {
        check(libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        libc::umount(target.as_ptr());
    }
    Ok(())
}

/// unshare(FLAGS), then `bind_mount` in the namespaces it made.
fn unshare_bind(flags: libc::c_int, from: &Path, to: &Path) -> io::Result<()> {
    // SAFETY: unshare(2) of this single-threaded process; it exits right after.
    check(unsafe { libc::unshare(flags) })?;
    // Mounts made from here must not propagate back to the parent namespace.
    let root = c"/";
    // SAFETY: NUL-terminated strings; MS_REC|MS_PRIVATE takes no source or data.
    check(unsafe {
        libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    bind_mount(from, to)
}

/// Opens a new pseudo-terminal and pushes one byte into its input through the terminal side.
fn tiocsti() -> io::Result<()> {
    // SAFETY: posix_openpt and friends on fds this function owns; ptsname's buffer is read
    // before any other call can reuse it.
    unsafe {
        let master = check(libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY))?;
        check(libc::grantpt(master))?;
        check(libc::unlockpt(master))?;
        let name = libc::ptsname(master);
        if name.is_null() {
            return Err(io::Error::last_os_error());
        }
        let slave = check(libc::open(name, libc::O_RDWR | libc::O_NOCTTY))?;
        let byte = b'x';
        let r = check(libc::ioctl(slave, libc::TIOCSTI, &raw const byte));
        libc::close(slave);
        libc::close(master);
        r.map(drop)
    }
}

fn open_by_handle(path: &Path) -> io::Result<()> {
    /// `struct file_handle` with room for MAX_HANDLE_SZ bytes.
    #[repr(C)]
    struct FileHandle {
        bytes: u32,
        kind: i32,
        handle: [u8; 128],
    }
    let mut fh = FileHandle {
        bytes: 128,
        kind: 0,
        handle: [0; 128],
    };
    let mut mount_id: libc::c_int = 0;
    let c = cstring(path)?;
    // SAFETY: a NUL-terminated path and a handle buffer of the size it declares.
    check(unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &raw mut fh,
            &raw mut mount_id,
            0,
        )
    } as libc::c_int)?;
    let dir = std::fs::File::open(path.parent().unwrap_or(Path::new("/")))?;
    // SAFETY: the handle name_to_handle_at filled in, and a directory fd on its mount.
    let fd = check(unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            &raw mut fh,
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    } as libc::c_int)?;
    // SAFETY: closing the descriptor we just opened.
    unsafe { libc::close(fd) };
    Ok(())
}

fn raw_socket() -> io::Result<()> {
    // SAFETY: socket(2), and close of the fd it returned.
    let fd = check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) })?;
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
    Ok(())
}

pub fn run(action: Action) -> ExitCode {
    use libc::{O_APPEND, O_CREAT, O_EXCL, O_RDONLY, O_RDWR, O_TRUNC, O_WRONLY};
    let result = match &action {
        Action::Exec { path } => exec(path),
        Action::OpenRead { path } => open(path, O_RDONLY),
        Action::OpenWrite { path } => open(path, O_WRONLY),
        Action::OpenAppend { path } => open(path, O_WRONLY | O_APPEND),
        Action::OpenRdwr { path } => open(path, O_RDWR),
        Action::OpenTrunc { path } => open(path, O_WRONLY | O_TRUNC),
        Action::Create { path } => open(path, O_CREAT | O_WRONLY | O_EXCL),
        Action::CreateRdonly { path } => open(path, O_CREAT | O_RDONLY),
        Action::Truncate { path, len } => {
            path_call(path, |p| unsafe { libc::truncate(p, *len as libc::off_t) })
        }
        Action::Unlink { path } => path_call(path, |p| unsafe { libc::unlink(p) }),
        Action::Mkdir { path } => path_call(path, |p| unsafe { libc::mkdir(p, 0o755) }),
        Action::Rmdir { path } => path_call(path, |p| unsafe { libc::rmdir(p) }),
        Action::Mkfifo { path } => path_call(path, |p| unsafe { libc::mkfifo(p, 0o644) }),
        Action::Rename { from, to } => {
            two_path_call(from, to, |a, b| unsafe { libc::rename(a, b) })
        }
        Action::Link { from, to } => two_path_call(from, to, |a, b| unsafe { libc::link(a, b) }),
        Action::Symlink { target, linkpath } => {
            two_path_call(target, linkpath, |a, b| unsafe { libc::symlink(a, b) })
        }
        Action::Chmod { path, mode } => chmod(path, mode),
        Action::Chown { path, uid, gid } => {
            path_call(path, |p| unsafe { libc::chown(p, *uid, *gid) })
        }
        Action::ConnectTcp { addr } => connect_tcp(addr),
        Action::ConnectUdp { addr } => connect_udp(addr),
        Action::SendtoUdp { addr } => sendto(addr, libc::SOCK_DGRAM, 0),
        Action::SendtoTcpFastopen { addr } => sendto(addr, libc::SOCK_STREAM, libc::MSG_FASTOPEN),
        Action::SendtoUdpUnspec { addr } => sendto_udp_unspec(addr),
        Action::ConnectUnix { path } => connect_unix(path),
        // SAFETY: kill(2) takes no pointers.
        Action::Kill { pid, signal } => check(unsafe { libc::kill(*pid, *signal) }).map(|_| ()),
        Action::PtraceAttach { pid } => ptrace_attach(*pid),
        Action::BpfMapCreate => bpf_map_create(),
        Action::Mount { fstype, path } => mount(fstype, path),
        Action::BindMount { from, to } => bind_mount(from, to),
        Action::MoveMount { from, to } => agent_common::sys::move_mount(from, to),
        Action::PivotRoot { new_root, put_old } => agent_common::sys::pivot_root(new_root, put_old),
        Action::Chroot { path } => path_call(path, |p| unsafe { libc::chroot(p) }),
        Action::UnshareMountBind { from, to } => unshare_bind(libc::CLONE_NEWNS, from, to),
        Action::UnshareUserMountBind { from, to } => {
            unshare_bind(libc::CLONE_NEWUSER | libc::CLONE_NEWNS, from, to)
        }
        Action::Tiocsti => tiocsti(),
        Action::OpenByHandle { path } => open_by_handle(path),
        Action::RawSocket => raw_socket(),
        // SAFETY: unshare(2) of this single-threaded process; it exits right after.
        Action::UnshareUser => check(unsafe { libc::unshare(libc::CLONE_NEWUSER) }).map(|_| ()),
        Action::CloneIntoCgroup { dir } => std::fs::File::open(dir)
            .and_then(|d| agent_common::sys::clone_into_cgroup(std::os::fd::AsFd::as_fd(&d))),
        Action::FloodOpen { path, seconds } => return flood_open(path, *seconds),
        Action::DnsQuery(lookup) => return dns::run(lookup),
    };
    report(result)
}

/// Repeats open(PATH, O_RDONLY) until SECONDS have passed. Prints the attempt count when all
/// met EPERM, else says what else happened (and exits 1).
fn flood_open(path: &Path, seconds: f64) -> ExitCode {
    let c = match cstring(path) {
        Ok(c) => c,
        Err(e) => return report(Err(e)),
    };
    let end = std::time::Instant::now() + std::time::Duration::from_secs_f64(seconds);
    let (mut attempts, mut other, mut first_other) = (0u64, 0u64, None);
    while std::time::Instant::now() < end {
        attempts += 1;
        // SAFETY: a NUL-terminated path that outlives the call.
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
        let outcome = if fd >= 0 {
            // SAFETY: closing the descriptor we just opened.
            unsafe { libc::close(fd) };
            Some("OK".to_string())
        } else {
            let e = io::Error::last_os_error();
            (e.raw_os_error() != Some(libc::EPERM)).then(|| errno_name(&e))
        };
        if let Some(o) = outcome {
            other += 1;
            first_other.get_or_insert(o);
        }
    }
    match first_other {
        None => {
            println!("{attempts}");
            ExitCode::SUCCESS
        }
        Some(o) => {
            println!("{attempts} attempts, {other} did not meet EPERM (first: {o})");
            ExitCode::from(1)
        }
    }
}
