//! Accept any HTTP/2 `:authority` on our gRPC sockets.
//!
//! A gRPC client that dials a unix socket often sends the socket path as
//! `:authority`: grpc-go before the kubelet switched to `localhost`
//! (Kubernetes PR 112597, kubelets before 1.26), grpc C-core 1.57+ (Python
//! `grpcio`: the path percent-encoded), grpc-java. grpc-go's server accepts
//! any authority; h2 (under tonic) parses it as a URI authority and answers
//! a request whose authority does not parse with `RST_STREAM`
//! `PROTOCOL_ERROR`, before tonic or any tower layer sees it, and has no
//! option to relax that (hyperium/h2 PR 487 is still open).
//!
//! So the fix sits below h2, on the connection: [`AuthorityTolerant`] reads
//! the client's bytes, decodes each header block (HEADERS and its
//! CONTINUATIONs) with the HPACK state the client's encoder keeps,
//! replaces an `:authority` that is not a URI authority with `localhost`,
//! and re-encodes every header block as literals without indexing, so h2's
//! own HPACK table stays empty and consistent whatever was rewritten.
//! Every other frame, and the bytes h2 writes back, pass through unchanged.
//! The service never looks at the authority, so nothing is lost.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a client opens an HTTP/2 connection with (RFC 9113, 3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frames we write to h2 stay within the protocol's default
/// SETTINGS_MAX_FRAME_SIZE, which h2 accepts whatever it advertised.
const MAX_FRAME: usize = 16_384;
/// h2's SETTINGS_HEADER_TABLE_SIZE (the default): the most the client's
/// encoder may use, so the most our decoder of its blocks allows.
const CLIENT_TABLE_SIZE: usize = 4096;
/// A header block larger than this ends the connection (h2's own limit on
/// a decoded header list is 16 KiB by default; this bounds our buffer).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The largest decoded header list (RFC 7541's size: name, value and 32
/// per field) a block may carry; h2 refuses far less by default.
const MAX_DECODED: usize = 256 * 1024;
/// What an unparsable authority becomes.
const REPLACEMENT: &[u8] = b"localhost";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the connection preface.
    Preface,
    /// Reading frames.
    Frames,
    /// Not HTTP/2 with prior knowledge: everything passes unchanged.
    Passthrough,
}

/// A header block being collected across CONTINUATION frames.
struct PendingBlock {
    stream_id: [u8; 4],
    end_stream: bool,
    block: Vec<u8>,
}

/// A server-side connection whose incoming HTTP/2 header blocks carry a
/// `:authority` h2 accepts (see the module documentation).
pub struct AuthorityTolerant<S> {
    inner: S,
    phase: Phase,
    decoder: Decoder<'static>,
    /// Bytes read from the client, not processed yet.
    input: Vec<u8>,
    /// Bytes ready for h2, from `output_pos` on.
    output: Vec<u8>,
    output_pos: usize,
    /// Payload bytes of a non-header frame still to pass through unchanged.
    passing: usize,
    pending: Option<PendingBlock>,
    eof: bool,
    /// Header blocks whose authority was replaced (for tests and logs).
    rewritten: u64,
}

impl<S: std::fmt::Debug> std::fmt::Debug for AuthorityTolerant<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthorityTolerant")
            .field("inner", &self.inner)
            .field("phase", &self.phase)
            .field("rewritten", &self.rewritten)
            .finish_non_exhaustive()
    }
}

impl<S> AuthorityTolerant<S> {
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(CLIENT_TABLE_SIZE);
        AuthorityTolerant {
            inner,
            phase: Phase::Preface,
            decoder,
            input: Vec::new(),
            output: Vec::new(),
            output_pos: 0,
            passing: 0,
            pending: None,
            eof: false,
            rewritten: 0,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Move as much of `input` as can be decided on to `output`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.phase {
                Phase::Passthrough => {
                    self.output.append(&mut self.input);
                    return Ok(());
                }
                Phase::Preface => {
                    let n = self.input.len().min(PREFACE.len());
                    if self.input[..n] != PREFACE[..n] {
                        self.phase = Phase::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    self.output.extend(self.input.drain(..PREFACE.len()));
                    self.phase = Phase::Frames;
                }
                Phase::Frames => {
                    if self.passing > 0 {
                        let n = self.passing.min(self.input.len());
                        if n == 0 {
                            return Ok(());
                        }
                        self.output.extend(self.input.drain(..n));
                        self.passing -= n;
                        continue;
                    }
                    if self.input.len() < FRAME_HEADER {
                        return Ok(());
                    }
                    let len = u32::from_be_bytes([0, self.input[0], self.input[1], self.input[2]])
                        as usize;
                    let kind = self.input[3];
                    if kind != HEADERS && kind != CONTINUATION && self.pending.is_none() {
                        self.output.extend(self.input.drain(..FRAME_HEADER));
                        self.passing = len;
                        continue;
                    }
                    if len > MAX_HEADER_BLOCK {
                        return Err(invalid("header frame larger than 256 KiB"));
                    }
                    if self.input.len() < FRAME_HEADER + len {
                        return Ok(());
                    }
                    let frame: Vec<u8> = self.input.drain(..FRAME_HEADER + len).collect();
                    self.header_frame(&frame)?;
                }
            }
        }
    }

    /// A HEADERS or CONTINUATION frame (or, while a block is pending,
    /// whatever came instead of its CONTINUATION).
    fn header_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        let kind = frame[3];
        let flags = frame[4];
        let stream_id: [u8; 4] = [frame[5], frame[6], frame[7], frame[8]];
        let payload = &frame[FRAME_HEADER..];
        let mut block = match (kind, self.pending.take()) {
            (HEADERS, None) => {
                let fragment = headers_fragment(flags, payload)?;
                PendingBlock {
                    stream_id,
                    end_stream: flags & END_STREAM != 0,
                    block: fragment.to_vec(),
                }
            }
            (CONTINUATION, Some(mut pending)) if pending.stream_id == stream_id => {
                if pending.block.len() + payload.len() > MAX_HEADER_BLOCK {
                    return Err(invalid("header block larger than 256 KiB"));
                }
                pending.block.extend_from_slice(payload);
                pending
            }
            (CONTINUATION, None) => {
                // A protocol error h2 itself reports (a connection error).
                self.output.extend_from_slice(frame);
                return Ok(());
            }
            _ => return Err(invalid("a header block was interrupted by another frame")),
        };
        if flags & END_HEADERS == 0 {
            self.pending = Some(block);
            return Ok(());
        }
        let encoded = self.rewrite(&block.block)?;
        block.block.clear();
        write_block(&mut self.output, &block, &encoded);
        Ok(())
    }

    /// Decode a complete header block with the client's HPACK state and
    /// encode it again as literals, with a tolerable `:authority`.
    fn rewrite(&mut self, block: &[u8]) -> io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(block.len() + 64);
        let mut replaced = false;
        let mut decoded = 0usize;
        // Indexed fields can make a small block decode to a huge list (an
        // "HPACK bomb"): stop writing past the bound, refuse after.
        self.decoder
            .decode_with_cb(block, |name, value| {
                decoded += name.len() + value.len() + 32;
                if decoded > MAX_DECODED {
                    return;
                }
                let value: &[u8] = if &name[..] == b":authority"
                    && http::uri::Authority::try_from(&value[..]).is_err()
                {
                    replaced = true;
                    REPLACEMENT
                } else {
                    &value
                };
                literal(&mut out, &name, value);
            })
            .map_err(|e| invalid(&format!("HPACK: {e}")))?;
        if decoded > MAX_DECODED {
            return Err(invalid("header list larger than 256 KiB"));
        }
        if replaced {
            self.rewritten += 1;
        }
        Ok(out)
    }
}

/// The header block fragment of a HEADERS frame's payload, without padding
/// and priority.
fn headers_fragment(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    let mut start = 0;
    let mut end = payload.len();
    if flags & PADDED != 0 {
        let pad = *payload
            .first()
            .ok_or_else(|| invalid("PADDED HEADERS frame without a pad length"))?
            as usize;
        start = 1;
        end = end
            .checked_sub(pad)
            .ok_or_else(|| invalid("HEADERS padding longer than the frame"))?;
    }
    if flags & PRIORITY != 0 {
        start += 5;
    }
    if start > end {
        return Err(invalid("HEADERS frame too short for its flags"));
    }
    Ok(&payload[start..end])
}

/// One header as a literal without indexing, new name, no Huffman coding
/// (RFC 7541, 6.2.2).
fn literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    string(out, name);
    string(out, value);
}

fn string(out: &mut Vec<u8>, s: &[u8]) {
    // A Vec never fails to take bytes.
    let _ = loona_hpack::encoder::encode_integer_into(s.len(), 7, 0, out);
    out.extend_from_slice(s);
}

/// The block as one HEADERS frame and as many CONTINUATIONs as needed.
fn write_block(out: &mut Vec<u8>, block: &PendingBlock, encoded: &[u8]) {
    let mut chunks: Vec<&[u8]> = encoded.chunks(MAX_FRAME).collect();
    if chunks.is_empty() {
        chunks.push(&[]);
    }
    let last = chunks.len() - 1;
    for (i, chunk) in chunks.into_iter().enumerate() {
        let (kind, mut flags) = if i == 0 {
            (HEADERS, if block.end_stream { END_STREAM } else { 0 })
        } else {
            (CONTINUATION, 0)
        };
        if i == last {
            flags |= END_HEADERS;
        }
        let len = (chunk.len() as u32).to_be_bytes();
        out.extend_from_slice(&len[1..]);
        out.push(kind);
        out.push(flags);
        out.extend_from_slice(&block.stream_id);
        out.extend_from_slice(chunk);
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {what}"),
    )
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityTolerant<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.output_pos < this.output.len() {
                let n = buf.remaining().min(this.output.len() - this.output_pos);
                buf.put_slice(&this.output[this.output_pos..this.output_pos + n]);
                this.output_pos += n;
                if this.output_pos == this.output.len() {
                    this.output.clear();
                    this.output_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.phase == Phase::Passthrough && this.input.is_empty() {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if let Err(e) = this.process() {
                tracing::debug!("closing a gRPC connection: {e}");
                return Poll::Ready(Err(e));
            }
            if this.output_pos < this.output.len() {
                continue;
            }
            if this.eof {
                // What is left is an incomplete frame: h2 sees the end.
                return Poll::Ready(Ok(()));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    if read.filled().is_empty() {
                        this.eof = true;
                    } else {
                        this.input.extend_from_slice(read.filled());
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityTolerant<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: tonic::transport::server::Connected> tonic::transport::server::Connected
    for AuthorityTolerant<S>
{
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Feed `bytes` in chunks of `step` and return what h2 would read.
    fn through(bytes: &[u8], step: usize) -> io::Result<(Vec<u8>, u64)> {
        let mut t = AuthorityTolerant::new(());
        for chunk in bytes.chunks(step) {
            t.input.extend_from_slice(chunk);
            t.process()?;
        }
        Ok((t.output, t.rewritten))
    }

    fn decode_headers(out: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut d = Decoder::new();
        let mut at = PREFACE.len();
        let mut block = Vec::new();
        let mut all = Vec::new();
        while at < out.len() {
            let len = u32::from_be_bytes([0, out[at], out[at + 1], out[at + 2]]) as usize;
            let (kind, flags) = (out[at + 3], out[at + 4]);
            let payload = &out[at + FRAME_HEADER..at + FRAME_HEADER + len];
            if kind == HEADERS || kind == CONTINUATION {
                block.extend_from_slice(payload);
                if flags & END_HEADERS != 0 {
                    all.extend(d.decode(&block).expect("our own encoding decodes"));
                    block.clear();
                }
            }
            at += FRAME_HEADER + len;
        }
        all
    }

    #[test]
    fn a_path_authority_becomes_localhost_and_other_frames_pass_unchanged() {
        let mut enc = loona_hpack::Encoder::new();
        let headers: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/v1beta1.DevicePlugin/Allocate"),
            (b":authority", b"/var/lib/kubelet/device-plugins/x.sock"),
            (b"content-type", b"application/grpc"),
        ];
        let block = enc.encode(headers.iter().copied());
        // The second request reuses the client's dynamic table.
        let block2 = enc.encode(headers.iter().copied());
        let settings = frame(0x4, 0, 0, &[]);
        let data = frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(&settings);
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        input.extend(&data);
        // Padded, with priority, split into a CONTINUATION.
        let (a, b) = block2.split_at(block2.len() / 2);
        let mut payload = vec![3u8];
        payload.extend([0, 0, 0, 0, 16]);
        payload.extend(a);
        payload.extend([0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY | END_STREAM, 3, &payload));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, b));
        for step in [1, 7, input.len()] {
            let (out, rewritten) = through(&input, step).unwrap();
            assert_eq!(rewritten, 2, "step {step}");
            assert!(out.starts_with(PREFACE));
            assert_eq!(
                &out[PREFACE.len()..PREFACE.len() + settings.len()],
                &settings[..]
            );
            let decoded = decode_headers(&out);
            let authorities: Vec<&[u8]> = decoded
                .iter()
                .filter(|(n, _)| n == b":authority")
                .map(|(_, v)| &v[..])
                .collect();
            assert_eq!(authorities, vec![&b"localhost"[..], &b"localhost"[..]]);
            let paths = decoded.iter().filter(|(n, _)| n == b":path").count();
            assert_eq!(paths, 2, "both requests keep their headers: {decoded:?}");
            let needle = &data[..];
            assert!(
                out.windows(needle.len()).any(|w| w == needle),
                "the DATA frame passes unchanged"
            );
        }
    }

    #[test]
    fn a_valid_authority_is_kept() {
        let mut enc = loona_hpack::Encoder::new();
        let block = enc.encode([(&b":authority"[..], &b"localhost:1234"[..])]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let (out, rewritten) = through(&input, 5).unwrap();
        assert_eq!(rewritten, 0);
        assert_eq!(
            decode_headers(&out),
            vec![(b":authority".to_vec(), b"localhost:1234".to_vec())]
        );
    }

    #[test]
    fn an_hpack_bomb_is_refused_without_decoding_it_all() {
        // One 4000-byte header into the dynamic table, then 100 000
        // one-byte references to it: 400 MB decoded from 100 KB.
        // Literal with incremental indexing, new name "x", a 4000-byte value.
        let mut block = vec![0x40, 0x01, b'x'];
        let _ = loona_hpack::encoder::encode_integer_into(4000, 7, 0, &mut block);
        block.extend(std::iter::repeat_n(b'v', 4000));
        block.extend(std::iter::repeat_n(0xbe, 100_000)); // index 62: the newest entry
        let mut input = PREFACE.to_vec();
        let mut head = (block.len() as u32).to_be_bytes()[1..].to_vec();
        head.extend([HEADERS, END_HEADERS, 0, 0, 0, 1]);
        input.extend(head);
        input.extend(&block);
        let err = through(&input, input.len()).expect_err("a bomb");
        assert!(err.to_string().contains("larger than 256 KiB"), "{err}");
    }

    #[test]
    fn not_http2_passes_unchanged() {
        let input = b"GET /metrics HTTP/1.1\r\nHost: /x.sock\r\n\r\n";
        let (out, rewritten) = through(input, 3).unwrap();
        assert_eq!(out, input);
        assert_eq!(rewritten, 0);
    }

    #[test]
    fn broken_header_blocks_are_errors_not_panics() {
        let cases: Vec<(&str, Vec<u8>)> = vec![
            (
                "bad HPACK index",
                frame(HEADERS, END_HEADERS, 1, &[0xff, 0xff, 0xff, 0x7f]),
            ),
            (
                "padding longer than the frame",
                frame(HEADERS, END_HEADERS | PADDED, 1, &[9, 1]),
            ),
            (
                "priority in a short frame",
                frame(HEADERS, END_HEADERS | PRIORITY, 1, &[1]),
            ),
            (
                "padded without a length",
                frame(HEADERS, END_HEADERS | PADDED, 1, &[]),
            ),
            (
                "interrupted block",
                [frame(HEADERS, 0, 1, &[0x82]), frame(0x0, 0, 1, &[])].concat(),
            ),
            (
                "oversized frame",
                [0x10u8, 0, 0, HEADERS, END_HEADERS, 0, 0, 0, 1].to_vec(),
            ),
        ];
        for (what, bytes) in cases {
            let mut input = PREFACE.to_vec();
            input.extend(bytes);
            let err = through(&input, input.len()).expect_err(what);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}: {err}");
        }
    }
}
