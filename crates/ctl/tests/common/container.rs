//! testkit's container world for `macvtapctl handover`, with a stand-in
//! QEMU and the supervisor's output files in its temporary directory.

#![allow(clippy::unwrap_used)] // test helpers: a failed step is a failed test

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use macvtap_testkit::{ChildGuard, ContainerNet, Run};

/// The container world with a stand-in QEMU and the supervisor's files.
pub struct Container(ContainerNet);

impl std::ops::Deref for Container {
    type Target = ContainerNet;

    fn deref(&self) -> &ContainerNet {
        &self.0
    }
}

impl Container {
    pub fn new(tag: &str, net: u8) -> Container {
        Container(ContainerNet::new(tag, net))
    }

    /// Records and supervisor files left in the state dir.
    pub fn state_files(&self) -> Vec<String> {
        match fs::read_dir(self.tmp.path().join("state/handover")) {
            Ok(d) => d
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// A stand-in QEMU (bash: dash cannot close an fd above 9): writes its argv to `args`, `fd major:minor type`
    /// per open fd to `fds`, its pid to `pid`; closes the tap fd if the
    /// file `close-tap` exists (so the test can be the guest on the tap);
    /// then runs until the file `stop` appears, its parent dies, a signal
    /// kills it, or 60 s pass; exits with the number in `exit` (default 0).
    pub fn fake_qemu(&self) -> PathBuf {
        let dir = self.tmp.path();
        let script = dir.join("fake-qemu");
        fs::write(
            &script,
            format!(
                "#!/bin/bash\n\
                 d={dir}\n\
                 printf '%s\\n' \"$@\" > $d/args.tmp && mv $d/args.tmp $d/args\n\
                 for fd in /proc/$$/fd/*; do\n\
                   echo \"${{fd##*/}} $(stat -L -c '%t:%T %F' \"$fd\")\"\n\
                 done > $d/fds\n\
                 if [ -e $d/close-tap ]; then\n\
                   n=$(grep -o 'fd=[0-9]*' $d/args | head -1 | cut -d= -f2)\n\
                   eval \"exec $n>&-\"\n\
                 fi\n\
                 echo $$ > $d/pid.tmp && mv $d/pid.tmp $d/pid\n\
                 i=0\n\
                 while [ ! -e $d/stop ] && kill -0 $PPID 2>/dev/null && [ $i -lt 1200 ]; do\n\
                   sleep 0.05; i=$((i+1))\n\
                 done\n\
                 exit $(cat $d/exit 2>/dev/null || echo 0)\n",
                dir = dir.display()
            ),
        )
        .unwrap();
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
        script
    }

    /// The fake QEMU's argv, once it has started.
    pub fn qemu_args(&self) -> Vec<String> {
        fs::read_to_string(self.tmp.path().join("args"))
            .expect("the fake QEMU ran")
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// fd -> "major:minor type" (decimal) of the fake QEMU.
    pub fn qemu_fds(&self) -> Vec<(String, String)> {
        fs::read_to_string(self.tmp.path().join("fds"))
            .expect("the fake QEMU ran")
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(fd, what)| {
                let (dev, kind) = what.split_once(' ').unwrap_or((what, ""));
                let (ma, mi) = dev.split_once(':').unwrap_or(("0", "0"));
                (
                    fd.to_string(),
                    format!(
                        "{}:{} {kind}",
                        u32::from_str_radix(ma, 16).unwrap_or(0),
                        u32::from_str_radix(mi, 16).unwrap_or(0)
                    ),
                )
            })
            .collect()
    }

    pub fn qemu_pid(&self) -> Option<u32> {
        fs::read_to_string(self.tmp.path().join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    pub fn stop_qemu(&self) {
        fs::write(self.tmp.path().join("stop"), "").unwrap();
    }

    /// `macvtapctl --netns ctr handover --state-dir S --qemu FAKE <extra> -- <qemu>`
    /// started in the background with stdout/stderr to files.
    pub fn supervise(&self, extra: &[&str], qemu: &[&str]) -> ChildGuard {
        let fake = self.fake_qemu();
        let mut args: Vec<String> = vec![
            "--netns".into(),
            self.ctr.name().into(),
            "handover".into(),
            "--state-dir".into(),
            self.state_dir(),
            "--qemu".into(),
            fake.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push("--".into());
        args.extend(qemu.iter().map(|s| s.to_string()));
        let out = fs::File::create(self.path("supervisor.out")).unwrap();
        let err = fs::File::create(self.path("supervisor.err")).unwrap();
        let child = Command::new(super::ctl_path())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("start macvtapctl handover");
        ChildGuard(child)
    }

    pub fn supervisor_output(&self) -> (String, String) {
        (
            fs::read_to_string(self.path("supervisor.out")).unwrap_or_default(),
            fs::read_to_string(self.path("supervisor.err")).unwrap_or_default(),
        )
    }

    /// Wait until the fake QEMU runs (it wrote its pid).
    pub fn wait_for_qemu(&self, guard: &mut ChildGuard) {
        let ok = super::eventually(Duration::from_secs(20), || {
            self.qemu_pid().is_some() || matches!(guard.0.try_wait(), Ok(Some(_)))
        });
        assert!(
            ok && self.qemu_pid().is_some(),
            "QEMU never started: {:?}",
            self.supervisor_output()
        );
    }

    /// `macvtapctl --netns ctr handover --state-dir S args...`, run to the end.
    pub fn handover(&self, args: &[&str]) -> Run {
        let state = self.state_dir();
        let mut all = vec![
            "--netns",
            self.ctr.name(),
            "handover",
            "--state-dir",
            &state,
        ];
        all.extend_from_slice(args);
        super::run(&all)
    }
}

/// Wait for a child to exit within `timeout`; its exit code.
pub fn wait_exit(guard: &mut ChildGuard, timeout: Duration) -> Option<i32> {
    let end = std::time::Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = guard.0.try_wait() {
            return status.code();
        }
        assert!(
            std::time::Instant::now() < end,
            "the supervisor did not exit"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}
