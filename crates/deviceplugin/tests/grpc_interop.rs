//! Clients other than our own: the official gRPC C-core client (Python
//! `grpcio`, default options, which sends the socket path percent-encoded
//! as `:authority`) and a raw HTTP/2 client that sends whatever
//! `:authority` a kubelet before 1.26 or another client might (the plain
//! socket path, empty, `localhost`). Each makes the kubelet's calls to a
//! running daemon's socket and gets the same answers our own client gets.
//!
//! grpcio comes from PyPI into the virtualenv `scripts/install-deps`
//! creates (`/opt/macvtap-test-venv`, or `MACVTAP_TEST_PYTHON`).

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use common::*;
use macvtap_deviceplugin::proto::deviceplugin::{DevicePluginOptions, ListAndWatchResponse};
use prost::Message;
use serde_json::{json, Value};

const CAPACITY: u64 = 4;

fn conf() -> String {
    json!([{"name": "dataplane", "lowerDevice": LOWER, "capacity": CAPACITY}]).to_string()
}

/// What the kubelet expects from Allocate of these devices.
fn expected_specs(world: &World, ids: &[u64]) -> Vec<(String, String)> {
    let base = world.ifindex_base("dataplane");
    ids.iter()
        .map(|i| {
            (
                format!("/dev/tap{}", base + i),
                world
                    .dev_node(&format!("dataplane-{i}"))
                    .display()
                    .to_string(),
            )
        })
        .collect()
}

fn specs(resp: &AllocateResponse) -> Vec<(String, String)> {
    resp.container_responses
        .iter()
        .flat_map(|c| c.devices.iter())
        .map(|d| (d.container_path.clone(), d.host_path.clone()))
        .collect()
}

/// The daemon, registered, and the options our own client gets from it.
async fn started(world: &World) -> (Daemon, DevicePluginOptions) {
    let dp = world.start(&conf(), 1).await;
    let ours = world
        .client("dataplane")
        .await
        .get_device_plugin_options(Empty {})
        .await
        .expect("our own client")
        .into_inner();
    (dp, ours)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcio_with_default_options_makes_the_kubelets_calls() {
    let python = python();
    let world = World::new("dp-grpcio");
    let (mut dp, ours) = started(&world).await;
    let socket = world.socket("dataplane");
    // Both spellings grpcio accepts for a unix socket.
    for (n, target) in [
        format!("unix:{}", socket.display()),
        format!("unix://{}", socket.display()),
    ]
    .into_iter()
    .enumerate()
    {
        let id = n as u64;
        let request = allocate_request(&[&[&format!("dataplane-{id}")]]).encode_to_vec();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/grpcio_client.py");
        // grpcio's own per-call timeouts (5 s) bound the run.
        let (py, tgt, req) = (python.clone(), target.clone(), hex(&request));
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(py)
                .arg(script)
                .arg(tgt)
                .arg(req)
                .output()
        })
        .await
        .expect("client thread")
        .expect("run the grpcio client");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<Value> = stdout
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert!(
            out.status.success(),
            "grpcio on {target}: {}\n{stdout}\n{stderr}\n{}",
            out.status,
            dp.logs()
        );
        let answer = |call: &str| -> Vec<u8> {
            let line = lines
                .iter()
                .find(|l| l["call"] == call)
                .unwrap_or_else(|| panic!("no {call} in {stdout}"));
            unhex(line["response"].as_str().expect("response"))
        };
        let options = DevicePluginOptions::decode(&answer("GetDevicePluginOptions")[..])
            .expect("DevicePluginOptions");
        assert_eq!(options, ours, "grpcio and our client get the same options");
        let list = ListAndWatchResponse::decode(&answer("ListAndWatch")[..])
            .expect("ListAndWatchResponse");
        assert_eq!(
            list.devices.len() as u64,
            CAPACITY,
            "{}",
            describe(&list.devices)
        );
        assert!(all(&list.devices, HEALTHY), "{}", describe(&list.devices));
        let alloc = AllocateResponse::decode(&answer("Allocate")[..]).expect("AllocateResponse");
        assert_eq!(specs(&alloc), expected_specs(&world, &[id]), "{alloc:?}");
        eprintln!("{target}: {}", lines.last().expect("version line"));
    }
    dp.assert_running("after the grpcio calls");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

/// A minimal HTTP/2 client over a unix socket, written from RFC 9113 and
/// RFC 7541 (HPACK with the dynamic table, as real clients use it).
struct RawH2 {
    sock: UnixStream,
    encoder: loona_hpack::Encoder<'static>,
    decoder: loona_hpack::Decoder<'static>,
    next_stream: u32,
}

/// One call's outcome.
#[derive(Debug)]
struct RawCall {
    headers: Vec<(String, String)>,
    data: Vec<u8>,
    reset: Option<u32>,
}

impl RawCall {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The gRPC message in the DATA frames (5-byte prefix, uncompressed).
    fn message(&self) -> &[u8] {
        assert!(self.data.len() >= 5 && self.data[0] == 0, "{self:?}");
        &self.data[5..]
    }
}

impl RawH2 {
    fn connect(path: &Path) -> RawH2 {
        let mut sock = UnixStream::connect(path).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        sock.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .expect("preface");
        let mut h2 = RawH2 {
            sock,
            encoder: loona_hpack::Encoder::new(),
            decoder: loona_hpack::Decoder::new(),
            next_stream: 1,
        };
        h2.frame(0x4, 0, 0, &[]); // SETTINGS, all defaults
        h2
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        self.sock.write_all(&f).expect("write a frame");
    }

    fn read_frame(&mut self) -> (u8, u8, u32, Vec<u8>) {
        let mut head = [0u8; 9];
        self.sock
            .read_exact(&mut head)
            .expect("read a frame header");
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        self.sock
            .read_exact(&mut payload)
            .expect("read a frame payload");
        (head[3], head[4], stream, payload)
    }

    /// A unary call with this `:authority`.
    fn call(&mut self, authority: &[u8], method: &str, request: &[u8]) -> RawCall {
        let stream = self.next_stream;
        self.next_stream += 2;
        let path = format!("/v1beta1.DevicePlugin/{method}");
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
        ];
        let block = self.encoder.encode(headers);
        self.frame(0x1, 0x4, stream, &block); // HEADERS, END_HEADERS
        let mut body = vec![0u8];
        body.extend_from_slice(&(request.len() as u32).to_be_bytes());
        body.extend_from_slice(request);
        self.frame(0x0, 0x1, stream, &body); // DATA, END_STREAM
        let mut call = RawCall {
            headers: Vec::new(),
            data: Vec::new(),
            reset: None,
        };
        loop {
            let (kind, flags, id, payload) = self.read_frame();
            match kind {
                0x4 if flags & 0x1 == 0 => self.frame(0x4, 0x1, 0, &[]), // ACK settings
                0x6 if flags & 0x1 == 0 => self.frame(0x6, 0x1, 0, &payload), // PING
                0x1 if id == stream => {
                    assert_eq!(flags & 0x4, 0x4, "the server's headers fit one frame");
                    for (n, v) in self
                        .decoder
                        .decode(&payload)
                        .expect("HPACK from the server")
                    {
                        call.headers.push((
                            String::from_utf8_lossy(&n).into(),
                            String::from_utf8_lossy(&v).into(),
                        ));
                    }
                    if flags & 0x1 != 0 {
                        return call;
                    }
                }
                0x0 if id == stream => {
                    call.data.extend_from_slice(&payload);
                    if flags & 0x1 != 0 {
                        return call;
                    }
                }
                0x3 if id == stream => {
                    call.reset = Some(u32::from_be_bytes(
                        payload[..4].try_into().expect("RST_STREAM code"),
                    ));
                    return call;
                }
                0x7 => panic!("GOAWAY: {payload:?}"),
                _ => {}
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raw_http2_client_sending_any_authority_is_served() {
    let world = World::new("dp-rawh2");
    let (mut dp, ours) = started(&world).await;
    let socket = world.socket("dataplane");
    let path = socket.display().to_string();
    let percent = path.trim_start_matches('/').replace('/', "%2F");
    let authorities: Vec<Vec<u8>> = vec![
        path.clone().into_bytes(), // grpc-go dialing a bare path: kubelets before 1.26
        percent.into_bytes(),      // grpc C-core 1.57+
        b"".to_vec(),
        b"localhost".to_vec(),
        b"bad authority with spaces\t".to_vec(),
    ];
    let allocate = allocate_request(&[&["dataplane-2"]]).encode_to_vec();
    let sock = socket.clone();
    let results = tokio::task::spawn_blocking(move || {
        // One connection for all: the client's HPACK table carries over.
        let mut h2 = RawH2::connect(&sock);
        let mut results = Vec::new();
        for a in &authorities {
            let call = h2.call(a, "GetDevicePluginOptions", &[]);
            results.push((String::from_utf8_lossy(a).into_owned(), call));
        }
        let call = h2.call(path.as_bytes(), "Allocate", &allocate);
        results.push((format!("{path} (Allocate)"), call));
        results
    })
    .await
    .expect("raw client thread");
    for (authority, call) in &results {
        assert_eq!(call.reset, None, "{authority:?}: reset\n{}", dp.logs());
        assert_eq!(
            call.header(":status"),
            Some("200"),
            "{authority:?}: {call:?}"
        );
        assert_eq!(
            call.header("grpc-status"),
            Some("0"),
            "{authority:?}: {call:?}"
        );
    }
    for (authority, call) in &results[..results.len() - 1] {
        let options = DevicePluginOptions::decode(call.message()).expect("options");
        assert_eq!(options, ours, "{authority:?}");
    }
    let alloc = AllocateResponse::decode(results.last().unwrap().1.message()).expect("allocate");
    assert_eq!(specs(&alloc), expected_specs(&world, &[2]), "{alloc:?}");
    dp.assert_running("after the raw HTTP/2 calls");
}
