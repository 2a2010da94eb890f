//! Test support shared by Palisade's crates.
//!
//! Most of what the tests wait for happens asynchronously somewhere else — an agent applying
//! a bundle, the kernel releasing a link, a server recording an ACK — so they poll. There is
//! one way to do it: [`poll`] (async) and [`poll_blocking`] call a probe every
//! [`INTERVAL`] until it yields a value or the deadline passes; [`eventually`] and
//! [`eventually_blocking`] do the same and fail the test, naming what was awaited.
#![forbid(unsafe_code)]

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// Time between two probes.
pub const INTERVAL: Duration = Duration::from_millis(20);

/// The probe did not yield a value within the deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeout {
    /// How long it was given.
    pub within: Duration,
}

impl std::fmt::Display for Timeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "timed out after {:?}", self.within)
    }
}

impl std::error::Error for Timeout {}

/// Calls `probe` until it returns `Some`, and returns the value; the probe runs at least
/// once, and again every [`INTERVAL`] until `within` has passed.
pub async fn poll<T, F, Fut>(within: Duration, mut probe: F) -> Result<T, Timeout>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Timeout { within });
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// [`poll`] for probes that block (syscalls, threads): sleeps the calling thread between
/// probes.
pub fn poll_blocking<T>(within: Duration, mut probe: impl FnMut() -> Option<T>) -> Result<T, Timeout> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe() {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            return Err(Timeout { within });
        }
        std::thread::sleep(INTERVAL);
    }
}

/// [`poll`], failing the test on timeout with what it waited for.
///
/// # Panics
/// When `probe` yields nothing within `within`.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    match poll(within, probe).await {
        Ok(value) => value,
        Err(timeout) => panic!("{timeout} waiting for {what}"),
    }
}

/// [`poll_blocking`], failing the test on timeout with what it waited for.
///
/// # Panics
/// When `probe` yields nothing within `within`.
pub fn eventually_blocking<T>(what: &str, within: Duration, probe: impl FnMut() -> Option<T>) -> T {
    match poll_blocking(within, probe) {
        Ok(value) => value,
        Err(timeout) => panic!("{timeout} waiting for {what}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    #[test]
    fn poll_blocking_returns_the_first_value_and_times_out_without_one() {
        let mut calls = 0;
        let got = poll_blocking(Duration::from_secs(5), || {
            calls += 1;
            (calls == 3).then_some(calls * 10)
        });
        assert_eq!(got, Ok(30));
        let started = Instant::now();
        let mut probes = 0;
        let none = poll_blocking(Duration::from_millis(100), || -> Option<()> {
            probes += 1;
            None
        });
        assert_eq!(none, Err(Timeout { within: Duration::from_millis(100) }));
        assert!(started.elapsed() >= Duration::from_millis(100), "{:?}", started.elapsed());
        assert!((2..=10).contains(&probes), "probed every {INTERVAL:?}: {probes} probes");
    }

    #[tokio::test]
    async fn poll_probes_until_a_value_and_eventually_names_what_it_waited_for() {
        let calls = AtomicU32::new(0);
        let got =
            poll(Duration::from_secs(5), || async { (calls.fetch_add(1, Ordering::Relaxed) == 2).then_some("ready") });
        assert_eq!(got.await, Ok("ready"));
        let none = poll(Duration::ZERO, || async { None::<()> }).await;
        assert_eq!(none, Err(Timeout { within: Duration::ZERO }), "the probe runs once even with no time");
        let waited = tokio::spawn(eventually("the moon", Duration::from_millis(50), || async { None::<()> }));
        let panic = waited.await.expect_err("panics").into_panic();
        let message = panic.downcast_ref::<String>().expect("a message");
        assert!(message.contains("timed out after 50ms waiting for the moon"), "{message}");
    }
}
