//! A gRPC server on a unix socket, running on its own thread and runtime so
//! that stopping it is like the serving process dying: the listener and
//! every open connection (streams included) go away at once.

use std::os::unix::net::UnixListener as StdUnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

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
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)
                .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        }
        let listener = StdUnixListener::bind(path)
            .unwrap_or_else(|e| panic!("cannot bind {}: {e}", path.display()));
        listener
            .set_nonblocking(true)
            .expect("set the listener non-blocking");
        let (stop, stopped) = oneshot::channel::<()>();
        let name = format!("grpc-{}", path.display());
        let thread = std::thread::Builder::new()
            .name(name)
            .spawn(move || {
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

impl Drop for ServerThread {
    fn drop(&mut self) {
        self.stop();
    }
}
