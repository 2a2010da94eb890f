//! Palisade policy compiler: policy model → eBPF bytecode → BPF ELF (built in the walking-skeleton issue; empty until then).
