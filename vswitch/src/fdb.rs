//! fdb
