//! Palisade node agent: sync client, kernel probe and loader (built in the walking-skeleton issue; empty until then).
