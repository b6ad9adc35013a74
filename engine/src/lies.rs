//! Structure-aware lies: RecordBatch v2 frames built field by field, where any field
//! may lie (counts, offset and timestamp deltas, lengths, varint widths, header keys,
//! attribute bits) while the frame stays well formed and its CRC stays valid. Random
//! bytes almost never pass a CRC, so they never reach the record checks; these do.
//!
//! Owns: [`RawBatch`] (the structure), its encoder, [`RawBatch::is_valid`] (what
//! Kafka's `LogValidator` rules say of the structure, computed from the structure and
//! not from the bytes: the oracle the property test and the fuzz target compare
//! [`crate::batch::validate_records`] against), and [`RawBatch::generate`] /
//! [`RawBatch::mutate`], driven by a caller's source of choices (a seeded RNG in tests,
//! the fuzzer's bytes in `cargo fuzz`).
//!
//! Invariant: every lie [`RawBatch::mutate`] tells is one the oracle can judge
//! exactly: a lying length is past the end of its record or below -1, an over-long
//! varint is over five bytes, a changed record length always leaves the record's fields
//! short or followed by extra bytes. Never used on the data path.

use crate::batch::{
    put_varint, BatchHeader, ATTR_CONTROL, ATTR_TIMESTAMP_LOG_APPEND, ATTR_TRANSACTIONAL, BATCH_HEADER_BYTES,
    BATCH_LOG_OVERHEAD_BYTES, CRC_START_BYTES, MAGIC_V2,
};
use bytes::{BufMut, BytesMut};
use zerocopy::byteorder::big_endian::{I16, I32, I64, U32};
use zerocopy::IntoBytes;

/// A source of choices: `choose(n)` returns a value in `0..n` (`n > 0`).
pub type Choose<'a> = &'a mut dyn FnMut(u64) -> u64;

/// A key, value or header field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Length -1.
    Null,
    /// Honest length and bytes.
    Bytes(Vec<u8>),
    /// The bytes, behind a length that lies: below -1, or far past the record's end.
    Lying(i64, Vec<u8>),
}

/// One record, any field of which may lie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    /// The record's attributes byte (unused by v2; any value is legal).
    pub attributes: u8,
    /// Timestamp delta from the batch's base timestamp.
    pub timestamp_delta: i64,
    /// Offset delta; honest when equal to the record's index.
    pub offset_delta: i64,
    /// Key.
    pub key: Field,
    /// Value.
    pub value: Field,
    /// Headers (a key must be present and UTF-8).
    pub headers: Vec<(Field, Field)>,
    /// Added to the record's length prefix (honest: 0).
    pub length_adjust: i64,
    /// Encode the offset delta as an over-long varint of this many bytes (> 5).
    pub overlong_offset_delta: Option<usize>,
    /// Extra bytes inside the record after its headers, counted in its length.
    pub trailing: Vec<u8>,
}

/// A batch built field by field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawBatch {
    /// Batch attributes (codec, timestamp type, transactional, control).
    pub attributes: i16,
    /// Base timestamp.
    pub base_timestamp: i64,
    /// Declared largest timestamp.
    pub max_timestamp: i64,
    /// Declared record count.
    pub record_count: i32,
    /// Declared last offset delta.
    pub last_offset_delta: i32,
    /// The records present.
    pub records: Vec<RawRecord>,
    /// Bytes after the last record.
    pub trailing: Vec<u8>,
}

/// A zigzag varint padded with continuation bytes to `width` bytes.
fn put_overlong_varint(out: &mut BytesMut, value: i64, width: usize) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    for _ in 0..width - 1 {
        out.put_u8((raw as u8 & 0x7f) | 0x80);
        raw >>= 7;
    }
    out.put_u8(raw as u8 & 0x7f);
}

fn put_field(out: &mut BytesMut, field: &Field) {
    match field {
        Field::Null => put_varint(out, -1),
        Field::Bytes(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.put_slice(bytes);
        }
        Field::Lying(len, bytes) => {
            put_varint(out, *len);
            out.put_slice(bytes);
        }
    }
}

impl RawRecord {
    fn encode(&self, out: &mut BytesMut) {
        let mut body = BytesMut::new();
        body.put_u8(self.attributes);
        put_varint(&mut body, self.timestamp_delta);
        match self.overlong_offset_delta {
            Some(width) => put_overlong_varint(&mut body, self.offset_delta, width),
            None => put_varint(&mut body, self.offset_delta),
        }
        put_field(&mut body, &self.key);
        put_field(&mut body, &self.value);
        put_varint(&mut body, self.headers.len() as i64);
        for (key, value) in &self.headers {
            put_field(&mut body, key);
            put_field(&mut body, value);
        }
        body.put_slice(&self.trailing);
        put_varint(out, body.len() as i64 + self.length_adjust);
        out.put_slice(&body);
    }

    fn is_valid(&self, index: usize) -> bool {
        let honest = |field: &Field| !matches!(field, Field::Lying(..));
        self.length_adjust == 0
            && self.overlong_offset_delta.is_none()
            && self.trailing.is_empty()
            && self.offset_delta == index as i64
            && honest(&self.key)
            && honest(&self.value)
            && self.headers.iter().all(|(key, value)| {
                honest(value) && matches!(key, Field::Bytes(key) if std::str::from_utf8(key).is_ok())
            })
    }
}

impl RawBatch {
    /// The frame: header with a correct `batch_length` and CRC32C, then the records.
    pub fn encode(&self) -> BytesMut {
        let mut out = BytesMut::with_capacity(256);
        out.put_bytes(0, BATCH_HEADER_BYTES);
        for record in &self.records {
            record.encode(&mut out);
        }
        out.put_slice(&self.trailing);
        let header = BatchHeader {
            base_offset: I64::new(0),
            batch_length: I32::new((out.len() - BATCH_LOG_OVERHEAD_BYTES) as i32),
            partition_leader_epoch: I32::new(-1),
            magic: MAGIC_V2,
            crc: U32::new(0),
            attributes: I16::new(self.attributes),
            last_offset_delta: I32::new(self.last_offset_delta),
            base_timestamp: I64::new(self.base_timestamp),
            max_timestamp: I64::new(self.max_timestamp),
            producer_id: I64::new(-1),
            producer_epoch: I16::new(-1),
            base_sequence: I32::new(-1),
            record_count: I32::new(self.record_count),
        };
        out[..BATCH_HEADER_BYTES].copy_from_slice(header.as_bytes());
        let crc = crc32c::crc32c(&out[CRC_START_BYTES..]);
        out[17..21].copy_from_slice(&crc.to_be_bytes());
        out
    }

    /// What Kafka's rules say of this structure (the oracle): true when a broker must
    /// accept it.
    pub fn is_valid(&self) -> bool {
        let count = self.records.len();
        let codec = self.attributes & 0x07;
        let bits_ok = self.attributes & (ATTR_CONTROL | ATTR_TRANSACTIONAL) == 0 && codec == 0;
        let count_ok = self.record_count > 0
            && self.record_count as usize == count
            && i64::from(self.last_offset_delta) == i64::from(self.record_count) - 1;
        let timestamps: Option<Vec<i64>> =
            self.records.iter().map(|r| self.base_timestamp.checked_add(r.timestamp_delta)).collect();
        let time_ok = timestamps.is_some_and(|ts| {
            self.attributes & ATTR_TIMESTAMP_LOG_APPEND != 0 || ts.iter().max() == Some(&self.max_timestamp)
        });
        bits_ok
            && count_ok
            && time_ok
            && self.trailing.is_empty()
            && self.records.iter().enumerate().all(|(i, r)| r.is_valid(i))
    }

    /// An honest batch of 1..=8 records with random keys, values and headers.
    pub fn generate(choose: Choose<'_>) -> Self {
        let count = 1 + choose(8) as usize;
        let base_timestamp = 1_700_000_000_000 + choose(1 << 20) as i64;
        let bytes = |choose: Choose<'_>, max: u64| -> Vec<u8> {
            let len = choose(max + 1) as usize;
            (0..len).map(|_| b'a' + choose(26) as u8).collect()
        };
        let records: Vec<RawRecord> = (0..count)
            .map(|index| {
                let key = if choose(4) == 0 { Field::Null } else { Field::Bytes(bytes(choose, 12)) };
                let value = if choose(8) == 0 { Field::Null } else { Field::Bytes(bytes(choose, 40)) };
                let headers = (0..choose(3))
                    .map(|_| {
                        let value = if choose(3) == 0 { Field::Null } else { Field::Bytes(bytes(choose, 6)) };
                        (Field::Bytes(bytes(choose, 6)), value)
                    })
                    .collect();
                RawRecord {
                    attributes: 0,
                    timestamp_delta: choose(5000) as i64,
                    offset_delta: index as i64,
                    key,
                    value,
                    headers,
                    length_adjust: 0,
                    overlong_offset_delta: None,
                    trailing: Vec::new(),
                }
            })
            .collect();
        let max_timestamp =
            records.iter().map(|r| base_timestamp + r.timestamp_delta).max().expect("count >= 1");
        RawBatch {
            attributes: 0,
            base_timestamp,
            max_timestamp,
            record_count: count as i32,
            last_offset_delta: count as i32 - 1,
            records,
            trailing: Vec::new(),
        }
    }

    /// Tells one lie (or one legal oddity) about some field; returns its name.
    pub fn mutate(&mut self, choose: Choose<'_>) -> &'static str {
        const COUNTS: [i32; 6] = [0, -1, 1, 2, i32::MAX, i32::MIN];
        let index = choose(self.records.len() as u64) as usize;
        match choose(20) {
            0 => {
                self.record_count = COUNTS[choose(COUNTS.len() as u64) as usize];
                "record_count"
            }
            1 => {
                // Both count fields lie together (what got i32::MAX past the old check).
                let count = [self.record_count + 1, self.record_count - 1, i32::MAX][choose(3) as usize];
                self.record_count = count;
                self.last_offset_delta = count.wrapping_sub(1);
                "record_count and last_offset_delta"
            }
            2 => {
                self.last_offset_delta = [self.last_offset_delta + 1, -1, i32::MAX][choose(3) as usize];
                "last_offset_delta"
            }
            3 => {
                self.records[index].offset_delta =
                    [2_000_000_000, -1, index as i64 + 1, 0][choose(4) as usize];
                "offset_delta"
            }
            4 => {
                if self.records.len() > 1 {
                    self.records.swap(0, index.max(1));
                }
                "records reordered (decreasing deltas)"
            }
            5 => {
                self.records[index].length_adjust =
                    [-1, 1, -1000, 1000, i64::from(i32::MAX)][choose(5) as usize];
                "record length"
            }
            6 => {
                let len = [-2, -1000, 1 << 30][choose(3) as usize];
                self.records[index].key = Field::Lying(len, b"kk".to_vec());
                "key length"
            }
            7 => {
                let len = [-5, 1 << 24][choose(2) as usize];
                self.records[index].value = Field::Lying(len, b"vvv".to_vec());
                "value length"
            }
            8 => {
                let key =
                    [vec![0xff, 0xfe], vec![b'a', 0xc3], vec![0xed, 0xa0, 0x80]][choose(3) as usize].clone();
                self.records[index].headers.push((Field::Bytes(key), Field::Null));
                "header key not UTF-8"
            }
            9 => {
                self.records[index].headers.push((Field::Null, Field::Bytes(b"v".to_vec())));
                "null header key"
            }
            10 => {
                self.records[index].overlong_offset_delta = Some(6 + choose(4) as usize);
                "over-long varint"
            }
            11 => {
                self.records[index].trailing = vec![0; 1 + choose(3) as usize];
                "bytes after a record's headers"
            }
            12 => {
                self.trailing = vec![choose(256) as u8; 1 + choose(8) as usize];
                "bytes after the last record"
            }
            13 => {
                let removed = self.records.remove(index);
                if self.records.is_empty() {
                    self.records.push(removed);
                    self.records.push(self.records[0].clone());
                }
                "a record missing"
            }
            14 => {
                self.max_timestamp += [1, -1, i64::MAX / 2][choose(3) as usize];
                "max_timestamp"
            }
            15 => {
                self.records[index].timestamp_delta = [i64::MAX, i64::MIN, -1][choose(3) as usize];
                "timestamp delta"
            }
            16 => {
                self.attributes |= [ATTR_CONTROL, ATTR_TRANSACTIONAL, 5, 6, 7][choose(5) as usize];
                "attribute bits"
            }
            17 => {
                self.records[index].attributes = choose(256) as u8;
                "record attributes (legal)"
            }
            18 => {
                self.attributes |= ATTR_TIMESTAMP_LOG_APPEND;
                self.max_timestamp = choose(1 << 40) as i64;
                "log-append time with any max_timestamp (legal)"
            }
            _ => {
                let copy = self.records[index].clone();
                self.records.push(copy);
                "a record duplicated"
            }
        }
    }
}

/// One honest batch of `records` (key, value), the i-th at `timestamp + i`, encoded by
/// `kafka-protocol` (an encoder corelog did not write) with `compression`: what real
/// clients send, compressed or not, for tests beside the lies.
pub fn kafka_encoded(
    compression: kafka_protocol::records::Compression,
    timestamp: i64,
    records: Vec<(Option<bytes::Bytes>, Option<bytes::Bytes>)>,
) -> BytesMut {
    use kafka_protocol::records::{Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType};
    let records: Vec<Record> = records
        .into_iter()
        .enumerate()
        .map(|(i, (key, value))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // kafka-protocol starts a new batch where sequences do not follow.
            sequence: i as i32 - 1,
            timestamp: timestamp + i as i64,
            key,
            value,
            headers: Default::default(),
        })
        .collect();
    let mut encoded = BytesMut::new();
    RecordBatchEncoder::encode(&mut encoded, &records, &RecordEncodeOptions { version: 2, compression })
        .expect("kafka-protocol encodes plain records");
    encoded
}
