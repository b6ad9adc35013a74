//! Any byte string as a Kafka request frame: decoding returns Ok or Err, never panics
//! or aborts (the broker decodes exactly this way before handling a request).
#![no_main]

libfuzzer_sys::fuzz_target!(|frame: &[u8]| {
    let _ = engine::kafka::decode_request(frame);
});
