//! A single-node driver: applies commands at once and makes every batch durable before
//! answering. Used by tests and by a node until replication takes over the command log.

use crate::api::{EngineConfig, FromOutcome, Outcome, Step};
use crate::command::Command;
use crate::engine::Engine;
use crate::error::EngineError;
use crate::store::{Store, StoreError};
use crate::types::SessionId;
use sealgate_hsm_crypto::MasterKey;

/// Why a driven request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DriverError {
    /// The engine refused the request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The store failed; the command was not acknowledged.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// An engine over a store, applying each command as soon as it is prepared.
pub struct LocalHsm<S: Store> {
    engine: Engine,
    store: S,
    poisoned: bool,
}

impl<S: Store> LocalHsm<S> {
    /// Loads the engine's state from `store`.
    pub fn open(mut store: S, master: MasterKey, config: EngineConfig) -> Result<Self, StoreError> {
        let snapshot = store.load()?;
        let engine = Engine::restore(master, config, &snapshot)?;
        Ok(Self {
            engine,
            store,
            poisoned: false,
        })
    }

    /// The engine, for reads, crypto operations and preparing commands.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The engine, for session changes and requests that may create session keys.
    pub fn engine_mut(&mut self) -> &mut Engine {
        &mut self.engine
    }

    /// The store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Gives the store back (to reopen it, say).
    pub fn into_store(self) -> S {
        self.store
    }

    /// Applies `cmd` as the next log entry, writes the result durably, and returns the answer.
    ///
    /// If the store fails, the command is not acknowledged and this driver refuses further
    /// writes: its memory is ahead of its store, so it must be reopened from the store, which
    /// still holds the state from before the command.
    pub fn commit(
        &mut self,
        cmd: &Command,
        origin: Option<SessionId>,
    ) -> Result<Outcome, DriverError> {
        if self.poisoned {
            return Err(StoreError::Poisoned.into());
        }
        let index = self.engine.applied_index() + 1;
        let entry = cmd.encode()?;
        let applied = self.engine.apply(index, cmd, origin);
        if let Err(e) = self.store.commit_entry(index, &entry, &applied.batch) {
            self.poisoned = true;
            return Err(e.into());
        }
        Ok(applied.result?)
    }

    /// Finishes a [`Step`]: returns its value, or commits its command and converts the outcome.
    pub fn complete<T: FromOutcome>(
        &mut self,
        session: SessionId,
        step: Step<T>,
    ) -> Result<T, DriverError> {
        match step {
            Step::Done(v) => Ok(v),
            Step::Replicate(cmd) => Ok(T::from_outcome(self.commit(&cmd, Some(session))?)),
        }
    }
}
