//! containerd 1.6 with its CRI plugin, private to one test: its own config,
//! root, state, runc root, sockets, CNI bin and conf dirs in a temp dir;
//! started inside the lab's NODE namespace with `nsenter --net` (runc needs
//! the host's /sys, which `ip netns exec` would replace). Drop removes what
//! the test left through CRI (StopPodSandbox, RemovePodSandbox: the CNI
//! DEL), then kills containerd by PID, its runc containers and shims (by
//! PID, found by this instance's unique paths), unmounts whatever is still
//! mounted below the temp dir and removes it.

use std::fs;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::cri::{self, v1, Cri};
use super::procs::{kill_mentioning, remove_cgroup, unmount_under};
use super::{run, run_ok, TempDir};

/// The CRI namespace of containerd (what `ctr -n` must use).
pub const K8S_NS: &str = "k8s.io";

#[derive(Debug)]
pub struct Containerd {
    child: Option<Child>,
    pub socket: PathBuf,
    pub log: PathBuf,
    runc_root: PathBuf,
    // Last: removed after everything inside is unmounted.
    dir: TempDir,
}

impl Containerd {
    /// Starts containerd in `node_netns` with CNI `bin_dir` and `conf_dir`,
    /// `sandbox_image` as the pause image; returns when its CRI socket
    /// answers `Version`.
    pub async fn start(
        tag: &str,
        node_netns: &Path,
        bin_dir: &Path,
        conf_dir: &Path,
        sandbox_image: &str,
    ) -> Containerd {
        let dir = TempDir::new(tag);
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let runc_root = d.join("runc");
        let log = d.join("containerd.log");
        let config = d.join("config.toml");
        fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
[plugins."io.containerd.grpc.v1.cri"]
  restrict_oom_score_adj = true
  sandbox_image = "{pause}"
  netns_mounts_under_state_dir = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "overlayfs"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        BinaryName = "runc"
        Root = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{bin}"
    conf_dir = "{conf}"
    max_conf_num = 1
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                sock = socket.display(),
                opt = d.join("opt").display(),
                pause = sandbox_image,
                runc = runc_root.display(),
                bin = bin_dir.display(),
                conf = conf_dir.display(),
            ),
        )
        .expect("write containerd's config");
        let out = File::create(&log).expect("create containerd's log");
        let err = out.try_clone().expect("dup the log fd");
        // nsenter execs containerd (no --fork), so the child's PID is
        // containerd's own.
        let child = Command::new("nsenter")
            .arg(format!("--net={}", node_netns.display()))
            .args(["--", "containerd", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start containerd: {e}"));
        let mut c = Containerd {
            child: Some(child),
            socket,
            log,
            runc_root,
            dir,
        };
        let started = Instant::now();
        loop {
            if let Some(status) = c.child.as_mut().and_then(|ch| ch.try_wait().ok().flatten()) {
                panic!("containerd exited at start ({status})\n{}", c.logs());
            }
            if c.socket.exists() {
                if let Ok(mut cli) = cri::connect(&c.socket).await {
                    if cli.version(v1::VersionRequest::default()).await.is_ok() {
                        break;
                    }
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "containerd's CRI did not answer within 20 s\n{}",
                c.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        c
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A cgroup parent unique to this instance, for the pods' sandbox
    /// configs (as the kubelet sets `/kubepods/...`): every pod and
    /// container cgroup goes below it, and drop removes it.
    pub fn cgroup_parent(&self) -> String {
        let name = self
            .dir
            .path()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "macvtap-e2e".into());
        format!("/{name}")
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// containerd's log (its last 60 lines), for failure messages.
    pub fn logs(&self) -> String {
        let text = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(60)..].join("\n");
        format!("--- containerd log {} ---\n{tail}", self.log.display())
    }

    pub async fn client(&self) -> Cri {
        cri::connect(&self.socket)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.socket.display()))
    }

    /// `ctr --address SOCKET -n k8s.io ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("ctr")
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", K8S_NS])
            .args(args))
    }

    /// Imports an image archive into the CRI's namespace.
    pub fn import(&self, archive: &Path) {
        run_ok(
            Command::new("ctr")
                .arg("--address")
                .arg(&self.socket)
                .args(["-n", K8S_NS, "images", "import"])
                .arg(archive),
        );
    }

    /// Removes every pod sandbox through CRI (their containers go with
    /// them), bounded in time; what failed is returned.
    fn cri_cleanup(socket: PathBuf) -> Result<usize, String> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        rt.block_on(async move {
            let go = async {
                let mut c = cri::connect(&socket).await.map_err(|e| e.to_string())?;
                let pods = c
                    .list_pod_sandbox(v1::ListPodSandboxRequest {})
                    .await
                    .map_err(|e| e.to_string())?
                    .into_inner()
                    .items;
                for p in &pods {
                    let id = p.id.clone();
                    c.stop_pod_sandbox(v1::StopPodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .map_err(|e| format!("StopPodSandbox {id}: {e}"))?;
                    c.remove_pod_sandbox(v1::RemovePodSandboxRequest {
                        pod_sandbox_id: id.clone(),
                    })
                    .await
                    .map_err(|e| format!("RemovePodSandbox {id}: {e}"))?;
                }
                Ok(pods.len())
            };
            tokio::time::timeout(Duration::from_secs(30), go)
                .await
                .map_err(|_| "CRI clean-up timed out".to_string())?
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.logs());
        }
        // CRI first, on a thread of its own (drop may run inside a runtime).
        let socket = self.socket.clone();
        let cleaned = std::thread::spawn(move || Containerd::cri_cleanup(socket))
            .join()
            .unwrap_or_else(|_| Err("the clean-up thread panicked".into()));
        match cleaned {
            Ok(0) => {}
            Ok(n) => eprintln!("containerd guard: removed {n} pod sandbox(es) the test left"),
            Err(e) => eprintln!("containerd guard: CRI clean-up failed: {e}"),
        }
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // Containers runc still knows in our private runc root.
        if let Ok(out) = Command::new("runc")
            .arg("--root")
            .arg(&self.runc_root)
            .args(["list", "-q"])
            .output()
        {
            for id in String::from_utf8_lossy(&out.stdout).lines() {
                let _ = Command::new("runc")
                    .arg("--root")
                    .arg(&self.runc_root)
                    .args(["delete", "--force", id.trim()])
                    .output();
                eprintln!("containerd guard: deleted runc container {id}");
            }
        }
        // Shims of this instance (their command line names our socket).
        let shims = kill_mentioning(&self.dir.path().display().to_string());
        if !shims.is_empty() {
            eprintln!("containerd guard: killed leftover processes {shims:?}");
        }
        let left = unmount_under(self.dir.path());
        if !left.is_empty() {
            eprintln!("containerd guard: unmounted {left:?}");
        }
        remove_cgroup(&self.cgroup_parent());
    }
}
