//! Kafka RecordBatch v2: a zero-copy view, validation, base-offset assignment, and a
//! small encoder for uncompressed batches.
//!
//! This module owns the *byte format* of everything corelog stores: a segment file is a
//! plain concatenation of RecordBatch v2 frames exactly as Kafka writes them, so a Fetch
//! returns file bytes unchanged. The layout (all integers big-endian):
//!
//! | bytes   | field                  | covered by CRC |
//! |---------|------------------------|----------------|
//! | 0..8    | base_offset i64        | no  |
//! | 8..12   | batch_length i32 (bytes after this field) | no |
//! | 12..16  | partition_leader_epoch i32 | no |
//! | 16      | magic i8 = 2           | no  |
//! | 17..21  | crc u32 (CRC32C)       | no  |
//! | 21..23  | attributes i16         | yes |
//! | 23..27  | last_offset_delta i32  | yes |
//! | 27..35  | base_timestamp i64     | yes |
//! | 35..43  | max_timestamp i64      | yes |
//! | 43..51  | producer_id i64        | yes |
//! | 51..53  | producer_epoch i16     | yes |
//! | 53..57  | base_sequence i32      | yes |
//! | 57..61  | record_count i32       | yes |
//! | 61..    | records (possibly compressed) | yes |
//!
//! Invariants: a [`BatchView`] only exists for bytes whose length, magic, CRC and
//! record count have been checked; bad input is a [`BatchError`], never a panic.
//! Compressed batches pass through untouched (the CRC covers the compressed bytes).

use bytes::{BufMut, BytesMut};
use zerocopy::byteorder::big_endian::{I16, I32, I64, U32};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the fixed RecordBatch v2 header in bytes.
pub const BATCH_HEADER_BYTES: usize = 61;
/// Bytes before `batch_length`'s covered region: base_offset (8) + batch_length (4).
pub const BATCH_LOG_OVERHEAD_BYTES: usize = 12;
/// Offset of the first CRC-covered byte (attributes).
pub const CRC_START_BYTES: usize = 21;
/// The only record-batch magic corelog stores.
pub const MAGIC_V2: i8 = 2;
/// Largest batch the format layer accepts at all; tighter limits are configuration.
pub const BATCH_BYTES_MAX: usize = 1 << 30;
/// The partition leader epoch the engine stamps on every stored batch (one leader, epoch 0).
pub const LEADER_EPOCH: i32 = 0;

const _: () = assert!(BATCH_HEADER_BYTES == std::mem::size_of::<BatchHeader>());
const _: () = assert!(CRC_START_BYTES < BATCH_HEADER_BYTES);

/// Mask of the compression codec bits in `attributes`.
pub const ATTR_COMPRESSION_MASK: i16 = 0x07;
/// `attributes` bit: timestamps are log-append time.
pub const ATTR_TIMESTAMP_LOG_APPEND: i16 = 0x08;
/// `attributes` bit: transactional batch.
pub const ATTR_TRANSACTIONAL: i16 = 0x10;
/// `attributes` bit: control batch.
pub const ATTR_CONTROL: i16 = 0x20;

/// The fixed 61-byte header of a RecordBatch v2, read in place.
#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Debug)]
#[repr(C)]
pub struct BatchHeader {
    /// Offset of the first record.
    pub base_offset: I64,
    /// Length of the batch after this field.
    pub batch_length: I32,
    /// Leader epoch of the partition when appended.
    pub partition_leader_epoch: I32,
    /// Format version, 2.
    pub magic: i8,
    /// CRC32C of bytes `attributes..end`.
    pub crc: U32,
    /// Compression codec, timestamp type, transactional and control bits.
    pub attributes: I16,
    /// Offset of the last record relative to `base_offset`.
    pub last_offset_delta: I32,
    /// Timestamp of the first record.
    pub base_timestamp: I64,
    /// Largest timestamp in the batch.
    pub max_timestamp: I64,
    /// Idempotent producer id, or -1.
    pub producer_id: I64,
    /// Idempotent producer epoch, or -1.
    pub producer_epoch: I16,
    /// Sequence number of the first record, or -1.
    pub base_sequence: I32,
    /// Number of records.
    pub record_count: I32,
}

/// Why bytes are not a valid RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// Fewer bytes than a header, or than `batch_length` declares.
    #[error("truncated batch: need {needed} bytes, have {available}")]
    Truncated {
        /// Bytes the header says the batch occupies.
        needed: usize,
        /// Bytes available.
        available: usize,
    },
    /// `batch_length` is smaller than a header or larger than [`BATCH_BYTES_MAX`].
    #[error("invalid batch length {0}")]
    InvalidLength(i32),
    /// The magic byte is not 2.
    #[error("unsupported magic {0} (only RecordBatch v2 is stored)")]
    UnsupportedMagic(i8),
    /// The stored CRC does not match the bytes.
    #[error("crc mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch {
        /// CRC in the header.
        stored: u32,
        /// CRC of the bytes.
        computed: u32,
    },
    /// `record_count` is not positive or disagrees with `last_offset_delta`.
    #[error("invalid record count {record_count} with last offset delta {last_offset_delta}")]
    InvalidRecordCount {
        /// Declared record count.
        record_count: i32,
        /// Declared last offset delta.
        last_offset_delta: i32,
    },
    /// A record inside an uncompressed batch does not decode.
    #[error("malformed record {index}: {reason}")]
    MalformedRecord {
        /// Index of the record in the batch.
        index: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The records decode but break a rule of the format (Kafka's `INVALID_RECORD`):
    /// count, offset deltas, timestamps, header keys, control or transactional bits.
    #[error("invalid record {index}: {reason}")]
    InvalidRecord {
        /// Index of the record in the batch (the record count for batch-wide rules).
        index: usize,
        /// What was wrong.
        reason: &'static str,
    },
    /// The compression codec id is not one Kafka defines (0..=4).
    #[error("unsupported compression codec {0}")]
    UnsupportedCompression(i16),
}

impl BatchError {
    /// True for errors about the records inside a well-framed, CRC-valid batch (Kafka
    /// answers these with `INVALID_RECORD` rather than `CORRUPT_MESSAGE`).
    pub fn is_invalid_record(&self) -> bool {
        matches!(self, BatchError::InvalidRecord { .. } | BatchError::MalformedRecord { .. })
    }
}

/// Reads the total length of the batch starting at `bytes` from its header, without
/// checking anything else. Returns `None` when fewer than 12 bytes are available.
pub fn frame_len(bytes: &[u8]) -> Option<Result<usize, BatchError>> {
    let length_bytes: [u8; 4] = bytes.get(8..12)?.try_into().ok()?;
    let batch_length = i32::from_be_bytes(length_bytes);
    let min = (BATCH_HEADER_BYTES - BATCH_LOG_OVERHEAD_BYTES) as i32;
    if batch_length < min || batch_length as usize > BATCH_BYTES_MAX {
        return Some(Err(BatchError::InvalidLength(batch_length)));
    }
    Some(Ok(batch_length as usize + BATCH_LOG_OVERHEAD_BYTES))
}

/// A validated RecordBatch v2, borrowed.
#[derive(Debug, Clone, Copy)]
pub struct BatchView<'a> {
    header: &'a BatchHeader,
    bytes: &'a [u8],
}

impl<'a> BatchView<'a> {
    /// Validates the batch at the start of `bytes` (length, magic, CRC, record count)
    /// and returns a view of exactly its bytes. Trailing bytes are ignored.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, BatchError> {
        let len = match frame_len(bytes) {
            None => return Err(BatchError::Truncated { needed: BATCH_HEADER_BYTES, available: bytes.len() }),
            Some(len) => len?,
        };
        if bytes.len() < len {
            return Err(BatchError::Truncated { needed: len, available: bytes.len() });
        }
        let bytes = &bytes[..len];
        let (header, _) = BatchHeader::ref_from_prefix(bytes)
            .map_err(|_| BatchError::Truncated { needed: BATCH_HEADER_BYTES, available: bytes.len() })?;
        if header.magic != MAGIC_V2 {
            return Err(BatchError::UnsupportedMagic(header.magic));
        }
        let computed = crc32c::crc32c(&bytes[CRC_START_BYTES..]);
        if computed != header.crc.get() {
            return Err(BatchError::CrcMismatch { stored: header.crc.get(), computed });
        }
        let record_count = header.record_count.get();
        let last_offset_delta = header.last_offset_delta.get();
        if record_count <= 0 || last_offset_delta != record_count - 1 {
            return Err(BatchError::InvalidRecordCount { record_count, last_offset_delta });
        }
        Ok(Self { header, bytes })
    }

    /// The header, read in place.
    pub fn header(&self) -> &'a BatchHeader {
        self.header
    }
    /// All bytes of the batch.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
    /// Total size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Always false: a valid batch has a header.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Offset of the first record.
    pub fn base_offset(&self) -> i64 {
        self.header.base_offset.get()
    }
    /// Offset of the last record.
    pub fn last_offset(&self) -> i64 {
        self.base_offset() + i64::from(self.header.last_offset_delta.get())
    }
    /// Offset after the last record.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    /// Number of records.
    pub fn record_count(&self) -> u32 {
        self.header.record_count.get() as u32
    }
    /// Largest timestamp in the batch.
    pub fn max_timestamp(&self) -> i64 {
        self.header.max_timestamp.get()
    }
    /// Timestamp of the first record.
    pub fn base_timestamp(&self) -> i64 {
        self.header.base_timestamp.get()
    }
    /// Stored CRC.
    pub fn crc(&self) -> u32 {
        self.header.crc.get()
    }
    /// Compression codec id (0 none, 1 gzip, 2 snappy, 3 lz4, 4 zstd).
    pub fn compression(&self) -> i16 {
        self.header.attributes.get() & ATTR_COMPRESSION_MASK
    }
    /// Producer id (-1 when not idempotent).
    pub fn producer_id(&self) -> i64 {
        self.header.producer_id.get()
    }
    /// Decodes the records of an uncompressed batch. Compressed batches yield an error.
    pub fn records(&self) -> Result<Vec<Record<'a>>, BatchError> {
        if self.compression() != 0 {
            return Err(BatchError::MalformedRecord {
                index: 0,
                reason: "compressed batch: records are not decoded by the engine",
            });
        }
        let count = self.record_count() as usize;
        let mut records = Vec::with_capacity(count.min(1 << 16));
        let mut rest = &self.bytes[BATCH_HEADER_BYTES..];
        for index in 0..count {
            let (record, tail) = Record::decode(rest, self.base_offset(), self.base_timestamp())
                .map_err(|reason| BatchError::MalformedRecord { index, reason })?;
            records.push(record);
            rest = tail;
        }
        if !rest.is_empty() {
            return Err(BatchError::MalformedRecord {
                index: count,
                reason: "trailing bytes after the last record",
            });
        }
        Ok(records)
    }
}

/// Largest number of bytes a compressed batch may decompress to when it is checked
/// ([`validate_records`]): a decompression bomb is refused once its output passes this,
/// before more memory is taken.
pub const DECOMPRESSED_BATCH_BYTES_MAX: usize = 64 << 20;

/// Checks the records of a CRC-valid batch the way Kafka's `LogValidator` does before
/// anything is acknowledged:
///
/// * the codec is one Kafka defines, and the batch is neither a control batch nor
///   transactional (clients may not write control records; corelog has no
///   transactions);
/// * the records present are exactly `record_count`, each framed by its length varint
///   with nothing left over, every varint in range (32-bit where Kafka's are, 64-bit
///   for the timestamp delta), key and value lengths `-1` or within the record;
/// * offset deltas are exactly `0..n-1` (so `last_offset_delta = n-1`, checked by
///   [`BatchView::parse`]);
/// * every timestamp is `base_timestamp + delta` without overflow, and for create-time
///   batches the largest of them is the header's `max_timestamp`;
/// * header counts are non-negative, header keys are present and valid UTF-8.
///
/// Uncompressed records are checked in place with no allocation. A compressed batch is
/// decompressed into a buffer of at most [`DECOMPRESSED_BATCH_BYTES_MAX`] bytes and its
/// records are checked the same way (see `docs/ENGINE.md`, "Validation", for why and
/// what it costs).
pub fn validate_records(view: &BatchView<'_>) -> Result<(), BatchError> {
    let attributes = view.header.attributes.get();
    let invalid = |index, reason| BatchError::InvalidRecord { index, reason };
    if attributes & ATTR_CONTROL != 0 {
        return Err(invalid(0, "clients may not write control batches"));
    }
    if attributes & ATTR_TRANSACTIONAL != 0 {
        return Err(invalid(0, "transactional batches are not supported"));
    }
    let codec = view.compression();
    let records = &view.bytes[BATCH_HEADER_BYTES..];
    let decompressed;
    let records: &[u8] = match codec {
        0 => records,
        1..=4 => {
            decompressed = decompress_bounded(codec, records, DECOMPRESSED_BATCH_BYTES_MAX)?;
            &decompressed
        }
        other => return Err(BatchError::UnsupportedCompression(other)),
    };
    let count = view.record_count() as usize;
    let base_timestamp = view.base_timestamp();
    let mut max_timestamp = i64::MIN;
    let mut rest = records;
    for index in 0..count {
        if rest.is_empty() {
            return Err(invalid(index, "fewer records than the record count"));
        }
        let malformed = |reason| BatchError::MalformedRecord { index, reason };
        let (body, tail) = split_record(rest).map_err(malformed)?;
        let (timestamp_delta, offset_delta) = check_record_body(body).map_err(malformed)?;
        if offset_delta != index as i64 {
            return Err(invalid(index, "offset delta is not the record's index"));
        }
        let timestamp =
            base_timestamp.checked_add(timestamp_delta).ok_or(invalid(index, "timestamp overflows"))?;
        max_timestamp = max_timestamp.max(timestamp);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(invalid(count, "more records than the record count"));
    }
    if attributes & ATTR_TIMESTAMP_LOG_APPEND == 0 && max_timestamp != view.max_timestamp() {
        return Err(invalid(count, "max_timestamp is not the largest record timestamp"));
    }
    Ok(())
}

/// Splits the record at the start of `bytes` into its body and what follows.
fn split_record(bytes: &[u8]) -> Result<(&[u8], &[u8]), &'static str> {
    let (len, rest) = read_varint32(bytes)?;
    let len = usize::try_from(len).map_err(|_| "negative record length")?;
    if len == 0 {
        return Err("empty record");
    }
    if rest.len() < len {
        return Err("record longer than the batch");
    }
    Ok(rest.split_at(len))
}

/// Walks one record body in place; returns its timestamp and offset deltas.
fn check_record_body(body: &[u8]) -> Result<(i64, i64), &'static str> {
    let body = &body[1..]; // attributes (unused by v2, any value is accepted like Kafka)
    let (timestamp_delta, body) = read_varint(body)?;
    let (offset_delta, body) = read_varint32(body)?;
    let (_key, body) = read_bytes32(body)?;
    let (_value, body) = read_bytes32(body)?;
    let (header_count, mut body) = read_varint32(body)?;
    if header_count < 0 {
        return Err("negative header count");
    }
    for _ in 0..header_count {
        let (key, rest) = read_bytes32(body)?;
        let key = key.ok_or("null header key")?;
        std::str::from_utf8(key).map_err(|_| "header key is not UTF-8")?;
        let (_value, rest) = read_bytes32(rest)?;
        body = rest;
    }
    if !body.is_empty() {
        return Err("trailing bytes inside a record");
    }
    Ok((timestamp_delta, offset_delta))
}

/// A zigzag varint that must fit 32 bits (Kafka's `varint`, at most 5 bytes).
fn read_varint32(bytes: &[u8]) -> Result<(i64, &[u8]), &'static str> {
    let (value, rest) = read_varint(bytes)?;
    if bytes.len() - rest.len() > 5 || i32::try_from(value).is_err() {
        return Err("varint out of 32-bit range");
    }
    Ok((value, rest))
}

/// A length-prefixed field whose length is `-1` (null) or fits the rest.
fn read_bytes32(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), &'static str> {
    let (len, rest) = read_varint32(bytes)?;
    match len {
        -1 => Ok((None, rest)),
        len if len < -1 => Err("negative length"),
        len if rest.len() < len as usize => Err("field longer than the record"),
        len => Ok((Some(&rest[..len as usize]), &rest[len as usize..])),
    }
}

/// Decompresses `bytes` with Kafka codec `codec` (1 gzip, 2 snappy in Kafka's xerial
/// framing or raw, 3 lz4 frame, 4 zstd), refusing output beyond `limit` bytes.
pub fn decompress_bounded(codec: i16, bytes: &[u8], limit: usize) -> Result<Vec<u8>, BatchError> {
    use std::io::Read;
    let corrupt = |reason| BatchError::MalformedRecord { index: 0, reason };
    let too_large = corrupt("records decompress to more than the limit");
    let mut out = Vec::new();
    let read = |reader: &mut dyn Read, out: &mut Vec<u8>| -> Result<(), BatchError> {
        reader.take(limit as u64 + 1).read_to_end(out).map_err(|_| BatchError::MalformedRecord {
            index: 0,
            reason: "compressed records do not decode",
        })?;
        Ok(())
    };
    match codec {
        // Java's GZIPInputStream reads concatenated members; so does this.
        1 => read(&mut flate2::read::MultiGzDecoder::new(bytes), &mut out)?,
        3 => {
            let mut decoder = lz4::Decoder::new(bytes).map_err(|_| corrupt("bad lz4 frame"))?;
            read(&mut decoder, &mut out)?
        }
        4 => {
            let mut decoder =
                zstd::stream::read::Decoder::new(bytes).map_err(|_| corrupt("bad zstd frame"))?;
            read(&mut decoder, &mut out)?
        }
        2 => snappy_bounded(bytes, limit, &mut out)?,
        other => return Err(BatchError::UnsupportedCompression(other)),
    }
    if out.len() > limit {
        return Err(too_large);
    }
    Ok(out)
}

/// Snappy as Kafka clients write it: xerial framing (`\x82SNAPPY\0`, two version words,
/// then blocks of a big-endian u32 length and a raw snappy block), or one raw block.
/// Every block's decompressed length is read before it is decompressed.
fn snappy_bounded(bytes: &[u8], limit: usize, out: &mut Vec<u8>) -> Result<(), BatchError> {
    const XERIAL: &[u8] = b"\x82SNAPPY\0";
    let corrupt = |reason| BatchError::MalformedRecord { index: 0, reason };
    let block = |raw: &[u8], out: &mut Vec<u8>| -> Result<(), BatchError> {
        let len = snap::raw::decompress_len(raw).map_err(|_| corrupt("bad snappy block"))?;
        if out.len() + len > limit {
            return Err(corrupt("records decompress to more than the limit"));
        }
        let start = out.len();
        out.resize(start + len, 0);
        snap::raw::Decoder::new()
            .decompress(raw, &mut out[start..])
            .map_err(|_| corrupt("bad snappy block"))?;
        Ok(())
    };
    let Some(mut rest) = bytes.strip_prefix(XERIAL) else { return block(bytes, out) };
    rest = rest.get(8..).ok_or(corrupt("xerial snappy header cut"))?;
    while !rest.is_empty() {
        let len = rest.get(..4).ok_or(corrupt("xerial snappy block length cut"))?;
        let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
        let raw = rest.get(4..4 + len).ok_or(corrupt("xerial snappy block cut"))?;
        block(raw, out)?;
        rest = &rest[4 + len..];
    }
    Ok(())
}

/// Calls `f(offset, timestamp, key, value)` for every record of one validated batch:
/// in place for an uncompressed batch, after decompressing (gzip, snappy, lz4, zstd,
/// through `kafka-protocol`) otherwise. Control records are skipped.
pub fn for_each_record(
    view: &BatchView<'_>,
    mut f: impl FnMut(i64, i64, Option<&[u8]>, Option<&[u8]>),
) -> Result<(), BatchError> {
    if view.compression() == 0 {
        for record in view.records()? {
            f(record.offset, record.timestamp, record.key, record.value);
        }
        return Ok(());
    }
    let mut bytes = bytes::Bytes::copy_from_slice(view.bytes());
    let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut bytes)
        .map_err(|_| BatchError::MalformedRecord { index: 0, reason: "compressed records do not decode" })?;
    for record in set.records.iter().filter(|r| !r.control) {
        f(record.offset, record.timestamp, record.key.as_deref(), record.value.as_deref());
    }
    Ok(())
}

/// Producer id, epoch, base sequence and record count read from a header in place,
/// without validating the batch (the append validates it).
pub fn producer_fields(bytes: &[u8]) -> Option<(i64, i16, i32, i32)> {
    let (header, _) = BatchHeader::ref_from_prefix(bytes).ok()?;
    Some((
        header.producer_id.get(),
        header.producer_epoch.get(),
        header.base_sequence.get(),
        header.record_count.get(),
    ))
}

/// Stamps `base_offset` (and the leader epoch) into the batch in place. The CRC does
/// not cover these fields, so it stays valid.
pub fn assign_base_offset(bytes: &mut [u8], base_offset: i64) {
    assert!(bytes.len() >= BATCH_HEADER_BYTES, "batch was validated first");
    assert!(base_offset >= 0, "offsets are non-negative");
    let (header, _) = BatchHeader::mut_from_prefix(bytes).expect("length checked above");
    header.base_offset = I64::new(base_offset);
    header.partition_leader_epoch = I32::new(LEADER_EPOCH);
}

/// One record of an uncompressed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record<'a> {
    /// Absolute offset.
    pub offset: i64,
    /// Absolute timestamp (ms).
    pub timestamp: i64,
    /// Key, if any.
    pub key: Option<&'a [u8]>,
    /// Value, if any.
    pub value: Option<&'a [u8]>,
    /// Headers (key, value).
    pub headers: Vec<(&'a [u8], Option<&'a [u8]>)>,
}

fn read_varint(bytes: &[u8]) -> Result<(i64, &[u8]), &'static str> {
    let mut raw: u64 = 0;
    for (i, byte) in bytes.iter().enumerate().take(10) {
        raw |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            let value = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Ok((value, &bytes[i + 1..]));
        }
    }
    Err("varint too long or truncated")
}

fn read_bytes(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), &'static str> {
    let (len, rest) = read_varint(bytes)?;
    if len < 0 {
        return Ok((None, rest));
    }
    let len = usize::try_from(len).map_err(|_| "length out of range")?;
    if rest.len() < len {
        return Err("field longer than the record");
    }
    Ok((Some(&rest[..len]), &rest[len..]))
}

impl<'a> Record<'a> {
    fn decode(
        bytes: &'a [u8],
        base_offset: i64,
        base_timestamp: i64,
    ) -> Result<(Self, &'a [u8]), &'static str> {
        let (len, rest) = read_varint(bytes)?;
        let len = usize::try_from(len).map_err(|_| "negative record length")?;
        if rest.len() < len {
            return Err("record longer than the batch");
        }
        let (body, tail) = rest.split_at(len);
        let body = body.get(1..).ok_or("empty record")?; // attributes (unused)
        let (timestamp_delta, body) = read_varint(body)?;
        let (offset_delta, body) = read_varint(body)?;
        let (key, body) = read_bytes(body)?;
        let (value, body) = read_bytes(body)?;
        let (header_count, mut body) = read_varint(body)?;
        if !(0..=i64::from(u16::MAX)).contains(&header_count) {
            return Err("header count out of range");
        }
        let mut headers = Vec::with_capacity(header_count as usize);
        for _ in 0..header_count {
            let (header_key, rest) = read_bytes(body)?;
            let (header_value, rest) = read_bytes(rest)?;
            headers.push((header_key.ok_or("null header key")?, header_value));
            body = rest;
        }
        if !body.is_empty() {
            return Err("trailing bytes inside a record");
        }
        let record = Record {
            offset: base_offset + offset_delta,
            timestamp: base_timestamp + timestamp_delta,
            key,
            value,
            headers,
        };
        Ok((record, tail))
    }
}

/// Appends `value` as a zigzag varint (Kafka's encoding of record fields).
pub(crate) fn put_varint(out: &mut BytesMut, value: i64) {
    let mut raw = ((value << 1) ^ (value >> 63)) as u64;
    while raw >= 0x80 {
        out.put_u8((raw as u8) | 0x80);
        raw >>= 7;
    }
    out.put_u8(raw as u8);
}

fn varint_len(value: i64) -> usize {
    let raw = ((value << 1) ^ (value >> 63)) as u64;
    (64 - raw.leading_zeros() as usize).max(1).div_ceil(7)
}

fn put_bytes(out: &mut BytesMut, bytes: Option<&[u8]>) {
    match bytes {
        None => put_varint(out, -1),
        Some(bytes) => {
            put_varint(out, bytes.len() as i64);
            out.put_slice(bytes);
        }
    }
}

fn bytes_len(bytes: Option<&[u8]>) -> usize {
    match bytes {
        None => 1,
        Some(bytes) => varint_len(bytes.len() as i64) + bytes.len(),
    }
}

/// Encodes uncompressed RecordBatch v2 frames (the producer side: demo, gen, benches,
/// tests). Reuses its buffer: [`BatchBuilder::finish`] hands out the bytes and the
/// builder starts a new batch in the remaining capacity.
#[derive(Debug)]
pub struct BatchBuilder {
    buffer: BytesMut,
    base_timestamp: i64,
    max_timestamp: i64,
    record_count: i32,
    producer: (i64, i16, i32),
}

impl Default for BatchBuilder {
    fn default() -> Self {
        Self::with_capacity(16 * 1024)
    }
}

impl BatchBuilder {
    /// A builder whose buffer starts with `capacity_bytes`.
    pub fn with_capacity(capacity_bytes: usize) -> Self {
        Self::in_buffer(BytesMut::with_capacity(capacity_bytes.max(BATCH_HEADER_BYTES)))
    }

    fn reset(&mut self) {
        self.buffer.clear();
        self.buffer.put_bytes(0, BATCH_HEADER_BYTES);
        self.record_count = 0;
    }

    /// Sets the idempotent producer id, epoch and base sequence of the current batch.
    pub fn producer(&mut self, producer_id: i64, producer_epoch: i16, base_sequence: i32) {
        self.producer = (producer_id, producer_epoch, base_sequence);
    }

    /// Number of records in the current batch.
    pub fn record_count(&self) -> usize {
        self.record_count as usize
    }

    /// Bytes the batch would have if finished now.
    pub fn len_bytes(&self) -> usize {
        self.buffer.len()
    }

    /// Appends a record with headers.
    pub fn push_with_headers(
        &mut self,
        timestamp: i64,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[(&[u8], Option<&[u8]>)],
    ) {
        if self.record_count == 0 {
            self.base_timestamp = timestamp;
            self.max_timestamp = timestamp;
        }
        self.max_timestamp = self.max_timestamp.max(timestamp);
        let timestamp_delta = timestamp - self.base_timestamp;
        let offset_delta = i64::from(self.record_count);
        let body_len = 1
            + varint_len(timestamp_delta)
            + varint_len(offset_delta)
            + bytes_len(key)
            + bytes_len(value)
            + varint_len(headers.len() as i64)
            + headers.iter().map(|(k, v)| bytes_len(Some(k)) + bytes_len(*v)).sum::<usize>();
        put_varint(&mut self.buffer, body_len as i64);
        self.buffer.put_u8(0);
        put_varint(&mut self.buffer, timestamp_delta);
        put_varint(&mut self.buffer, offset_delta);
        put_bytes(&mut self.buffer, key);
        put_bytes(&mut self.buffer, value);
        put_varint(&mut self.buffer, headers.len() as i64);
        for (header_key, header_value) in headers {
            put_bytes(&mut self.buffer, Some(header_key));
            put_bytes(&mut self.buffer, *header_value);
        }
        self.record_count += 1;
    }

    /// Appends a record without headers.
    pub fn push(&mut self, timestamp: i64, key: Option<&[u8]>, value: Option<&[u8]>) {
        self.push_with_headers(timestamp, key, value, &[]);
    }

    /// A builder that builds in `buffer` (emptied first).
    pub fn in_buffer(buffer: BytesMut) -> Self {
        let mut builder =
            Self { buffer, base_timestamp: 0, max_timestamp: 0, record_count: 0, producer: (-1, -1, -1) };
        builder.reset();
        builder
    }

    /// [`BatchBuilder::finish`], handing over the whole buffer (the batch owns its
    /// allocation alone) and building on in `next`.
    pub fn finish_swap(&mut self, next: BytesMut) -> BytesMut {
        self.seal();
        let batch = std::mem::replace(&mut self.buffer, next);
        self.reset();
        batch
    }

    /// Writes the header and CRC and returns the finished batch (base offset 0).
    /// Panics if no record was pushed: an empty batch is not a valid frame.
    pub fn finish(&mut self) -> BytesMut {
        self.seal();
        let batch = self.buffer.split();
        self.reset();
        batch
    }

    /// Writes the header and CRC of the records pushed so far.
    fn seal(&mut self) {
        assert!(self.record_count > 0, "a batch holds at least one record");
        let batch_length = (self.buffer.len() - BATCH_LOG_OVERHEAD_BYTES) as i32;
        let (producer_id, producer_epoch, base_sequence) = self.producer;
        let header = BatchHeader {
            base_offset: I64::new(0),
            batch_length: I32::new(batch_length),
            partition_leader_epoch: I32::new(-1),
            magic: MAGIC_V2,
            crc: U32::new(0),
            attributes: I16::new(0),
            last_offset_delta: I32::new(self.record_count - 1),
            base_timestamp: I64::new(self.base_timestamp),
            max_timestamp: I64::new(self.max_timestamp),
            producer_id: I64::new(producer_id),
            producer_epoch: I16::new(producer_epoch),
            base_sequence: I32::new(base_sequence),
            record_count: I32::new(self.record_count),
        };
        self.buffer[..BATCH_HEADER_BYTES].copy_from_slice(header.as_bytes());
        let crc = crc32c::crc32c(&self.buffer[CRC_START_BYTES..]);
        self.buffer[17..21].copy_from_slice(&crc.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_finished_by_swapping_buffers_is_the_same_batch_in_the_whole_old_buffer() {
        let records: [(i64, &[u8], &[u8]); 3] = [(5, b"a", b"one"), (9, b"b", b"two"), (7, b"c", b"three")];
        let (mut split, mut swapped) =
            (BatchBuilder::default(), BatchBuilder::in_buffer(BytesMut::with_capacity(4096)));
        let mut bytes = Vec::new();
        for round in 0..2 {
            for (timestamp, key, value) in records {
                split.push(timestamp + round, Some(key), Some(value));
                swapped.push(timestamp + round, Some(key), Some(value));
            }
            let first = swapped.buffer.as_ptr();
            let batch = swapped.finish_swap(BytesMut::with_capacity(4096));
            assert_eq!(batch.as_ptr(), first, "the batch is the builder's old buffer");
            assert_eq!(batch, split.finish());
            BatchView::parse(&batch).expect("a valid batch");
            bytes.push(batch);
        }
        assert_ne!(bytes[0], bytes[1], "the second batch was built afresh");
    }

    #[test]
    fn varint_len_matches_encoding() {
        for value in [0i64, 1, -1, 63, 64, -64, -65, 300, i64::MAX, i64::MIN] {
            let mut out = BytesMut::new();
            put_varint(&mut out, value);
            assert_eq!(out.len(), varint_len(value), "value {value}");
            assert_eq!(read_varint(&out).unwrap().0, value);
        }
    }

    #[test]
    fn given_built_batch_when_parsed_then_records_round_trip() {
        let mut builder = BatchBuilder::default();
        builder.push(1000, Some(b"k1"), Some(b"v1"));
        builder.push_with_headers(1005, None, Some(b"v2"), &[(b"h", Some(b"x"))]);
        let mut batch = builder.finish();
        assign_base_offset(&mut batch, 42);
        let view = BatchView::parse(&batch).unwrap();
        assert_eq!(view.base_offset(), 42);
        assert_eq!(view.last_offset(), 43);
        assert_eq!(view.max_timestamp(), 1005);
        let records = view.records().unwrap();
        assert_eq!(records.len(), 2);
        assert_eq!(records[1].offset, 43);
        assert_eq!(records[1].timestamp, 1005);
        assert_eq!(records[1].key, None);
        assert_eq!(records[1].headers, vec![(&b"h"[..], Some(&b"x"[..]))]);
    }
}
