//! The gRPC codec of the generated code (see `build.rs`): prost's, with a
//! smaller first buffer per call.
//!
//! tonic gives every call, and every response stream for as long as it is
//! open, an encode buffer of `BufferSettings::default()`'s 8 KiB. Most
//! messages of this API are well under 1 KiB, and a watch stream holds its
//! buffer for hours: at 10,000 streams the default buffers alone were
//! 80 MiB. The buffer still grows to whatever a message needs (a job of
//! 1,000 subtasks), and the yield threshold is tonic's.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// The first size of a call's encode and decode buffers.
pub const BUFFER_SIZE: usize = 1024;

/// How much encoded data a response stream sends before it yields to other
/// tasks: tonic's default.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Prost encoding with [`BUFFER_SIZE`] buffers.
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U> {
    types: PhantomData<(T, U)>,
}

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        Self { types: PhantomData }
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}
