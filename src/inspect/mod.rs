//! The library side of `wal-inspect`: read-only reports over a journal
//! directory, verification and repair. The binary only parses and prints.
