//! bloat
