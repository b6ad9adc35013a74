//! The Kafka wire protocol: every shard accepts connections on the same address
//! (SO_REUSEPORT, so the kernel spreads connections over shards) and serves them on its
//! own thread. Requests for partitions another shard owns cross the mesh
//! ([`crate::shard::Shard::call`]) and come back.
//!
//! Message codecs are the `kafka-protocol` crate's; record bytes pass through untouched
//! (a produced batch goes to the log as is, a fetch answers with mapped segment bytes).
//!
//! Framing: a request is a big-endian `i32` size, then a request header and body; a
//! frame larger than `max_request_bytes` or one that does not decode closes the
//! connection with a log line (Kafka does the same for malformed frames). Up to
//! [`PIPELINE_DEPTH`] requests (and [`PIPELINE_BYTES_MAX`] bytes of them) of one
//! connection are handled at once; responses go
//! out in request order, and a produce request's batches are sent to their owners
//! before the next request is read, so appends keep the connection's order.
//! `acks=0` produce requests get no response.
//!
//! The APIs and versions served are declared once, in the table in `api` (adding an
//! API is one line there plus its handler in the family's module); README lists them.
//!
//! Layout: `net` (listener, framing, budgets), `api` (the API table and dispatch),
//! `codes` (Kafka error codes), and one module per API family: `topics`, `produce`,
//! `fetch`, `groups`.

mod admin;
mod api;
mod authz;
mod codes;
mod fetch;
mod groups;
mod net;
mod produce;
mod sasl;
mod topics;

pub use api::decode_request;
pub use fetch::{FETCH_PARTITIONS_MAX, FETCH_RESPONSE_BYTES_MAX};
pub(crate) use net::{accept_loop, bind};
pub use net::{
    CONNECTION_IDLE_MS, FRAME_CHUNK_BYTES, FRAME_READ_TIMEOUT_MS, PIPELINE_BYTES_MAX, PIPELINE_DEPTH,
    RESPONSE_BYTES_PER_CONNECTION_MAX, RESPONSE_WRITE_TIMEOUT_MS,
};

/// The one broker id corelog answers as.
pub const NODE_ID: i32 = 0;
/// Backlog of each shard's listening socket.
pub const LISTEN_BACKLOG: i32 = 1024;
/// Longest a fetch may wait for `min_bytes`.
pub const FETCH_WAIT_MS_MAX: u64 = 30_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_array_count_beyond_the_frame_is_an_error_not_an_abort() {
        // Metadata v1, correlation id 7, null client id, then a topics array that
        // claims i32::MAX entries in a frame of a few bytes (the vendored patch).
        let mut frame = vec![0, 3, 0, 1, 0, 0, 0, 7, 0xff, 0xff];
        frame.extend_from_slice(&i32::MAX.to_be_bytes());
        let error = decode_request(&frame).unwrap_err();
        assert!(error.contains("exceeds"), "{error}");
    }

    #[test]
    fn unsupported_versions_and_unknown_keys_are_refused() {
        assert!(decode_request(&[0, 0, 0, 1, 0, 0, 0, 1, 0xff, 0xff]).unwrap_err().contains("unsupported"));
        assert!(decode_request(&[0x7f, 0x7f, 0, 1, 0, 0, 0, 1]).unwrap_err().contains("unknown API key"));
        assert!(decode_request(&[0, 18]).is_err());
    }
}
