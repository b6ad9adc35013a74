//! Two targets in one:
//! * the fuzzer's bytes as a segment: the batch parser, the record validator, the
//!   record decoder and the recovery scan return errors for bad bytes, never panic;
//! * the fuzzer's bytes as *choices* for a structure-aware lying batch
//!   (`engine::lies`): a frame with a valid CRC whose fields lie, which the validator
//!   must judge exactly as Kafka's rules (the oracle) do. Random bytes almost never
//!   pass a CRC; these always do.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(view) = engine::batch::BatchView::parse(bytes) {
        let _ = engine::batch::validate_records(&view);
        let _ = view.records();
    }
    let scan = engine::segment::scan_batches(bytes, 0, 0, |_, view| {
        let _ = view.records();
    });
    assert!(scan.valid_end as usize <= bytes.len());

    let mut at = 0usize;
    let mut choose = |n: u64| {
        let byte = bytes.get(at).copied().unwrap_or(0);
        at += 1;
        u64::from(byte) % n
    };
    let mut batch = engine::lies::RawBatch::generate(&mut choose);
    for _ in 0..choose(4) {
        batch.mutate(&mut choose);
    }
    let encoded = batch.encode();
    let view = engine::batch::BatchView::parse(&encoded);
    let verdict = view.and_then(|view| engine::batch::validate_records(&view));
    assert_eq!(verdict.is_ok(), batch.is_valid(), "{verdict:?} for {batch:?}");
});
