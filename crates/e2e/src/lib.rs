//! End-to-end tests of the macvtap CNI plugin and device plugin with real
//! container runtimes. Everything lives in `tests/`; this library is empty.
//!
//! - `tests/podman.rs`: podman 4.3 with its CNI backend and a `type:
//!   macvtap` network (standalone `master`, host-local IPAM).
//! - `tests/containerd.rs`: containerd 1.6 through its CRI API (our own
//!   client, `proto/cri.proto`), with the real device plugin allocating the
//!   device through the harness's kubelet stand-in (`macvtap-testkit`).
//! - `tests/multus.rs`: the seeds' NetworkAttachmentDefinition delegated
//!   the way Multus does it, with an allocated `deviceID`.
//!
//! Run as root: `cargo test -p macvtap-e2e -- --nocapture` (the `MEASURED`
//! lines are the attach times). The runtimes come from
//! `scripts/install-runtimes`, which the tests run themselves when a tool
//! is missing; they fail, never skip, when it cannot be installed. Every
//! runtime runs inside the test's own NODE namespace with its own config,
//! storage and sockets in temp dirs, and is removed again, also on failure.
