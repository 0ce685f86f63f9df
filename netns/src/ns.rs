//! Network namespaces: naming ([`NsRef`]), creating and deleting them as `ip netns`
//! does, and running code or processes inside them ([`NetNs`]).

use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

use crate::error::{Error, Result};
use crate::name::validate_ns_name;
use crate::sys;

/// Where named namespaces are bind-mounted, as iproute2 does.
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// How a caller names a network namespace.
///
/// Parsed from a string by [`FromStr`]: `pid:123` or all digits is a process,
/// anything containing `/` is a path (e.g. `/proc/123/ns/net` or a CNI netns path),
/// anything else a name under `/run/netns` as `ip netns` uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NsRef {
    /// A namespace bind-mounted at `/run/netns/NAME`.
    Name(String),
    /// A namespace file anywhere, e.g. `/proc/PID/ns/net` or `/var/run/netns/x`.
    Path(PathBuf),
    /// The network namespace of a process.
    Pid(u32),
}

impl NsRef {
    /// The file that holds this namespace.
    pub fn path(&self) -> PathBuf {
        match self {
            NsRef::Name(name) => Path::new(NETNS_RUN_DIR).join(name),
            NsRef::Path(path) => path.clone(),
            NsRef::Pid(pid) => PathBuf::from(format!("/proc/{pid}/ns/net")),
        }
    }
}

impl fmt::Display for NsRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NsRef::Name(name) => f.write_str(name),
            NsRef::Path(path) => write!(f, "{}", path.display()),
            NsRef::Pid(pid) => write!(f, "pid:{pid}"),
        }
    }
}

impl FromStr for NsRef {
    type Err = Error;

    fn from_str(s: &str) -> Result<NsRef> {
        let pid = |digits: &str| {
            digits
                .parse::<u32>()
                .ok()
                .filter(|&p| p > 0)
                .map(NsRef::Pid)
                .ok_or_else(|| Error::InvalidName {
                    name: s.to_owned(),
                    reason: "not a process id",
                })
        };
        if let Some(digits) = s.strip_prefix("pid:") {
            pid(digits)
        } else if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
            pid(s)
        } else if s.contains('/') {
            if s.contains('\0') {
                return Err(Error::InvalidName {
                    name: s.to_owned(),
                    reason: "namespace path contains NUL",
                });
            }
            Ok(NsRef::Path(PathBuf::from(s)))
        } else {
            validate_ns_name(s)?;
            Ok(NsRef::Name(s.to_owned()))
        }
    }
}

/// Identity of a namespace: the device and inode of its nsfs file. Two handles
/// refer to the same namespace exactly when their ids are equal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NsId {
    /// `st_dev` of the namespace file.
    pub dev: u64,
    /// `st_ino` of the namespace file.
    pub ino: u64,
}

impl fmt::Display for NsId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "net:[{}]", self.ino)
    }
}

/// An open network namespace.
///
/// Holds a descriptor on the namespace, so the namespace lives at least as long as
/// this handle (and its clones) even if its name is deleted meanwhile.
#[derive(Debug, Clone)]
pub struct NetNs {
    fd: Arc<OwnedFd>,
    id: NsId,
    label: String,
}

/// Serialises the one-time setup of `/run/netns` between threads of this process.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

impl NetNs {
    /// Creates a new, empty network namespace bind-mounted at `/run/netns/NAME`,
    /// like `ip netns add NAME`. Fails with `EEXIST` if the name is taken.
    ///
    /// `/run/netns` is created and made a shared mount point first, as iproute2 does,
    /// so the namespace is visible to `ip netns` and to other mount namespaces.
    pub fn create(name: &str) -> Result<NetNs> {
        const OP: &str = "creating namespace";
        validate_ns_name(name)?;
        prepare_run_dir().map_err(|e| Error::os(OP, name, e))?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| Error::os(OP, name, e))?;
        let mounted = std::thread::Builder::new()
            .name("netns-create".into())
            .spawn({
                let path = path.clone();
                move || -> nix::Result<()> {
                    nix::sched::unshare(CloneFlags::CLONE_NEWNET)?;
                    nix::mount::mount(
                        Some("/proc/thread-self/ns/net"),
                        &path,
                        Some("none"),
                        MsFlags::MS_BIND,
                        None::<&str>,
                    )
                }
            })
            .map_err(|e| Error::os(OP, name, e))
            .and_then(|handle| {
                handle
                    .join()
                    .map_err(|_| Error::invalid(OP, name, "namespace thread panicked"))?
                    .map_err(|e| Error::from_errno(OP, name, e))
            });
        if let Err(e) = mounted {
            let _ = fs::remove_file(&path);
            return Err(e);
        }
        Self::open(&NsRef::Name(name.to_owned()))
    }

    /// Opens an existing namespace.
    ///
    /// The path is opened without following a final symbolic link (except procfs's own
    /// `/proc/PID/ns/net` links), and only a regular file is opened for reading, with
    /// `O_NONBLOCK | O_NOCTTY`: a FIFO, a device or a directory put where a namespace was
    /// expected is refused at once (`not a namespace file`), never opened, so it can neither
    /// block the caller nor act on a device.
    pub fn open(r: &NsRef) -> Result<NetNs> {
        const OP: &str = "opening namespace";
        if let NsRef::Name(name) = r {
            validate_ns_name(name)?;
        }
        let fd = open_ns_file(&r.path()).map_err(|e| match e {
            OpenError::Os(e) => Error::os(OP, r.to_string(), e),
            OpenError::Refused(reason) => Error::invalid(OP, r.to_string(), reason),
        })?;
        Self::from_fd(fd, r.to_string())
    }

    /// Opens the namespace of the calling thread.
    pub fn current() -> Result<NetNs> {
        let file = File::open("/proc/thread-self/ns/net")
            .map_err(|e| Error::os("opening namespace", "of this thread", e))?;
        Self::from_fd(file.into(), "current".to_owned())
    }

    /// Wraps a descriptor on a namespace (e.g. received from another process),
    /// checking that it is a network namespace. `label` names it in errors.
    pub fn from_fd(fd: OwnedFd, label: String) -> Result<NetNs> {
        const OP: &str = "opening namespace";
        match sys::ns_get_type(fd.as_fd()) {
            Ok(libc::CLONE_NEWNET) => {}
            Ok(_) => return Err(Error::invalid(OP, label, "not a network namespace")),
            Err(e) if e.raw_os_error() == Some(libc::ENOTTY) => {
                return Err(Error::invalid(OP, label, "not a namespace file"));
            }
            Err(e) => return Err(Error::os(OP, label, e)),
        }
        let stat =
            nix::sys::stat::fstat(&fd).map_err(|e| Error::from_errno(OP, label.clone(), e))?;
        let id = NsId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        };
        Ok(NetNs {
            fd: Arc::new(fd),
            id,
            label,
        })
    }

    /// Removes the name `/run/netns/NAME` (unmount and unlink), like
    /// `ip netns delete`. Succeeds if there is no such name. The namespace itself
    /// disappears once no process, descriptor or mount refers to it any more.
    pub fn delete(name: &str) -> Result<()> {
        const OP: &str = "deleting namespace";
        validate_ns_name(name)?;
        let path = Path::new(NETNS_RUN_DIR).join(name);
        match nix::mount::umount2(&path, MntFlags::MNT_DETACH) {
            Ok(()) | Err(nix::Error::EINVAL | nix::Error::ENOENT) => {}
            Err(e) => return Err(Error::from_errno(OP, name, e)),
        }
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::os(OP, name, e)),
        }
    }

    /// The identity of this namespace.
    pub fn id(&self) -> NsId {
        self.id
    }

    /// How this namespace was named when opened (name, path, `pid:N` or `current`).
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Runs `f` on a new thread that has entered this namespace, and returns its
    /// result. The caller's thread never changes namespace. Sockets created and
    /// netlink connections opened inside `f` belong to this namespace.
    ///
    /// If `f` panics, the panic is resumed on the calling thread.
    pub fn run<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        const OP: &str = "entering namespace";
        let fd = self.fd.as_fd();
        std::thread::scope(|s| {
            let handle = std::thread::Builder::new()
                .name("netns-run".into())
                .spawn_scoped(s, move || {
                    nix::sched::setns(fd, CloneFlags::CLONE_NEWNET)?;
                    Ok(f())
                })
                .map_err(|e| Error::os(OP, self.label.clone(), e))?;
            match handle.join() {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(errno)) => Err(Error::from_errno(OP, self.label.clone(), errno)),
                Err(payload) => std::panic::resume_unwind(payload),
            }
        })
    }

    /// A [`Command`] whose child process enters this namespace before `exec`.
    ///
    /// Only the network namespace changes: the child keeps the caller's mount
    /// namespace, so `/sys/class/net` still shows the caller's interfaces.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd = Arc::clone(&self.fd);
        let hook = move || -> io::Result<()> {
            // setns(2) is async-signal-safe and `fd` stays open until after exec:
            // the closure owns a reference to it.
            nix::sched::setns(fd.as_fd(), CloneFlags::CLONE_NEWNET)
                .map_err(|e| io::Error::from_raw_os_error(e as i32))
        };
        // SAFETY: the hook runs in the forked child before exec; it only calls
        // setns(2) on a descriptor that is open in the child and allocates nothing.
        unsafe {
            cmd.pre_exec(hook);
        }
        cmd
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.fd.as_raw_fd()
    }
}

impl PartialEq for NetNs {
    fn eq(&self, other: &NetNs) -> bool {
        self.id == other.id
    }
}

impl Eq for NetNs {}

/// Why a namespace file was not opened.
enum OpenError {
    Os(io::Error),
    Refused(&'static str),
}

impl From<nix::Error> for OpenError {
    fn from(e: nix::Error) -> Self {
        OpenError::Os(io::Error::from_raw_os_error(e as i32))
    }
}

/// Opens a namespace file for reading without ever opening anything else: first an `O_PATH`
/// handle (which opens nothing: no FIFO wait, no device driver) without following a final
/// symlink, unless the symlink is one of procfs's namespace links; then, once that handle is
/// known to be a regular file (nsfs files are), the file itself through `/proc/self/fd`, with
/// `O_NONBLOCK | O_NOCTTY | O_CLOEXEC`.
fn open_ns_file(path: &Path) -> std::result::Result<OwnedFd, OpenError> {
    use nix::fcntl::{OFlag, open};
    use nix::sys::stat::{Mode, SFlag, fstat};

    let handle = |flags: OFlag| {
        open(
            path,
            OFlag::O_PATH | OFlag::O_CLOEXEC | flags,
            Mode::empty(),
        )
    };
    let mut fd = handle(OFlag::O_NOFOLLOW)?;
    let mut kind = SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT;
    if kind == SFlag::S_IFLNK {
        // `/proc/PID/ns/net` and its like are symlinks that only procfs resolves.
        let on_procfs =
            nix::sys::statfs::fstatfs(&fd)?.filesystem_type() == nix::sys::statfs::PROC_SUPER_MAGIC;
        if !on_procfs {
            return Err(OpenError::Refused(
                "is a symbolic link, not a namespace file",
            ));
        }
        fd = handle(OFlag::empty())?;
        kind = SFlag::from_bits_truncate(fstat(&fd)?.st_mode) & SFlag::S_IFMT;
    }
    if kind != SFlag::S_IFREG {
        return Err(OpenError::Refused(match kind {
            SFlag::S_IFIFO => "is a FIFO, not a namespace file",
            SFlag::S_IFCHR | SFlag::S_IFBLK => "is a device, not a namespace file",
            SFlag::S_IFDIR => "is a directory, not a namespace file",
            SFlag::S_IFSOCK => "is a socket, not a namespace file",
            _ => "is not a namespace file",
        }));
    }
    let reopen = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(open(
        reopen.as_str(),
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Creates `/run/netns` and makes it a shared mount point, bind-mounting it onto
/// itself first if it is not a mount point yet (what `ip netns add` does).
fn prepare_run_dir() -> io::Result<()> {
    let _guard = RUN_DIR_SETUP
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    fs::create_dir_all(NETNS_RUN_DIR)?;
    let shared = || {
        nix::mount::mount(
            Some("none"),
            NETNS_RUN_DIR,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            nix::mount::mount(
                Some(NETNS_RUN_DIR),
                NETNS_RUN_DIR,
                Some("none"),
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(io::Error::from)?;
            shared().map_err(io::Error::from)
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refs() {
        assert_eq!("pid:42".parse::<NsRef>().unwrap(), NsRef::Pid(42));
        assert_eq!("42".parse::<NsRef>().unwrap(), NsRef::Pid(42));
        assert_eq!(
            "/proc/1/ns/net".parse::<NsRef>().unwrap(),
            NsRef::Path("/proc/1/ns/net".into())
        );
        assert_eq!("./ns".parse::<NsRef>().unwrap(), NsRef::Path("./ns".into()));
        assert_eq!(
            "ctr-1".parse::<NsRef>().unwrap(),
            NsRef::Name("ctr-1".into())
        );
        assert!("".parse::<NsRef>().is_err());
        assert!("pid:".parse::<NsRef>().is_err());
        assert!("pid:0".parse::<NsRef>().is_err());
        assert!("pid:x".parse::<NsRef>().is_err());
        assert!("99999999999".parse::<NsRef>().is_err());
        assert!("..".parse::<NsRef>().is_err());
    }

    fn scratch(name: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("netns-test-{}-{name}", std::process::id()));
        let _ = fs::remove_file(&path);
        path
    }

    fn refused(path: &Path) -> String {
        let started = std::time::Instant::now();
        let e = NetNs::open(&NsRef::Path(path.to_owned())).unwrap_err();
        assert!(
            started.elapsed() < std::time::Duration::from_secs(1),
            "took {:?}",
            started.elapsed()
        );
        e.to_string()
    }

    #[test]
    fn fifos_devices_and_symlinks_are_refused_at_once() {
        let fifo = scratch("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let e = refused(&fifo);
        assert!(e.contains("is a FIFO"), "{e}");
        let _ = fs::remove_file(&fifo);

        let e = refused(Path::new("/dev/null"));
        assert!(e.contains("is a device"), "{e}");

        let link = scratch("link");
        std::os::unix::fs::symlink("/proc/self/ns/net", &link).unwrap();
        let e = refused(&link);
        assert!(e.contains("symbolic link"), "{e}");
        let _ = fs::remove_file(&link);

        let e = refused(Path::new("/proc"));
        assert!(e.contains("directory"), "{e}");
    }

    #[test]
    fn procfs_namespace_links_are_followed() {
        let ns = NetNs::open(&NsRef::Path("/proc/self/ns/net".into())).unwrap();
        assert_eq!(ns.id(), NetNs::current().unwrap().id());
        let ns = NetNs::open(&NsRef::Pid(std::process::id())).unwrap();
        assert_eq!(ns.id(), NetNs::current().unwrap().id());
    }

    #[test]
    fn ref_paths_and_display() {
        assert_eq!(
            NsRef::Name("a".into()).path(),
            PathBuf::from("/run/netns/a")
        );
        assert_eq!(NsRef::Pid(7).path(), PathBuf::from("/proc/7/ns/net"));
        assert_eq!(NsRef::Pid(7).to_string(), "pid:7");
        for s in ["pid:7", "/x/y", "name"] {
            let r: NsRef = s.parse().unwrap();
            assert_eq!(r.to_string().parse::<NsRef>().unwrap(), r);
        }
    }
}
