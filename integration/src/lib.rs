//! End-to-end test support (the suites arrive with the walking-skeleton issue).
