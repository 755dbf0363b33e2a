//! Brotli for a route's `compress`, as a downstream module beside Pingora's
//! compression module: Pingora 0.9's brotli encoder flushes its stream but
//! never finishes it (cloudflare/pingora#1013), and strict decoders (Node's
//! `fetch`) reject every such body. Only `br` comes here; drop this module
//! when Pingora finishes the stream itself.

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::modules::http::{HttpModule, HttpModuleBuilder, Module};
use pingora::prelude::*;

/// The encoder's input buffer; its window: 512 KiB, as nginx's brotli
/// module and Pingora's own (brotli's 4 MiB default cost 20 MB and more a
/// large answer, measured: 443 MB for 20 at once).
const BUFFER: usize = 4096;
const WINDOW_BITS: u32 = 19;

/// Builds the per-request module, off until [`BrotliStream::arm`].
pub struct BrotliStreamBuilder;

impl HttpModuleBuilder for BrotliStreamBuilder {
    fn init(&self) -> Module {
        Box::new(BrotliStream::Off)
    }
}

pub enum BrotliStream {
    Off,
    /// Compress the answer whose header comes next, at this quality.
    Armed(u32),
    Body {
        encoder: Box<brotli::CompressorWriter<Vec<u8>>>,
        before: usize,
        after: usize,
    },
    Done {
        before: usize,
        after: usize,
    },
}

impl BrotliStream {
    pub fn arm(&mut self, quality: u32) {
        if matches!(self, BrotliStream::Off) {
            *self = BrotliStream::Armed(quality);
        }
    }

    /// Bytes in and out, once the body is done.
    pub fn stat(&self) -> Option<(usize, usize)> {
        match self {
            BrotliStream::Done { before, after } => Some((*before, *after)),
            _ => None,
        }
    }

    /// The encoded bytes so far, or (at the end) all that is left.
    fn feed(&mut self, data: &[u8], end: bool) -> Option<Bytes> {
        let BrotliStream::Body {
            encoder,
            before,
            after,
        } = self
        else {
            return None;
        };
        *before += data.len();
        // Writing into a Vec cannot fail.
        let _ = encoder.write_all(data);
        if !end {
            let out = std::mem::take(encoder.get_mut());
            *after += out.len();
            return Some(Bytes::from(out));
        }
        let BrotliStream::Body {
            encoder,
            before,
            after,
        } = std::mem::replace(self, BrotliStream::Off)
        else {
            unreachable!("matched above")
        };
        // `into_inner` finishes the stream: its last meta-block.
        let out = encoder.into_inner();
        *self = BrotliStream::Done {
            before,
            after: after + out.len(),
        };
        Some(Bytes::from(out))
    }
}

#[async_trait]
impl HttpModule for BrotliStream {
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }

    async fn response_header_filter(
        &mut self,
        resp: &mut ResponseHeader,
        end_of_stream: bool,
    ) -> Result<()> {
        let BrotliStream::Armed(quality) = *self else {
            return Ok(());
        };
        if resp.status.is_informational() {
            return Ok(());
        }
        if end_of_stream {
            *self = BrotliStream::Off;
            return Ok(());
        }
        // As Pingora's module does for its codings: the length is not known
        // ahead, ranges no longer apply, the bytes are another representation.
        resp.insert_header(http::header::CONTENT_ENCODING, "br")?;
        resp.remove_header(&http::header::CONTENT_LENGTH);
        resp.remove_header(&http::header::ACCEPT_RANGES);
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
        if let Some(etag) = resp.headers.get(http::header::ETAG).cloned() {
            let tag = etag.as_bytes();
            if tag.starts_with(b"\"") {
                let weak = [b"W/", tag].concat();
                resp.insert_header(http::header::ETAG, weak)?;
            } else if !tag.starts_with(b"W/") {
                resp.remove_header(&http::header::ETAG);
            }
        }
        *self = BrotliStream::Body {
            encoder: Box::new(brotli::CompressorWriter::new(
                Vec::new(),
                BUFFER,
                quality,
                WINDOW_BITS,
            )),
            before: 0,
            after: 0,
        };
        Ok(())
    }

    fn response_body_filter(
        &mut self,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
    ) -> Result<()> {
        let data = body.as_deref().unwrap_or(&[]);
        if let Some(out) = self.feed(data, end_of_stream) {
            *body = Some(out);
        }
        Ok(())
    }

    fn response_done_filter(&mut self) -> Result<Option<Bytes>> {
        Ok(self.feed(&[], true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[tokio::test]
    async fn a_streamed_body_ends_as_a_finished_brotli_stream() {
        let text: Vec<u8> = (0..30_000u32)
            .flat_map(|i| format!("line {} of text\n", i % 97).into_bytes())
            .collect();
        let mut m = BrotliStream::Off;
        m.arm(4);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        resp.insert_header("content-length", text.len().to_string())
            .unwrap();
        resp.insert_header("etag", "\"abc\"").unwrap();
        m.response_header_filter(&mut resp, false).await.unwrap();
        assert_eq!(resp.headers["content-encoding"], "br");
        assert_eq!(resp.headers["etag"], "W/\"abc\"");
        assert!(resp.headers.get("content-length").is_none());
        let mut out = Vec::new();
        for chunk in text.chunks(7000) {
            let mut body = Some(Bytes::copy_from_slice(chunk));
            m.response_body_filter(&mut body, false).unwrap();
            out.extend_from_slice(body.as_deref().unwrap_or(&[]));
        }
        out.extend_from_slice(&m.response_done_filter().unwrap().unwrap());
        assert_eq!(m.response_done_filter().unwrap(), None, "finished once");
        let mut decoded = Vec::new();
        brotli::Decompressor::new(&out[..], 4096)
            .read_to_end(&mut decoded)
            .unwrap();
        assert_eq!(decoded, text);
        assert_eq!(m.stat(), Some((text.len(), out.len())));
    }

    #[tokio::test]
    async fn an_answer_without_a_body_is_left_alone() {
        let mut m = BrotliStream::Off;
        m.arm(4);
        let mut resp = ResponseHeader::build(200, None).unwrap();
        m.response_header_filter(&mut resp, true).await.unwrap();
        assert!(resp.headers.get("content-encoding").is_none());
        let mut body = None;
        m.response_body_filter(&mut body, true).unwrap();
        assert!(body.is_none());
    }
}
