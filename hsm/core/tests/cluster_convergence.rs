//! Replicas of one cluster fed the same command log converge, whatever the interleaving: a
//! seeded simulation of several nodes that prepare commands concurrently (each against its own,
//! possibly stale, state), apply the shared log at their own pace, and crash and restart from
//! their stores. At the end every store holds the same rows, and every write that its node
//! acknowledged (applied with success) is there.
//!
//! The order of the log itself is openraft's job (and its own test suites'); this tests the
//! engine's part of the bargain: `apply` is deterministic and checks again what preparation
//! checked, so a log, whatever it holds, produces one state.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_core::crypto::{AesSize, Curve, KeySpec};
use sealgate_hsm_core::{
    AttributeChange, Command, KeyHandle, MemoryStore, Outcome, Role, SessionId, Step, Table,
};
use std::collections::BTreeSet;
use support::{CO_PASSWORD, CU_PASSWORD, Fixture, pw, tpl};

const NODES: usize = 3;

/// A small deterministic generator (xorshift64*), seeded per run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }
}

/// One replica: its engine and store, how far it has applied the shared log, and its sessions.
struct Node {
    fx: Fixture,
    applied: usize,
    co: SessionId,
    cu: SessionId,
}

impl Node {
    fn open(store: MemoryStore, master: &[u8]) -> Self {
        let mut fx = Fixture::from_store(store, master);
        let co = fx.login("admin", CO_PASSWORD).unwrap();
        let cu = fx.login("cu1", CU_PASSWORD).unwrap();
        Self {
            fx,
            applied: 0,
            co,
            cu,
        }
    }
}

/// An entry of the shared log: a command, the node that prepared it and its session.
struct Entry {
    cmd: Command,
    origin: usize,
    session: SessionId,
}

/// What acknowledged writes promise about the final state.
#[derive(Default)]
struct Acks {
    created: BTreeSet<KeyHandle>,
    deleted: BTreeSet<KeyHandle>,
}

fn run(seed: u64) {
    // An activated cluster with a crypto user, cloned onto every node.
    let mut base = Fixture::activated();
    let co = base.co();
    base.create_user(co, "cu1", Role::CryptoUser, CU_PASSWORD);
    base.create_user(co, "cu2", Role::CryptoUser, CU_PASSWORD);
    let master = base.master.clone();
    let start = base.hsm.store().clone();
    let mut nodes: Vec<Node> = (0..NODES)
        .map(|_| Node::open(start.clone(), &master))
        .collect();
    let mut log: Vec<Entry> = Vec::new();
    let mut acks = Acks::default();
    let mut rng = Rng(seed | 1);
    let mut known: Vec<KeyHandle> = Vec::new();

    for step in 0..400 {
        let n = rng.below(NODES);
        match rng.below(10) {
            // Prepare a command on node n against its current (maybe stale) state.
            0..=4 => {
                let node = &mut nodes[n];
                let now = node.fx.now();
                let (session, prepared) = match rng.below(7) {
                    0 => {
                        let spec = KeySpec::Aes(AesSize::Aes256);
                        let t = tpl(&[("encrypt", "true"), ("label", "aes")]);
                        let step = node
                            .fx
                            .hsm
                            .engine_mut()
                            .generate_key(node.cu, spec, &t, now);
                        (node.cu, step.map(step_command))
                    }
                    1 => {
                        let spec = KeySpec::Ec(Curve::P256);
                        let step = node.fx.hsm.engine_mut().generate_key_pair(
                            node.cu,
                            spec,
                            &tpl(&[("verify", "true")]),
                            &tpl(&[("sign", "true")]),
                            now,
                        );
                        (node.cu, step.map(step_command))
                    }
                    2 if !known.is_empty() => {
                        let h = known[rng.below(known.len())];
                        let change = [AttributeChange::Label(format!("label-{step}"))];
                        let r = node
                            .fx
                            .hsm
                            .engine_mut()
                            .set_attributes(node.cu, h, &change, now);
                        (node.cu, r.map(step_command))
                    }
                    3 if !known.is_empty() => {
                        let h = known[rng.below(known.len())];
                        let r = node.fx.hsm.engine().share_key(node.cu, h, "cu2", now);
                        (node.cu, r.map(Some))
                    }
                    4 if !known.is_empty() => {
                        let h = known[rng.below(known.len())];
                        let r = node.fx.hsm.engine_mut().delete_key(node.cu, h, now);
                        (node.cu, r.map(step_command))
                    }
                    5 => {
                        let name = format!("user{}", rng.below(6));
                        let r = node.fx.hsm.engine().create_user(
                            node.co,
                            &name,
                            Role::CryptoUser,
                            &pw(CU_PASSWORD),
                            now,
                        );
                        (node.co, r.map(Some))
                    }
                    _ => {
                        // A wrong password for cu2: a replicated failure count.
                        let s = node.fx.session();
                        let r =
                            node.fx
                                .hsm
                                .engine_mut()
                                .login(s, "cu2", &pw("wrong-password-9"), now);
                        (s, r.map(step_command))
                    }
                };
                if let Ok(Some(cmd)) = prepared {
                    log.push(Entry {
                        cmd,
                        origin: n,
                        session,
                    });
                }
            }
            // Node n applies the next entry of the log it has not applied yet.
            5..=8 => apply_next(&mut nodes[n], n, &log, &mut acks, &mut known),
            // Node n crashes and restarts from its store: memory and sessions are lost.
            _ => {
                if rng.chance(30) {
                    let store = nodes[n].fx.hsm.store().clone();
                    let applied = nodes[n].applied;
                    nodes[n] = Node::open(store, &master);
                    nodes[n].applied = applied;
                }
            }
        }
    }
    // Every node catches up with the whole log.
    for (n, node) in nodes.iter_mut().enumerate() {
        while node.applied < log.len() {
            apply_next(node, n, &log, &mut acks, &mut known);
        }
    }
    // One state everywhere, to the byte (rows include the per-row integrity tags).
    let rows = nodes[0].fx.hsm.store().rows().clone();
    for (n, node) in nodes.iter().enumerate().skip(1) {
        assert!(
            node.fx.hsm.store().rows() == &rows,
            "seed {seed}: node {n} differs from node 0"
        );
    }
    // No acknowledged write is lost.
    for h in acks.created.difference(&acks.deleted) {
        assert!(
            rows.contains_key(&(Table::Keys, h.0)),
            "seed {seed}: acknowledged key {h} is missing"
        );
    }
    for h in &acks.deleted {
        assert!(
            !rows.contains_key(&(Table::Keys, h.0)),
            "seed {seed}: key {h} was deleted"
        );
    }
    assert!(
        !acks.created.is_empty(),
        "seed {seed}: the run created keys"
    );
}

fn step_command<T>(step: Step<T>) -> Option<Command> {
    match step {
        Step::Replicate(cmd) => Some(cmd),
        Step::Done(_) => None,
    }
}

fn apply_next(
    node: &mut Node,
    n: usize,
    log: &[Entry],
    acks: &mut Acks,
    known: &mut Vec<KeyHandle>,
) {
    let Some(entry) = log.get(node.applied) else {
        return;
    };
    // Only the preparing node passes its session (it finishes a login there).
    let origin = (entry.origin == n).then_some(entry.session);
    let result = node.fx.hsm.commit(&entry.cmd, origin);
    node.applied += 1;
    if entry.origin != n {
        return;
    }
    // The preparing node acknowledges the write to its client.
    match result {
        Ok(Outcome::KeysCreated(handles)) => {
            acks.created.extend(handles.iter().copied());
            known.extend(handles);
        }
        Ok(Outcome::KeyDeleted) => {
            if let sealgate_hsm_core::CommandOp::DeleteKey { handle, .. } = &entry.cmd.op {
                acks.deleted.insert(*handle);
            }
        }
        _ => {}
    }
}

#[test]
fn replicas_converge_and_keep_acknowledged_writes() {
    for seed in 1..=8u64 {
        run(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    }
}
