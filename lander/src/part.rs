//! One Parquet part file being built in memory: the rows of one partition that fall in
//! one event-time hour, between two commits.
//!
//! Layout (format version [`PART_FORMAT_VERSION`], in the file's key-value metadata as
//! `corelog.format`): `partition` int32, `offset` int64, `timestamp`
//! timestamp(ms, UTC) (the record's Kafka timestamp), `key` binary, `value` binary (raw
//! bytes as produced), `headers` list<struct<key: utf8, value: binary>>, then the
//! schema's typed columns (all nullable). zstd, page-level statistics, row groups cut at
//! [`ROW_GROUP_ROWS_MAX`] rows or [`ROW_GROUP_BYTES_MAX`] bytes.
//!
//! Invariants: rows are pushed in increasing offset order, so `first_offset` and
//! `last_offset` are the smallest and largest offsets in the file.

use crate::schema::{FieldType, TopicSchema, Value};
use crate::source::LandRecord;
use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder, ListBuilder,
    StringBuilder, StructBuilder, TimestampMillisecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use std::sync::Arc;

/// Version of the part-file column layout, stored as `corelog.format`.
pub const PART_FORMAT_VERSION: u32 = 1;
/// Rows per Parquet row group at most.
pub const ROW_GROUP_ROWS_MAX: usize = 1 << 20;
/// Bytes per Parquet row group (in memory, before compression) at most.
pub const ROW_GROUP_BYTES_MAX: usize = 128 << 20;
/// Rows buffered in Arrow builders before they are handed to the Parquet writer.
pub const BUILDER_ROWS_MAX: usize = 8192;
/// zstd level of the column chunks.
pub const ZSTD_LEVEL: i32 = 3;

const _: () = assert!(BUILDER_ROWS_MAX <= ROW_GROUP_ROWS_MAX);

fn headers_field() -> Arc<Field> {
    let entry = Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ]);
    Arc::new(Field::new("item", DataType::Struct(entry), false))
}

fn timestamp_type() -> DataType {
    DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()))
}

/// The Arrow schema of a topic's part files.
pub fn arrow_schema(schema: &TopicSchema) -> SchemaRef {
    let mut fields = vec![
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new("timestamp", timestamp_type(), false),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", DataType::List(headers_field()), false),
    ];
    for field in &schema.fields {
        let data_type = match field.field_type {
            FieldType::String => DataType::Utf8,
            FieldType::Int64 => DataType::Int64,
            FieldType::Float64 => DataType::Float64,
            FieldType::Bool => DataType::Boolean,
            FieldType::TimestampMs => timestamp_type(),
        };
        fields.push(Field::new(field.name.clone(), data_type, true));
    }
    Arc::new(Schema::new(fields))
}

/// Writer settings for a part file of `topic`/`partition`.
pub fn writer_properties(topic: &str, partition: u32) -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL).expect("valid zstd level")))
        .set_statistics_enabled(EnabledStatistics::Page)
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS_MAX))
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES_MAX))
        .set_created_by(format!("corelog lander {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(vec![
            KeyValue::new("corelog.format".into(), PART_FORMAT_VERSION.to_string()),
            KeyValue::new("corelog.topic".into(), topic.to_string()),
            KeyValue::new("corelog.partition".into(), partition.to_string()),
        ]))
        .build()
}

enum TypedBuilder {
    Str(StringBuilder),
    Int(Int64Builder),
    Float(Float64Builder),
    Bool(BooleanBuilder),
    Timestamp(TimestampMillisecondBuilder),
}

impl TypedBuilder {
    fn new(field_type: FieldType) -> Self {
        match field_type {
            FieldType::String => Self::Str(StringBuilder::new()),
            FieldType::Int64 => Self::Int(Int64Builder::new()),
            FieldType::Float64 => Self::Float(Float64Builder::new()),
            FieldType::Bool => Self::Bool(BooleanBuilder::new()),
            FieldType::TimestampMs => {
                Self::Timestamp(TimestampMillisecondBuilder::new().with_timezone("UTC"))
            }
        }
    }

    fn push(&mut self, value: &Value) {
        match (self, value) {
            (Self::Str(b), Value::Str(s)) => b.append_value(s),
            (Self::Int(b), Value::Int(i)) => b.append_value(*i),
            (Self::Float(b), Value::Float(f)) => b.append_value(*f),
            (Self::Bool(b), Value::Bool(v)) => b.append_value(*v),
            (Self::Timestamp(b), Value::Int(i)) => b.append_value(*i),
            (this, value) => {
                assert_eq!(*value, Value::Null, "extracted value does not match its column type");
                this.builder().append_nulls(1);
            }
        }
    }

    fn builder(&mut self) -> &mut dyn NullAppend {
        match self {
            Self::Str(b) => b,
            Self::Int(b) => b,
            Self::Float(b) => b,
            Self::Bool(b) => b,
            Self::Timestamp(b) => b,
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Str(b) => Arc::new(b.finish()),
            Self::Int(b) => Arc::new(b.finish()),
            Self::Float(b) => Arc::new(b.finish()),
            Self::Bool(b) => Arc::new(b.finish()),
            Self::Timestamp(b) => Arc::new(b.finish()),
        }
    }
}

trait NullAppend {
    fn append_nulls(&mut self, n: usize);
}

macro_rules! null_append {
    ($($t:ty),*) => {$(impl NullAppend for $t { fn append_nulls(&mut self, n: usize) { <$t>::append_nulls(self, n) } })*};
}
null_append!(StringBuilder, Int64Builder, Float64Builder, BooleanBuilder, TimestampMillisecondBuilder);

/// A part file under construction.
pub struct PartBuilder {
    partition: u32,
    hour: i64,
    schema: SchemaRef,
    first_offset: i64,
    last_offset: i64,
    rows: u64,
    pending_rows: usize,
    pending_bytes: usize,
    partitions: Int32Builder,
    offsets: Int64Builder,
    timestamps: TimestampMillisecondBuilder,
    keys: BinaryBuilder,
    values: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    typed: Vec<TypedBuilder>,
    writer: ArrowWriter<Vec<u8>>,
}

impl std::fmt::Debug for PartBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PartBuilder")
            .field("partition", &self.partition)
            .field("hour", &self.hour)
            .field("first_offset", &self.first_offset)
            .field("last_offset", &self.last_offset)
            .field("rows", &self.rows)
            .finish_non_exhaustive()
    }
}

/// A finished part file.
#[derive(Debug)]
pub struct FinishedPart {
    /// Event-time hour (hours since the epoch).
    pub hour: i64,
    /// Smallest offset in the file.
    pub first_offset: i64,
    /// Largest offset in the file.
    pub last_offset: i64,
    /// Rows in the file.
    pub rows: u64,
    /// The Parquet bytes.
    pub bytes: Vec<u8>,
}

impl PartBuilder {
    /// An empty part for `partition` and event-time `hour`.
    pub fn new(
        topic: &str,
        partition: u32,
        hour: i64,
        topic_schema: &TopicSchema,
        schema: SchemaRef,
    ) -> Result<Self, parquet::errors::ParquetError> {
        let writer =
            ArrowWriter::try_new(Vec::new(), schema.clone(), Some(writer_properties(topic, partition)))?;
        let DataType::List(item) =
            schema.field_with_name("headers").expect("headers column").data_type().clone()
        else {
            unreachable!("headers is a list")
        };
        let DataType::Struct(entry_fields) = item.data_type().clone() else {
            unreachable!("entries are structs")
        };
        let entries = StructBuilder::new(
            entry_fields,
            vec![Box::new(StringBuilder::new()), Box::new(BinaryBuilder::new())],
        );
        Ok(Self {
            partition,
            hour,
            schema,
            first_offset: -1,
            last_offset: -1,
            rows: 0,
            pending_rows: 0,
            pending_bytes: 0,
            partitions: Int32Builder::new(),
            offsets: Int64Builder::new(),
            timestamps: TimestampMillisecondBuilder::new().with_timezone("UTC"),
            keys: BinaryBuilder::new(),
            values: BinaryBuilder::new(),
            headers: ListBuilder::new(entries).with_field(item),
            typed: topic_schema.fields.iter().map(|f| TypedBuilder::new(f.field_type)).collect(),
            writer,
        })
    }

    /// Appends one record with its extracted typed values.
    pub fn push(
        &mut self,
        record: &LandRecord,
        typed: &[Value],
    ) -> Result<(), parquet::errors::ParquetError> {
        assert!(record.offset > self.last_offset, "offsets must increase within a part");
        assert_eq!(typed.len(), self.typed.len());
        if self.rows == 0 {
            self.first_offset = record.offset;
        }
        self.last_offset = record.offset;
        self.rows += 1;
        self.partitions.append_value(self.partition as i32);
        self.offsets.append_value(record.offset);
        self.timestamps.append_value(record.timestamp_ms);
        self.keys.append_option(record.key.as_deref());
        self.values.append_option(record.value.as_deref());
        let entries = self.headers.values();
        for (key, value) in &record.headers {
            entries.field_builder::<StringBuilder>(0).expect("key builder").append_value(key);
            entries.field_builder::<BinaryBuilder>(1).expect("value builder").append_option(value.as_deref());
            entries.append(true);
        }
        self.headers.append(true);
        for (builder, value) in self.typed.iter_mut().zip(typed) {
            builder.push(value);
        }
        self.pending_rows += 1;
        self.pending_bytes +=
            32 + record.key.as_ref().map_or(0, |k| k.len()) + record.value.as_ref().map_or(0, |v| v.len());
        if self.pending_rows >= BUILDER_ROWS_MAX {
            self.write_pending()?;
        }
        Ok(())
    }

    fn write_pending(&mut self) -> Result<(), parquet::errors::ParquetError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let mut columns: Vec<ArrayRef> = vec![
            Arc::new(self.partitions.finish()),
            Arc::new(self.offsets.finish()),
            Arc::new(self.timestamps.finish()),
            Arc::new(self.keys.finish()),
            Arc::new(self.values.finish()),
            Arc::new(self.headers.finish()),
        ];
        columns.extend(self.typed.iter_mut().map(TypedBuilder::finish));
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer.write(&batch)?;
        self.pending_rows = 0;
        self.pending_bytes = 0;
        Ok(())
    }

    /// Rows so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Event-time hour of the part.
    pub fn hour(&self) -> i64 {
        self.hour
    }

    /// Bytes the file would take if finished now (estimate: written row groups, the
    /// encoded row group in progress, and raw sizes of rows not yet encoded).
    pub fn size_bytes(&self) -> usize {
        self.writer.bytes_written() + self.writer.in_progress_size() + self.pending_bytes
    }

    /// Finishes the file.
    pub fn finish(mut self) -> Result<FinishedPart, parquet::errors::ParquetError> {
        assert!(self.rows > 0, "an empty part is never finished");
        debug_assert_eq!(self.keys.len(), self.pending_rows);
        self.write_pending()?;
        let bytes = self.writer.into_inner()?;
        Ok(FinishedPart {
            hour: self.hour,
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            rows: self.rows,
            bytes,
        })
    }
}
