//! The one writer of an engine, and group commit. Every write of a node
//! goes through a queue to a single writer (a thread for the embedded
//! engine, a task for the SQL ones), which takes every batch queued while
//! its previous commit ran and commits them in one transaction: under
//! concurrency, throughput grows with the queue instead of collapsing to
//! one fsync per request. One writer also means seqs are taken, and become
//! visible, in order, which the change feed relies on.

use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};

use super::{Applied, Batch, Result, StorageError};

/// Most batches one commit takes, and most value bytes, so one huge group
/// cannot hold every writer behind it for long.
const MAX_GROUP_BATCHES: usize = 1024;
const MAX_GROUP_BYTES: usize = 64 << 20;

enum Job {
    Apply {
        batch: Batch,
        reply: oneshot::Sender<Result<Vec<Applied>>>,
    },
    Purge {
        purge: Purge,
        reply: oneshot::Sender<Result<usize>>,
    },
}

/// A tombstone purge request (see `Storage::purge_tombstones`).
#[derive(Clone, Copy, Debug)]
pub struct Purge {
    pub max_seq: u64,
    pub older_than_ts: u64,
    pub limit: usize,
}

/// Batches to commit together, and whom to answer.
pub struct Group {
    pub batches: Vec<Batch>,
    replies: Vec<oneshot::Sender<Result<Vec<Applied>>>>,
}

impl Group {
    /// Answers every caller: the result of each batch, or the error for all.
    pub fn answer(self, result: Result<Vec<Vec<Applied>>>) {
        match result {
            Ok(results) => {
                for (reply, r) in self.replies.into_iter().zip(results) {
                    let _ = reply.send(Ok(r));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batches = self.replies.len(), "group commit failed");
                for reply in self.replies {
                    let _ = reply.send(Err(same_error(&e)));
                }
            }
        }
    }
}

impl Group {
    /// Whether a failed commit should be retried batch by batch: one bad
    /// batch (say, a record the database refuses) must not fail the others
    /// that happened to share its transaction. An unreachable store fails
    /// them all anyway.
    pub fn should_split(&self, e: &StorageError) -> bool {
        self.batches.len() > 1 && !matches!(e, StorageError::Unavailable(_))
    }

    /// Each batch with its own caller, to commit alone.
    pub fn split(self) -> Vec<Single> {
        self.batches
            .into_iter()
            .zip(self.replies)
            .map(|(batch, reply)| Single { batch, reply })
            .collect()
    }
}

/// One batch of a split group.
pub struct Single {
    pub batch: Batch,
    reply: oneshot::Sender<Result<Vec<Applied>>>,
}

impl Single {
    /// Answers with the result of committing this batch alone (as a group
    /// of one).
    pub fn answer(self, result: Result<Vec<Vec<Applied>>>) {
        let result = result.map(|mut r| r.pop().unwrap_or_default());
        let _ = self.reply.send(result);
    }
}

/// A purge, and whom to answer.
pub struct PurgeJob {
    pub purge: Purge,
    reply: oneshot::Sender<Result<usize>>,
}

impl PurgeJob {
    pub fn answer(self, result: Result<usize>) {
        let _ = self.reply.send(result);
    }
}

/// What the writer does next.
pub enum Work {
    Commit(Group),
    Purge(PurgeJob),
}

/// The writer's end of the queue.
pub struct Queue {
    rx: mpsc::UnboundedReceiver<Job>,
    held: Option<Job>,
}

impl Queue {
    /// The next work, waiting on a blocking thread. `None` once closed.
    pub fn blocking_next(&mut self) -> Option<Work> {
        let first = match self.held.take() {
            Some(job) => job,
            None => self.rx.blocking_recv()?,
        };
        Some(self.gather(first))
    }

    /// Waits on a blocking thread until work is queued, and keeps it for
    /// `blocking_next`: whether it should go at once (a purge, or a batch
    /// readable before it is durable). `None` once closed.
    pub fn blocking_wait(&mut self) -> Option<bool> {
        if self.held.is_none() {
            self.held = Some(self.rx.blocking_recv()?);
        }
        Some(self.held.as_ref().is_none_or(is_urgent))
    }

    /// The next work, waiting in a task. `None` once closed.
    pub async fn next(&mut self) -> Option<Work> {
        let first = match self.held.take() {
            Some(job) => job,
            None => self.rx.recv().await?,
        };
        Some(self.gather(first))
    }

    /// A purge alone, or every batch queued behind the first one.
    fn gather(&mut self, first: Job) -> Work {
        let (batch, reply) = match first {
            Job::Purge { purge, reply } => return Work::Purge(PurgeJob { purge, reply }),
            Job::Apply { batch, reply } => (batch, reply),
        };
        let mut bytes = batch_bytes(&batch);
        let mut group = Group {
            batches: vec![batch],
            replies: vec![reply],
        };
        while group.batches.len() < MAX_GROUP_BATCHES && bytes < MAX_GROUP_BYTES {
            match self.rx.try_recv() {
                Ok(Job::Apply { batch, reply }) => {
                    bytes += batch_bytes(&batch);
                    group.batches.push(batch);
                    group.replies.push(reply);
                }
                Ok(purge) => {
                    self.held = Some(purge);
                    break;
                }
                Err(_) => break,
            }
        }
        Work::Commit(group)
    }
}

/// Whether a job should go at once rather than wait for others to
/// gather: a purge, or a batch readable before it is durable (pulled
/// from a peer, see `Batch::readable_before_durable`).
fn is_urgent(job: &Job) -> bool {
    match job {
        Job::Apply { batch, .. } => batch.readable_before_durable.is_some(),
        Job::Purge { .. } => true,
    }
}

fn batch_bytes(batch: &Batch) -> usize {
    batch
        .records
        .iter()
        .map(|r| r.value.len() + r.key.len())
        .sum()
}

/// The callers' end of the queue.
pub struct Writer {
    tx: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    /// Called after queueing work that should go at once (see
    /// `Queue::blocking_wait`), so that a writer letting other work
    /// gather stops waiting.
    on_urgent: Option<Box<dyn Fn() + Send + Sync>>,
}

/// A new queue: the `Writer` for callers, the `Queue` for the writer.
pub fn queue() -> (Writer, Queue) {
    let (tx, rx) = mpsc::unbounded_channel();
    (
        Writer {
            tx: Mutex::new(Some(tx)),
            on_urgent: None,
        },
        Queue { rx, held: None },
    )
}

/// A new queue whose `Writer` calls `on_urgent` after queueing work that
/// should go at once.
pub fn queue_telling(on_urgent: impl Fn() + Send + Sync + 'static) -> (Writer, Queue) {
    let (mut writer, queue) = queue();
    writer.on_urgent = Some(Box::new(on_urgent));
    (writer, queue)
}

impl Writer {
    fn submit(&self, job: Job) -> Result<()> {
        let urgent = is_urgent(&job);
        self.send(job)?;
        if urgent {
            if let Some(tell) = &self.on_urgent {
                tell();
            }
        }
        Ok(())
    }

    fn send(&self, job: Job) -> Result<()> {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref().map(|tx| tx.send(job)) {
            Some(Ok(())) => Ok(()),
            _ => Err(StorageError::Unavailable(
                "the storage engine is closed".into(),
            )),
        }
    }

    /// Queues a batch and waits for its commit.
    pub async fn apply(&self, batch: Batch) -> Result<Vec<Applied>> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Apply { batch, reply })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Queues a purge and waits for it.
    pub async fn purge(&self, purge: Purge) -> Result<usize> {
        let (reply, answer) = oneshot::channel();
        self.submit(Job::Purge { purge, reply })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Refuses new work; the writer finishes what is queued, then its
    /// `Queue` yields `None`.
    pub fn close(&self) {
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

fn stopped() -> StorageError {
    StorageError::Unavailable("the storage writer stopped".into())
}

/// The same error again, for every caller of a failed group.
fn same_error(e: &StorageError) -> StorageError {
    match e {
        StorageError::Unavailable(m) => StorageError::Unavailable(m.clone()),
        StorageError::Corrupt(m) => StorageError::Corrupt(m.clone()),
        StorageError::Other(m) => StorageError::Other(m.clone()),
    }
}
