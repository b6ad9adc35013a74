//! Fixed byte vectors for the on-disk formats (see docs/FORMATS.md). Our reader, our
//! encoder and a reference encoder (the `kafka-protocol` crate) must all agree.

use bytes::{Bytes, BytesMut};
use engine::batch::{assign_base_offset, BatchBuilder, BatchError, BatchView};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};

/// Two records: (ts 1000, key "k1", value "v1"), (ts 1005, no key, value "v2",
/// header h=x); no producer id; base offset 0; leader epoch -1.
const TWO_RECORDS: &str = concat!(
    "0000000000000000", // base_offset
    "00000049",         // batch_length = 73
    "ffffffff",         // partition_leader_epoch = -1
    "02",               // magic
    "0cee088d",         // crc32c(attributes..end)
    "0000",             // attributes
    "00000001",         // last_offset_delta
    "00000000000003e8", // base_timestamp 1000
    "00000000000003ed", // max_timestamp 1005
    "ffffffffffffffff", // producer_id -1
    "ffff",             // producer_epoch -1
    "ffffffff",         // base_sequence -1
    "00000002",         // record_count
    "14",
    "00",
    "00",
    "00",
    "04",
    "6b31",
    "04",
    "7631",
    "00", // record 0
    "18",
    "00",
    "0a",
    "02",
    "01",
    "04",
    "7632",
    "02",
    "02",
    "68",
    "02",
    "78", // record 1
);

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
}

fn reference_records() -> Vec<Record> {
    let mut second = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset: 1,
        sequence: 0, // the encoder batches records whose offset - sequence agree
        timestamp: 1005,
        key: None,
        value: Some(Bytes::from_static(b"v2")),
        headers: Default::default(),
    };
    second.headers.insert(StrBytes::from_static_str("h"), Some(Bytes::from_static(b"x")));
    let first = Record {
        offset: 0,
        sequence: -1,
        timestamp: 1000,
        key: Some(Bytes::from_static(b"k1")),
        value: Some(Bytes::from_static(b"v1")),
        headers: Default::default(),
        ..second.clone()
    };
    vec![first, second]
}

#[test]
fn reference_encoder_produces_the_checked_in_vector() {
    let mut encoded = BytesMut::new();
    let options = RecordEncodeOptions { version: 2, compression: Compression::None };
    RecordBatchEncoder::encode(&mut encoded, &reference_records(), &options).unwrap();
    assert_eq!(hex(&encoded), TWO_RECORDS);
}

#[test]
fn our_encoder_produces_the_checked_in_vector() {
    let mut builder = BatchBuilder::default();
    builder.push(1000, Some(b"k1"), Some(b"v1"));
    builder.push_with_headers(1005, None, Some(b"v2"), &[(b"h", Some(b"x"))]);
    assert_eq!(hex(&builder.finish()), TWO_RECORDS);
}

#[test]
fn our_reader_decodes_the_vector() {
    let bytes = unhex(TWO_RECORDS);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.len(), 85);
    assert_eq!(view.crc(), 0x0cee088d);
    assert_eq!((view.base_offset(), view.last_offset(), view.record_count()), (0, 1, 2));
    assert_eq!((view.base_timestamp(), view.max_timestamp()), (1000, 1005));
    assert_eq!(view.producer_id(), -1);
    let records = view.records().unwrap();
    assert_eq!(records[0].key, Some(&b"k1"[..]));
    assert_eq!(records[1].headers, vec![(&b"h"[..], Some(&b"x"[..]))]);
}

#[test]
fn assigning_a_base_offset_keeps_the_crc_valid() {
    let mut bytes = unhex(TWO_RECORDS);
    assign_base_offset(&mut bytes, 1 << 40);
    let view = BatchView::parse(&bytes).unwrap();
    assert_eq!(view.base_offset(), 1 << 40);
    assert_eq!(view.header().partition_leader_epoch.get(), 0);
    assert_eq!(&bytes[17..21], &unhex(TWO_RECORDS)[17..21], "crc untouched");
}

#[test]
fn compressed_reference_batches_validate_and_pass_through() {
    for compression in [Compression::Gzip, Compression::Snappy, Compression::Lz4, Compression::Zstd] {
        let mut encoded = BytesMut::new();
        let options = RecordEncodeOptions { version: 2, compression };
        RecordBatchEncoder::encode(&mut encoded, &reference_records(), &options).unwrap();
        let view = BatchView::parse(&encoded).unwrap();
        assert_eq!(view.compression(), compression as i16);
        assert_eq!(view.record_count(), 2);
        assert!(view.records().is_err(), "the engine does not decompress");
    }
}

#[test]
fn damaged_vectors_give_precise_errors() {
    let good = unhex(TWO_RECORDS);
    let mut bad_magic = good.clone();
    bad_magic[16] = 1;
    assert_eq!(BatchView::parse(&bad_magic).unwrap_err(), BatchError::UnsupportedMagic(1));
    let mut bad_crc = good.clone();
    bad_crc[60] ^= 1;
    assert!(matches!(BatchView::parse(&bad_crc), Err(BatchError::CrcMismatch { stored: 0x0cee088d, .. })));
    assert_eq!(
        BatchView::parse(&good[..50]).unwrap_err(),
        BatchError::Truncated { needed: 85, available: 50 }
    );
    let mut bad_length = good.clone();
    bad_length[8..12].copy_from_slice(&5i32.to_be_bytes());
    assert_eq!(BatchView::parse(&bad_length).unwrap_err(), BatchError::InvalidLength(5));
}
