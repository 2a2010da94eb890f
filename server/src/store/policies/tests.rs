//! Store tests for policies (filled below).
