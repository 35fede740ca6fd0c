//! Format pieces for tests, fuzz targets and benches (feature `testing`):
//! build segment files, snapshots and records byte by byte, and scan a
//! directory with any [`Storage`](super::Storage), and wrap a storage to see
//! or change a few of its calls ([`ForwardingStorage`], [`ForwardingFile`]).
//!
//! The on-disk format is not part of the crate's public API: these items
//! exist only with the `testing` feature, so a test can forge (or damage) a
//! journal on purpose. Programs read a log through [`super::LogReader`] and
//! [`super::Log`], and classify its damage through [`super::ScanReport`].

pub use super::record::{encode as encode_record, encoded_len, Codec, ALIGN, RECORD_HEADER};
pub use super::scan::scan_dir;
pub use super::segment::{encode_header, encode_header_v1, segment_name, SEGMENT_HEADER};
pub use super::snapshot::encode as encode_snapshot;
pub use super::storage::forwarding::{FileHooks, ForwardingFile, ForwardingStorage, StorageHooks};
pub use super::window::set_read_chunk;
