//! Any byte string as a segment: the batch parser, the record decoder and the
//! recovery scan return errors for bad bytes and never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|bytes: &[u8]| {
    if let Ok(view) = engine::batch::BatchView::parse(bytes) {
        let _ = view.records();
    }
    let scan = engine::segment::scan_batches(bytes, 0, 0, |_, view| {
        let _ = view.records();
    });
    assert!(scan.valid_end as usize <= bytes.len());
});
