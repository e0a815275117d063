//! Mounts of a suite's own. In the VMs /tmp is an overlayfs (virtme-ng's writable layer over
//! the host's /tmp): a suite that isn't about overlayfs runs on a tmpfs of its own, so that
//! each of its tests is about one thing, and the overlayfs tests mount their own overlay.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result, bail};

/// A mount, detached when dropped, once its suite is done.
pub struct Mount(PathBuf);

impl Mount {
    /// A fresh tmpfs on `dir`.
    pub fn tmpfs(dir: &Path) -> Result<Mount> {
        mount("tmpfs", dir, "tmpfs", "mode=0755,size=256m")
    }

    /// A bpffs on `dir` that every user may write to, so only actgate refuses changes.
    pub fn bpffs(dir: &Path) -> Result<Mount> {
        mount("bpf", dir, "bpf", "mode=0777")
    }

    /// An overlayfs of `lower`, `upper` and `work` on `target`.
    pub fn overlay(lower: &Path, upper: &Path, work: &Path, target: &Path) -> Result<Mount> {
        let layers = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        mount("overlay", target, "overlay", &layers)
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Ok(c) = c_path(&self.0) {
            // SAFETY: a NUL-terminated path.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("a path with a NUL byte")
}

/// mount(2), with what failed in the error.
fn mount(source: &str, target: &Path, fstype: &str, data: &str) -> Result<Mount> {
    fs::create_dir_all(target)?;
    let (src, dst) = (c_path(source.as_ref())?, c_path(target)?);
    let (fstype_c, data_c) = (c_path(fstype.as_ref())?, c_path(data.as_ref())?);
    // SAFETY: NUL-terminated strings that outlive the call.
    let ret = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            fstype_c.as_ptr(),
            0,
            data_c.as_ptr().cast(),
        )
    };
    if ret != 0 {
        bail!(
            "mount -t {fstype} -o {data} {source} {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(Mount(target.to_path_buf()))
}
