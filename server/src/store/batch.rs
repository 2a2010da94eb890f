//! Group commit for per-node writes that every Sync session makes at once (a policy change
//! sets thousands of nodes' desired bundle, and their ACKs arrive together): callers queue
//! their row, one of them writes everything queued in one statement, the rest find their
//! answer waiting. No background task and no timer: under no load a write is one statement
//! as before; under load batches form by themselves while the previous one runs.

use std::sync::Mutex;

use tokio::sync::oneshot;

use crate::error::ApiError;

/// Most rows written by one statement.
pub const MAX_BATCH: usize = 4096;

/// A row waiting to be written, and where its answer goes.
type Queued<R, A> = (R, oneshot::Sender<Result<A, ApiError>>);

/// A queue of rows of type `R` answered with `A`.
#[derive(Debug)]
pub struct Batcher<R, A> {
    pending: Mutex<Vec<Queued<R, A>>>,
    running: tokio::sync::Mutex<()>,
}

impl<R, A> Default for Batcher<R, A> {
    fn default() -> Self {
        Self { pending: Mutex::new(Vec::new()), running: tokio::sync::Mutex::new(()) }
    }
}

impl<R, A> Batcher<R, A> {
    /// Queues `row` and waits for its answer; whoever gets the writer's turn writes every
    /// queued row (up to [`MAX_BATCH`]) with `write`, which answers them in order.
    pub async fn submit<F, Fut>(&self, row: R, write: F) -> Result<A, ApiError>
    where
        F: Fn(Vec<R>) -> Fut,
        Fut: Future<Output = Result<Vec<A>, ApiError>>,
    {
        let (tx, mut rx) = oneshot::channel();
        self.pending.lock().map_err(|_| ApiError::Corrupt("batch queue poisoned".into()))?.push((row, tx));
        loop {
            // Answered by someone else's turn: leave at once instead of queueing for one.
            let turn = tokio::select! {
                biased;
                answer = &mut rx => {
                    return answer.unwrap_or_else(|_| Err(ApiError::Corrupt("batch writer dropped an answer".into())));
                }
                turn = self.running.lock() => turn,
            };
            let batch: Vec<_> = {
                let mut pending = self.pending.lock().map_err(|_| ApiError::Corrupt("batch queue poisoned".into()))?;
                let n = pending.len().min(MAX_BATCH);
                pending.drain(..n).collect()
            };
            if !batch.is_empty() {
                let (rows, answers): (Vec<R>, Vec<_>) = batch.into_iter().unzip();
                match write(rows).await {
                    Ok(results) if results.len() == answers.len() => {
                        for (answer, result) in answers.into_iter().zip(results) {
                            let _ = answer.send(Ok(result));
                        }
                    }
                    Ok(results) => {
                        let message = format!("batch wrote {} rows of {}", results.len(), answers.len());
                        for answer in answers {
                            let _ = answer.send(Err(ApiError::Corrupt(message.clone())));
                        }
                    }
                    Err(error) => {
                        let message = error.to_string();
                        for answer in answers {
                            let _ = answer.send(Err(ApiError::Database(sqlx::Error::Protocol(message.clone()))));
                        }
                    }
                }
            }
            drop(turn);
            // Answered by this turn or an earlier one; if more than MAX_BATCH were queued
            // ahead of it, take another turn.
            match rx.try_recv() {
                Ok(answer) => return answer,
                Err(oneshot::error::TryRecvError::Closed) => {
                    return Err(ApiError::Corrupt("batch writer dropped an answer".into()));
                }
                Err(oneshot::error::TryRecvError::Empty) => {}
            }
        }
    }
}
