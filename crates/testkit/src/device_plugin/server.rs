//! A gRPC server on a unix socket, running on its own thread and runtime so
//! that stopping it is like the serving process dying: the listener and
//! every open connection (streams included) go away at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::service::Routes;
use tonic::transport::Server;

#[derive(Debug)]
pub struct ServerThread {
    path: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl ServerThread {
    /// Binds `path` now (the socket file exists when this returns) and
    /// serves `routes` on it until [`ServerThread::stop`] or drop.
    pub fn start(path: &Path, routes: Routes) -> ServerThread {
        Self::start_listen_delayed(path, routes, Duration::ZERO)
    }

    /// Like [`ServerThread::start`], but `listen(2)` comes `delay` after
    /// `bind(2)`: the socket file exists and refuses connections meanwhile.
    pub fn start_listen_delayed(path: &Path, routes: Routes, delay: Duration) -> ServerThread {
        Self::try_start_listen_delayed(path, routes, delay)
            .unwrap_or_else(|e| panic!("cannot serve {}: {e}", path.display()))
    }

    /// [`ServerThread::start`] for callers that must not panic (the lab).
    pub fn try_start(path: &Path, routes: Routes) -> io::Result<ServerThread> {
        Self::try_start_listen_delayed(path, routes, Duration::ZERO)
    }

    fn try_start_listen_delayed(
        path: &Path,
        routes: Routes,
        delay: Duration,
    ) -> io::Result<ServerThread> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let fd = bind_only(path)?;
        if delay.is_zero() {
            // Right after bind, as Go's net.Listen (the kubelet's) does.
            listen(&fd)?;
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let name = format!("grpc-{}", path.display());
        let shown = path.display().to_string();
        let thread = std::thread::Builder::new().name(name).spawn(move || {
            // Failures here have no caller left to return to: they are
            // printed, and the socket then refuses connections.
            if !delay.is_zero() {
                std::thread::sleep(delay);
                if let Err(e) = listen(&fd) {
                    eprintln!("stand-in gRPC server on {shown}: listen: {e}");
                    return;
                }
            }
            let listener = StdUnixListener::from(fd);
            if let Err(e) = listener.set_nonblocking(true) {
                eprintln!("stand-in gRPC server on {shown}: {e}");
                return;
            }
            rt.block_on(async move {
                let listener = match tokio::net::UnixListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        eprintln!("stand-in gRPC server on {shown}: {e}");
                        return;
                    }
                };
                let serve = Server::builder()
                    .add_routes(routes)
                    .serve_with_incoming(UnixListenerStream::new(listener));
                tokio::select! {
                    r = serve => {
                        if let Err(e) = r {
                            eprintln!("stand-in gRPC server failed: {e}");
                        }
                    }
                    _ = stopped => {}
                }
            });
            // Dropping the runtime cancels every connection task: the
            // peers see their connections reset, as when a process dies.
            drop(rt);
        })?;
        Ok(ServerThread {
            path: path.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stops serving and closes every connection. The socket file is left
    /// where it is (a dead process does not clean up either).
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn listen(fd: &OwnedFd) -> io::Result<()> {
    // SAFETY: `fd` is a bound unix stream socket we own.
    if unsafe { libc::listen(fd.as_raw_fd(), 128) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// socket(2) + bind(2) of a unix stream socket at `path`, without listen.
fn bind_only(path: &Path) -> io::Result<OwnedFd> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all zeroes is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("socket path too long: {}", path.display()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    // SAFETY: socket(2) has no memory preconditions.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a valid sockaddr_un and `len` is within it (checked above).
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(
            e.kind(),
            format!("bind {}: {e}", path.display()),
        ));
    }
    Ok(fd)
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}
