//! socp-db
