//! Kafka-grade validation of appended batches: CRC-valid frames whose fields lie
//! (counts, deltas, lengths, varints, timestamps, header keys, attribute bits) are
//! refused before anything touches the log, and everything accepted decodes with an
//! independent decoder (`kafka-protocol`) to the same records.
//!
//! The property test judges [`engine::batch::validate_records`] against the oracle in
//! [`engine::lies`] over `CORELOG_VALIDATION_CASES` (default 120,000) seeded cases;
//! replay one run with `CORELOG_VALIDATION_SEED`.

use bytes::BytesMut;
use engine::batch::{validate_records, BatchError, BatchView, DECOMPRESSED_BATCH_BYTES_MAX};
use engine::lies::RawBatch;
use engine::log::{AppendError, LogConfig, PartitionLog};
use kafka_protocol::records::{Compression, RecordBatchDecoder};
use rand::{Rng, SeedableRng};

const NOW_MS: i64 = 1_700_000_000_000;

fn validate(bytes: &[u8]) -> Result<(), BatchError> {
    validate_records(&BatchView::parse(bytes)?)
}

fn seeded() -> (u64, rand::rngs::StdRng) {
    let seed = std::env::var("CORELOG_VALIDATION_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("validation seed {seed} (replay with CORELOG_VALIDATION_SEED={seed})");
    (seed, rand::rngs::StdRng::seed_from_u64(seed))
}

/// Accepted bytes decode with kafka-protocol to the same count, offsets 0..n-1 and the
/// timestamps, keys and values the structure holds.
fn assert_decodes_like(bytes: &[u8], batch: &RawBatch, context: &str) {
    let mut buf = bytes::Bytes::copy_from_slice(bytes);
    let set = RecordBatchDecoder::decode(&mut buf)
        .unwrap_or_else(|e| panic!("{context}: accepted but undecodable: {e}"));
    assert_eq!(set.records.len(), batch.records.len(), "{context}");
    for (i, (decoded, raw)) in set.records.iter().zip(&batch.records).enumerate() {
        assert_eq!(decoded.offset, i as i64, "{context}");
        if batch.attributes & engine::batch::ATTR_TIMESTAMP_LOG_APPEND == 0 {
            assert_eq!(decoded.timestamp, batch.base_timestamp + raw.timestamp_delta, "{context}");
        }
        let field = |f: &engine::lies::Field| match f {
            engine::lies::Field::Bytes(b) => Some(b.clone()),
            _ => None,
        };
        assert_eq!(decoded.key.as_deref().map(<[u8]>::to_vec), field(&raw.key), "{context}");
        assert_eq!(decoded.value.as_deref().map(<[u8]>::to_vec), field(&raw.value), "{context}");
    }
}

#[test]
fn given_structure_aware_lies_with_valid_crcs_then_the_validator_agrees_with_kafkas_rules() {
    let cases: u64 =
        std::env::var("CORELOG_VALIDATION_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(120_000);
    let (seed, mut rng) = seeded();
    let mut choose = |n: u64| rng.gen_range(0..n);
    let (mut refused, mut accepted, mut lies) = (0u64, 0u64, std::collections::BTreeMap::new());
    for case in 0..cases {
        let mut batch = RawBatch::generate(&mut choose);
        let mutations = choose(4);
        let mut told = Vec::new();
        for _ in 0..mutations {
            told.push(batch.mutate(&mut choose));
        }
        let bytes = batch.encode();
        let context = format!("seed {seed} case {case}: lies {told:?}");
        let verdict = validate(&bytes);
        assert_eq!(verdict.is_ok(), batch.is_valid(), "{context}: validator said {verdict:?}; {batch:?}");
        match verdict {
            Ok(()) => {
                accepted += 1;
                assert_decodes_like(&bytes, &batch, &context);
            }
            Err(_) => refused += 1,
        }
        for lie in told {
            *lies.entry(lie).or_insert(0u64) += 1;
        }
    }
    println!("{cases} cases: {accepted} accepted, {refused} refused; lies told: {lies:?}");
    assert!(refused > cases / 3 && accepted > cases / 10, "both outcomes are exercised");
    assert_eq!(lies.len(), 20, "every kind of lie was told");
}

#[test]
fn given_lying_batches_when_appended_then_refused_and_the_log_is_untouched() {
    let (seed, mut rng) = seeded();
    let mut choose = |n: u64| rng.gen_range(0..n);
    let dir = tempfile::tempdir().unwrap();
    let config = LogConfig { segment_bytes: 4096, retention_ms: None, ..LogConfig::default() };
    let mut log = PartitionLog::open(dir.path(), config, false, NOW_MS).unwrap().0;
    let mut expected_end = 0;
    for case in 0..2_000 {
        let mut batch = RawBatch::generate(&mut choose);
        let lie = batch.mutate(&mut choose);
        let before = (log.next_offset(), log.size_bytes(), log.segment_count());
        match log.append_sync(batch.encode(), NOW_MS) {
            Ok((base, next)) => {
                assert!(batch.is_valid(), "seed {seed} case {case}: {lie} accepted");
                assert_eq!(base, expected_end);
                assert_eq!(next - base, batch.records.len() as i64, "seed {seed} case {case}");
                expected_end = next;
            }
            Err(error) => {
                assert!(!batch.is_valid(), "seed {seed} case {case}: honest batch refused: {error}");
                assert!(matches!(error, AppendError::Corrupt(_)), "seed {seed} case {case}: {error}");
                assert_eq!((log.next_offset(), log.size_bytes(), log.segment_count()), before, "untouched");
            }
        }
    }
    assert!(expected_end > 0);
    // Everything stored reads back and re-validates.
    let mut offset = 0;
    while offset < log.high_watermark() {
        let fetched = log.read(offset, 1 << 20).unwrap();
        let mut rest = &fetched.bytes[..];
        while !rest.is_empty() {
            let view = BatchView::parse(rest).unwrap();
            validate_records(&view).unwrap();
            rest = &rest[view.len()..];
        }
        offset = fetched.next_offset;
    }
}

#[test]
fn given_the_lies_from_the_issue_then_each_is_refused_with_its_reason() {
    let mut choose_zero = |_n: u64| 0;
    let honest = || {
        let mut seq = 0u64;
        let mut choose = move |n: u64| {
            seq += 1;
            (seq * 7919) % n
        };
        RawBatch::generate(&mut choose)
    };
    // record_count = i32::MAX with a matching last_offset_delta: the count no longer
    // matches the records present.
    let mut batch = honest();
    batch.record_count = i32::MAX;
    batch.last_offset_delta = i32::MAX - 1;
    let error = validate(&batch.encode()).unwrap_err();
    assert!(matches!(error, BatchError::InvalidRecord { .. }), "{error}");
    // An offset delta of 2,000,000,000.
    let mut batch = honest();
    batch.records[0].offset_delta = 2_000_000_000;
    assert!(validate(&batch.encode()).unwrap_err().is_invalid_record());
    // Decreasing deltas.
    let mut batch = honest();
    while batch.records.len() < 2 {
        batch = RawBatch::generate(&mut choose_zero);
        batch.records.push(batch.records[0].clone());
        batch.records[1].offset_delta = 1;
        batch.record_count = 2;
        batch.last_offset_delta = 1;
    }
    batch.records[0].offset_delta = 1;
    batch.records[1].offset_delta = 0;
    assert!(validate(&batch.encode()).unwrap_err().is_invalid_record());
    // A header key that is not UTF-8.
    let mut batch = honest();
    batch.records[0].headers.push((engine::lies::Field::Bytes(vec![0xff, 0x00]), engine::lies::Field::Null));
    let error = validate(&batch.encode()).unwrap_err();
    assert!(error.to_string().contains("UTF-8"), "{error}");
}

fn kafka_batch(compression: Compression, values: Vec<bytes::Bytes>) -> BytesMut {
    let records = values
        .into_iter()
        .enumerate()
        .map(|(i, value)| (Some(bytes::Bytes::from(format!("k{i}"))), Some(value)))
        .collect();
    engine::lies::kafka_encoded(compression, NOW_MS, records)
}

#[test]
fn given_compressed_batches_then_honest_ones_pass_and_bombs_and_lies_inside_are_refused() {
    for compression in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let values = (0..50).map(|i| bytes::Bytes::from(format!("value {i} ").repeat(20))).collect();
        let honest = kafka_batch(compression, values);
        assert_eq!(BatchView::parse(&honest).unwrap().len(), honest.len(), "one batch");
        validate(&honest).unwrap_or_else(|e| panic!("{compression:?}: {e}"));
        // A bomb: one record of far more zeros than the limit, compressed to little.
        let bomb_values = vec![bytes::Bytes::from(vec![0u8; 72 << 20])];
        let bomb = kafka_batch(compression, bomb_values);
        assert_eq!(BatchView::parse(&bomb).unwrap().len(), bomb.len(), "one batch");
        assert!(
            bomb.len() < 8 << 20,
            "{compression:?}: the bomb is small on the wire ({} bytes)",
            bomb.len()
        );
        let error = validate(&bomb).unwrap_err();
        assert!(error.to_string().contains("limit"), "{compression:?}: {error}");
        const { assert!(DECOMPRESSED_BATCH_BYTES_MAX < 72 << 20) };
        // A lie inside the compressed records: the header claims one record more, CRC
        // recomputed.
        let mut lying = honest.clone();
        lying.truncate(BatchView::parse(&honest).unwrap().len());
        let count = i32::from_be_bytes(lying[57..61].try_into().unwrap()) + 1;
        lying[57..61].copy_from_slice(&count.to_be_bytes());
        lying[23..27].copy_from_slice(&(count - 1).to_be_bytes());
        let crc = crc32c::crc32c(&lying[21..]);
        lying[17..21].copy_from_slice(&crc.to_be_bytes());
        let error = validate(&lying).unwrap_err();
        assert!(error.is_invalid_record(), "{compression:?}: {error}");
    }
    // An unknown codec.
    let mut batch = kafka_batch(Compression::None, vec![bytes::Bytes::from_static(b"x")]);
    batch[22] |= 6;
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
    assert_eq!(validate(&batch).unwrap_err(), BatchError::UnsupportedCompression(6));
}
