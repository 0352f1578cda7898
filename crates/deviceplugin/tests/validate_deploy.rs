//! `scripts/validate-deploy` can fail: broken objects of every kind it
//! checks are refused with the reason, and a good one passes. Needs
//! kubernetes-validate (the script installs it with pip when missing).

use std::path::{Path, PathBuf};
use std::process::Command;

use macvtap_testkit::TempDir;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Run the script on `files`; (success, output).
fn validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(repo().join("scripts/validate-deploy"))
        .args(files)
        .env(
            "MACVTAP_DEVICEPLUGIN_BIN",
            env!("CARGO_BIN_EXE_macvtap-deviceplugin"),
        )
        .output()
        .expect("run scripts/validate-deploy");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Our DaemonSet as the install renders it, with `edit` applied to its text.
fn daemonset_with(edit: impl Fn(&str) -> String) -> String {
    let text = std::fs::read_to_string(repo().join("deploy/base/macvtap.yaml")).expect("read");
    edit(&text)
}

const VM: &str = "
apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: vm}
spec:
  runStrategy: Always
  template:
    spec:
      domain:
        devices:
          interfaces: [{name: dataplane, binding: {name: macvtap}}]
        resources: {requests: {memory: 2Gi}}
      networks: [{name: dataplane, multus: {networkName: dataplane}}]
";

/// The VM with Fedora's containerdisk and cloud-init.
fn fedora_vm() -> String {
    format!(
        "{VM}      volumes:\n        - {{name: root, containerDisk: {{image: quay.io/containerdisks/fedora:latest}}}}\n        - {{name: ci, cloudInitNoCloud: {{userData: x}}}}\n"
    )
}

#[test]
fn broken_objects_are_refused_with_the_reason() {
    let dir = TempDir::new("validate-deploy");
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "nad-unknown-field",
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: x}\nspec: {confg: '{}'}\n".into(),
            "Additional properties are not allowed ('confg' was unexpected)",
        ),
        (
            "nad-config-not-json",
            "apiVersion: k8s.cni.cncf.io/v1\nkind: NetworkAttachmentDefinition\nmetadata: {name: x}\nspec: {config: '{not json'}\n".into(),
            "spec.config is not JSON",
        ),
        (
            "vm-misspelt",
            VM.replace("domain:", "domian:"),
            "'domian' was unexpected",
        ),
        (
            "vm-bad-memory",
            VM.replace("memory: 2Gi", "memory: 2 GiB"),
            "spec.template.spec.domain.resources.requests.memory",
        ),
        (
            "vm-no-macvtap",
            VM.replace("name: macvtap", "name: passt"),
            "no interface with the macvtap binding",
        ),
        (
            "fedora-256Mi",
            fedora_vm().replace("memory: 2Gi", "memory: 256Mi"),
            "Fedora's containerdisk needs 2Gi of memory, requests 256Mi",
        ),
        (
            "fedora-no-cloud-init",
            fedora_vm().replace("        - {name: ci, cloudInitNoCloud: {userData: x}}\n", ""),
            "no cloud-init: nobody can log in",
        ),
        (
            "kubevirt-bad-binding",
            "apiVersion: kubevirt.io/v1\nkind: KubeVirt\nmetadata: {name: kubevirt}\nspec:\n  configuration:\n    network:\n      binding:\n        macvtap: {domainAttachmentType: tapp}\n".into(),
            "'tapp' is not one of",
        ),
        (
            "unknown-kind",
            "apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: x}\n".into(),
            "no schema for kind Gadget",
        ),
        (
            "pod-unknown-field",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: x}\nspec:\n  containers: [{name: c, image: i, imagee: j}]\n".into(),
            "kubernetes-validate exited",
        ),
        (
            "upstream-image",
            daemonset_with(|t| t.replace("localhost/macvtap-cni:dev", "quay.io/kubevirt/macvtap-cni:latest")),
            "upstream's image quay.io/kubevirt/macvtap-cni:latest",
        ),
        (
            "init-without-requests",
            daemonset_with(|t| {
                t.replacen(
                    "          resources:\n            requests:\n              cpu: 10m\n              memory: 16Mi\n          securityContext:",
                    "          securityContext:",
                    1,
                )
            }),
            "install-cni: no cpu and memory requests",
        ),
        (
            "metrics-everywhere",
            daemonset_with(|t| t.replace("--metrics-address=$(HOST_IP):9465", "--metrics-address=0.0.0.0:9465")),
            "metrics on every address of the node",
        ),
        (
            "bad-dp-conf",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: macvtap-deviceplugin-config}\ndata: {DP_MACVTAP_CONF: '[{\"name\": \"x\"}]'}\n".into(),
            "DP_MACVTAP_CONF refused",
        ),
    ];
    let mut wrong = Vec::new();
    for (name, text, reason) in &cases {
        let path = dir.path().join(format!("{name}.yaml"));
        std::fs::write(&path, text).expect("write a case");
        let (ok, out) = validate(&[path]);
        if ok || !out.contains(reason) {
            wrong.push(format!("{name}: passed={ok}, want {reason:?} in:\n{out}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n---\n"));
}

#[test]
fn the_shipped_objects_pass() {
    let files: Vec<PathBuf> = [
        "deploy/examples/nad-dataplane.yaml",
        "deploy/examples/vm.yaml",
        "deploy/base/macvtap.yaml",
    ]
    .iter()
    .map(|f| repo().join(f))
    .collect();
    let fedora = TempDir::new("validate-deploy-ok");
    let mut files = files;
    files.push(fedora.path().join("fedora.yaml"));
    std::fs::write(&files[files.len() - 1], fedora_vm()).expect("write");
    let (ok, out) = validate(&files);
    assert!(ok, "{out}");
    assert!(
        out.contains("ok   vm.yaml: VirtualMachine/vm-macvtap: schema"),
        "{out}"
    );
}
