//! `datapath-worker BPFFS STATE_DIR CGROUP2 ATTACH_CGROUP BUNDLE`: one agent lifetime in a
//! process of its own, for the crash tests — adopts what a previous agent left (as the
//! agent does at start), then applies the bundle file (a `palisade.v1.Bundle`) through
//! cgroup hooks. Prints what it adopted and `ok`, or the error (exit 1). With
//! `PALISADE_FAULT_AT=<step>` it aborts at that step of the swap instead.
#![allow(clippy::print_stdout, reason = "the worker reports on stdout")]

use std::{path::PathBuf, process::ExitCode};

use palisade_agent::loader::{Datapath, Paths};
use palisade_proto::v1;
use prost::Message as _;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bpffs, state_dir, cgroup2, attach, bundle] = args.as_slice() else {
        println!("usage: datapath-worker BPFFS STATE_DIR CGROUP2 ATTACH_CGROUP BUNDLE");
        return ExitCode::from(3);
    };
    let bundle = match std::fs::read(bundle).map(|b| v1::Bundle::decode(b.as_slice())) {
        Ok(Ok(bundle)) => bundle,
        other => {
            println!("bundle: {other:?}");
            return ExitCode::from(3);
        }
    };
    let mut datapath = Datapath::new(Paths {
        bpffs: PathBuf::from(bpffs),
        state_dir: PathBuf::from(state_dir),
        cgroup2: PathBuf::from(cgroup2),
        attach: PathBuf::from(attach),
    });
    match datapath.adopt() {
        Ok(adopted) => println!("adopted {adopted} {:?}", datapath.active()),
        Err(e) => println!("adopt failed: {}", palisade_agent::error_chain(&e)),
    }
    match datapath.apply(bundle, &mut Vec::new()) {
        Ok(()) => {
            println!("ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", palisade_agent::error_chain(&e));
            ExitCode::from(1)
        }
    }
}
