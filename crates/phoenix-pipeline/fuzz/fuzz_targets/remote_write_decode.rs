//! Remote write v1: arbitrary bytes as a snappy body and as an uncompressed protobuf body
//! must decode to an error or a batch, never panic or run away with memory.
#![no_main]

use libfuzzer_sys::fuzz_target;
use phoenix_pipeline::model::{Batch, Interner};
use phoenix_pipeline::remote_write::RemoteWriteDecoder;

fuzz_target!(|data: &[u8]| {
    let mut decoder = RemoteWriteDecoder::new(1 << 22);
    let mut interner = Interner::new();
    let mut batch = Batch::default();
    let _ = decoder.decode(data, &mut interner, &mut batch);
    let before = batch.len();
    if decoder
        .decode_uncompressed(data, &mut interner, &mut batch)
        .is_err()
    {
        // A refused request adds nothing.
        assert_eq!(batch.len(), before);
    }
});
