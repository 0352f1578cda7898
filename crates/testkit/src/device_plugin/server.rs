//! A gRPC server on a unix socket, running on its own thread and runtime so
//! that stopping it is like the serving process dying: the listener and
//! every open connection (streams included) go away at once.

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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let fd = bind_only(path);
        let listen = move |fd: &OwnedFd| {
            // SAFETY: `fd` is a bound unix stream socket we own.
            let r = unsafe { libc::listen(fd.as_raw_fd(), 128) };
            assert_eq!(r, 0, "listen: {}", std::io::Error::last_os_error());
        };
        if delay.is_zero() {
            // Right after bind, as Go's net.Listen (the kubelet's) does.
            listen(&fd);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let name = format!("grpc-{}", path.display());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
                if !delay.is_zero() {
                    std::thread::sleep(delay);
                    listen(&fd);
                }
                let listener = StdUnixListener::from(fd);
                listener
                    .set_nonblocking(true)
                    .expect("set the listener non-blocking");
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("build the server runtime");
                rt.block_on(async move {
                    let listener = tokio::net::UnixListener::from_std(listener)
                        .expect("register the listener with tokio");
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
            })
            .expect("spawn the server thread");
        ServerThread {
            path: path.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
        }
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

/// socket(2) + bind(2) of a unix stream socket at `path`, without listen.
fn bind_only(path: &Path) -> OwnedFd {
    // SAFETY: plain system calls on a fresh socket; the address is built
    // within sockaddr_un's bounds (checked).
    unsafe {
        let raw = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(raw >= 0, "socket: {}", std::io::Error::last_os_error());
        let fd = OwnedFd::from_raw_fd(raw);
        let mut addr: libc::sockaddr_un = std::mem::zeroed();
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        assert!(bytes.len() < addr.sun_path.len(), "socket path too long");
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        let r = libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_un as *const libc::sockaddr,
            len as libc::socklen_t,
        );
        assert_eq!(
            r,
            0,
            "bind {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
        fd
    }
}

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}
