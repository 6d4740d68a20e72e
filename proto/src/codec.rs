//! The codec every generated service and client uses: prost, as tonic's default, but with a
//! small initial encode buffer. tonic allocates the encode buffer once per call and keeps it for
//! the call's life; its default of 8 KiB made up a quarter of a worker's memory per idle timeline
//! stream (one buffer per open stream), while a timeline item is a few hundred bytes. The buffer
//! still grows on demand for larger messages (Raft batches, history pages).

use std::marker::PhantomData;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::ProstCodec;

/// Initial encode buffer of one call: a timeline item (a 280-character ASCII post and its
/// author) fits, with its 5-byte gRPC frame header; longer encodings grow the buffer.
pub const ENCODE_BUFFER: usize = 1024;
/// Encoded bytes after which a streaming response yields to let the transport send: tonic's
/// default.
pub const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost encoding with an `ENCODE_BUFFER` initial encode buffer (decoding as tonic's default).
#[derive(Debug, Clone)]
pub struct LeanCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for LeanCodec<T, U> {
    fn default() -> Self {
        LeanCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for LeanCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = <ProstCodec<T, U> as Codec>::Encoder;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::default().decoder()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::{Post, TimelineItem, timeline_item::Item};
    use tonic::codec::Encoder;

    /// The lean encoder's settings are what this module says, and a timeline item of a
    /// 280-character ASCII post by a 32-character author fits its initial buffer.
    #[test]
    fn a_timeline_item_fits_the_initial_buffer() {
        let mut codec = LeanCodec::<TimelineItem, TimelineItem>::default();
        let settings = codec.encoder().buffer_settings();
        assert_eq!(
            format!("{settings:?}"),
            format!("{:?}", BufferSettings::new(ENCODE_BUFFER, YIELD_THRESHOLD))
        );
        let item = TimelineItem {
            item: Some(Item::Post(Post {
                seq: u64::MAX,
                author: "a".repeat(32),
                text: "x".repeat(280),
                ts_ms: i64::MAX,
            })),
        };
        assert!(prost::Message::encoded_len(&item) + 5 <= ENCODE_BUFFER);
    }
}
