//! Shared fixture for the engine's tests: an initialized, activated single-node cluster over a
//! memory store, with helpers to log in and create users and keys.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use sealgate_hsm_core::crypto::{KeySpec, MasterKey, Password};
use sealgate_hsm_core::{
    DriverError, EngineConfig, KeyHandle, KeyTemplate, LocalHsm, MemoryStore, Role, SessionId,
    Step, Timestamp,
};

pub const PRECO_PASSWORD: &str = "preco-password";
pub const CO_PASSWORD: &str = "officer-password";
pub const CU_PASSWORD: &str = "crypto-user-pw";

pub struct Fixture {
    pub hsm: LocalHsm<MemoryStore>,
    pub master: Vec<u8>,
    clock: u64,
}

pub fn pw(s: &str) -> Password {
    Password::from(s)
}

/// A template from `name=value` pairs.
pub fn tpl(pairs: &[(&str, &str)]) -> KeyTemplate {
    let mut t = KeyTemplate::default();
    for (k, v) in pairs {
        t.set(k, v).unwrap();
    }
    t
}

impl Fixture {
    /// An initialized but not activated cluster.
    pub fn initialized() -> Self {
        let (master, raw) = MasterKey::generate().unwrap();
        let hsm = LocalHsm::open(MemoryStore::new(), master, EngineConfig::default()).unwrap();
        let mut fx = Self {
            hsm,
            master: raw.to_vec(),
            clock: 1_700_000_000_000,
        };
        let now = fx.now();
        let cmd = fx
            .hsm
            .engine()
            .initialize(&pw(PRECO_PASSWORD), now)
            .unwrap();
        fx.hsm.commit(&cmd, None).unwrap();
        fx
    }

    /// An activated cluster: `admin` is a CO with [`CO_PASSWORD`].
    pub fn activated() -> Self {
        let mut fx = Self::initialized();
        let s = fx.login("admin", PRECO_PASSWORD).unwrap();
        let now = fx.now();
        let cmd = fx.hsm.engine().activate(s, &pw(CO_PASSWORD), now).unwrap();
        fx.hsm.commit(&cmd, Some(s)).unwrap();
        fx.hsm.engine_mut().close_session(s);
        fx
    }

    /// A second node restored from this one's store as it is now, under the same master key
    /// (a clone of the cluster at this moment). Sessions do not carry over.
    pub fn clone_cluster(&self) -> Self {
        Self::from_store(self.hsm.store().clone(), &self.master)
    }

    /// A node opened from `store` under `master`.
    pub fn from_store(store: MemoryStore, master: &[u8]) -> Self {
        let hsm = LocalHsm::open(
            store,
            MasterKey::from_bytes(master).unwrap(),
            EngineConfig::default(),
        )
        .unwrap();
        Self {
            hsm,
            master: master.to_vec(),
            clock: 1_800_000_000_000,
        }
    }

    pub fn now(&mut self) -> Timestamp {
        self.clock += 1;
        Timestamp(self.clock)
    }

    pub fn session(&mut self) -> SessionId {
        self.hsm.engine_mut().open_session().unwrap()
    }

    /// Opens a session and logs in.
    pub fn login(&mut self, name: &str, password: &str) -> Result<SessionId, DriverError> {
        let s = self.session();
        self.login_on(s, name, password)?;
        Ok(s)
    }

    pub fn login_on(
        &mut self,
        s: SessionId,
        name: &str,
        password: &str,
    ) -> Result<(), DriverError> {
        let now = self.now();
        let step = self.hsm.engine_mut().login(s, name, &pw(password), now)?;
        self.hsm.complete(s, step)
    }

    pub fn co(&mut self) -> SessionId {
        self.login("admin", CO_PASSWORD).unwrap()
    }

    pub fn create_user(&mut self, co: SessionId, name: &str, role: Role, password: &str) {
        let now = self.now();
        let cmd = self
            .hsm
            .engine()
            .create_user(co, name, role, &pw(password), now)
            .unwrap();
        self.hsm.commit(&cmd, Some(co)).unwrap();
    }

    /// Creates a CU (with [`CU_PASSWORD`]) and logs it in.
    pub fn cu(&mut self, name: &str) -> SessionId {
        let co = self.co();
        self.create_user(co, name, Role::CryptoUser, CU_PASSWORD);
        self.hsm.engine_mut().close_session(co);
        self.login(name, CU_PASSWORD).unwrap()
    }

    pub fn gen_key(&mut self, s: SessionId, spec: KeySpec, t: &KeyTemplate) -> KeyHandle {
        self.try_gen_key(s, spec, t).unwrap()
    }

    pub fn try_gen_key(
        &mut self,
        s: SessionId,
        spec: KeySpec,
        t: &KeyTemplate,
    ) -> Result<KeyHandle, DriverError> {
        let now = self.now();
        let step = self.hsm.engine_mut().generate_key(s, spec, t, now)?;
        let handles: Vec<KeyHandle> = self.hsm.complete(s, step)?;
        Ok(handles[0])
    }

    /// Generates a pair; returns (public, private).
    pub fn gen_pair(
        &mut self,
        s: SessionId,
        spec: KeySpec,
        public: &KeyTemplate,
        private: &KeyTemplate,
    ) -> (KeyHandle, KeyHandle) {
        let now = self.now();
        let step = self
            .hsm
            .engine_mut()
            .generate_key_pair(s, spec, public, private, now)
            .unwrap();
        let handles: Vec<KeyHandle> = self.hsm.complete(s, step).unwrap();
        (handles[0], handles[1])
    }

    /// Finishes a step that returns key handles, panicking on errors.
    pub fn finish_keys(&mut self, s: SessionId, step: Step<Vec<KeyHandle>>) -> Vec<KeyHandle> {
        self.hsm.complete(s, step).unwrap()
    }

    /// Commits a prepared command for a session.
    pub fn commit(
        &mut self,
        s: SessionId,
        cmd: Result<sealgate_hsm_core::Command, sealgate_hsm_core::EngineError>,
    ) -> Result<sealgate_hsm_core::Outcome, DriverError> {
        let cmd = cmd?;
        self.hsm.commit(&cmd, Some(s))
    }
}

/// The engine error inside a driver error.
pub fn engine_err(e: DriverError) -> sealgate_hsm_core::EngineError {
    match e {
        DriverError::Engine(e) => e,
        other => panic!("expected an engine error, got {other}"),
    }
}
