//! The telemetry batcher: every request that queued while the previous
//! batch was being committed is stored as one storage job, and when
//! requests arrive spread out (a fleet, not a benchmark) it waits a few
//! milliseconds for company first (see [`crate::gather`]). Postgres stores
//! a few batches at once, each under its own builds' locks.
//!
//! SQLite needs no batcher: its single writer gathers telemetry requests
//! itself, into the same group as the claims and transitions that arrive
//! meanwhile (one commit, one fsync for all), so requests go straight to it.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::error::{AppError, Result};
use crate::gather::{Arrivals, TELEMETRY};
use crate::storage::postgres::{self, CONCURRENT_TELEMETRY_STORES};
use crate::storage::sqlite::Writer;
use crate::storage::{Storage, TelemetryIntake, TelemetryRequest};
use crate::wire::TelemetryAnswer;

/// Most requests stored by one job.
const MAX_REQUESTS_PER_BATCH: usize = 128;
/// Requests waiting for the batcher before callers wait to queue.
const QUEUE_DEPTH: usize = 4096;

type Queued = (TelemetryRequest, oneshot::Sender<Result<TelemetryAnswer>>);

/// Where telemetry requests go to be stored. Cheap to clone.
#[derive(Clone)]
pub struct TelemetryQueue(Route);

#[derive(Clone)]
enum Route {
    /// To the batcher.
    Batcher(mpsc::Sender<Queued>),
    /// Straight to SQLite's writer, which gathers them itself.
    Writer { writer: Writer, grace_ms: i64 },
}

impl TelemetryQueue {
    /// Sends telemetry to `storage` as its backend takes it: straight to
    /// SQLite's writer, or through a batcher started here for Postgres;
    /// builds take telemetry for `grace_ms` after they (or an attempt)
    /// ended.
    pub fn start(storage: &Storage, grace_ms: i64) -> TelemetryQueue {
        match storage.telemetry_intake() {
            TelemetryIntake::Writer(writer) => TelemetryQueue(Route::Writer { writer, grace_ms }),
            TelemetryIntake::Batches(database) => {
                let (requests, queue) = mpsc::channel(QUEUE_DEPTH);
                tokio::spawn(run_batcher(database, queue, grace_ms));
                TelemetryQueue(Route::Batcher(requests))
            }
        }
    }

    /// Stores `request` and answers once it is committed (or refused).
    pub async fn store(&self, request: TelemetryRequest) -> Result<TelemetryAnswer> {
        match &self.0 {
            Route::Batcher(requests) => {
                let (answer, answered) = oneshot::channel();
                requests
                    .send((request, answer))
                    .await
                    .map_err(|_| AppError::Unavailable)?;
                answered.await.map_err(|_| AppError::Unavailable)?
            }
            Route::Writer { writer, grace_ms } => writer.store_telemetry(request, *grace_ms).await,
        }
    }
}

/// What a queued request weighs when gathering.
fn work(queued: &Queued) -> usize {
    queued.0.weight()
}

async fn run_batcher(
    database: postgres::Database,
    mut queue: mpsc::Receiver<Queued>,
    grace_ms: i64,
) {
    // A batch is taken from the queue only once a store is free, so that
    // requests keep gathering into the next batch while the stores work.
    let stores = Arc::new(Semaphore::new(CONCURRENT_TELEMETRY_STORES));
    let mut seen = Arrivals::new();
    loop {
        let Ok(free) = stores.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(MAX_REQUESTS_PER_BATCH);
        let limit = MAX_REQUESTS_PER_BATCH;
        if !TELEMETRY
            .take(&mut queue, &mut batch, limit, &mut seen, work)
            .await
        {
            return;
        }
        let builds: HashSet<i64> = batch.iter().map(|queued| queued.0.build_id).collect();
        seen.clients(batch.len(), builds.len());
        let database = database.clone();
        tokio::spawn(async move {
            store_batch(&database, batch, grace_ms).await;
            drop(free);
        });
    }
}

async fn store_batch(database: &postgres::Database, batch: Vec<Queued>, grace_ms: i64) {
    let (requests, answers): (Vec<TelemetryRequest>, Vec<_>) = batch.into_iter().unzip();
    match database.store_telemetry(requests, grace_ms).await {
        Ok(results) => {
            for (answer, result) in answers.into_iter().zip(results) {
                let _ = answer.send(result);
            }
        }
        Err(error) => {
            tracing::error!(%error, requests = answers.len(), "a telemetry batch was not stored");
            for answer in answers {
                let _ = answer.send(Err(AppError::Unavailable));
            }
        }
    }
}
