//! socp-actors
