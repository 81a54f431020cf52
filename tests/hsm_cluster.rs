//! Three nodes replicating with openraft, as real processes: users and keys created through one
//! node are usable through the others at once; SIGKILL of the leader during a loop of key
//! creations loses no acknowledged key, writes resume after the election, and the killed node
//! catches up when it comes back.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_client::{Client, ClientError};
use sealgate_hsm_proto::{
    AttributeValue, Curve, ErrorKind, HashAlg, KeySpec, Reply, Request, Role, Secret, SignMechanism,
};
use std::time::Duration;
use support::{CO_PASSWORD, CU1_PASSWORD, Cluster};

async fn connect(cluster: &Cluster, user: &str, password: &str) -> Client {
    support::sdk::connect(&cluster.client_toml(), user, password).await
}

async fn write_on(client: &Client, node: u32, request: Request) -> Reply {
    support::sdk::write(client, Some(node), request).await
}

fn sign(handle: u64) -> Request {
    Request::Sign {
        handle,
        mechanism: SignMechanism::Ecdsa(HashAlg::Sha256),
        data: b"replicated".to_vec(),
    }
}

fn new_key() -> Request {
    Request::GenerateKeyPair {
        spec: KeySpec::Ec(Curve::P256),
        public: vec![AttributeValue::new("verify", "true")],
        private: vec![AttributeValue::new("sign", "true")],
    }
}

async fn leader_of(client: &Client, node: u32) -> Option<u32> {
    match client.call_on(node, Request::Health).await {
        Ok(Reply::Health(h)) => h.leader,
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_replicate_survive_the_leader_and_catch_up() {
    let mut cluster = Cluster::init_replicated(3);
    cluster.start_all();

    // Activation through node 1, a crypto user created through node 2 (a follower forwards
    // to the leader), a key made through node 3: each usable everywhere at once.
    let preco = connect(&cluster, "admin", &cluster.preco_password()).await;
    write_on(
        &preco,
        1,
        Request::Activate {
            new_password: Secret::new(CO_PASSWORD.into()),
        },
    )
    .await;
    preco.close().await;
    let co = connect(&cluster, "admin", CO_PASSWORD).await;
    write_on(
        &co,
        2,
        Request::CreateUser {
            name: "cu1".into(),
            role: Role::CryptoUser,
            password: Secret::new(CU1_PASSWORD.into()),
        },
    )
    .await;
    co.close().await;
    let cu = connect(&cluster, "cu1", CU1_PASSWORD).await;
    let Reply::KeysCreated(handles) = write_on(&cu, 3, new_key()).await else {
        panic!("expected handles");
    };
    for node in 1..=3 {
        let reply = cu.call_on(node, sign(handles[1])).await.unwrap();
        assert!(
            matches!(reply, Reply::Data(ref s) if !s.is_empty()),
            "node {node}"
        );
    }

    // Kill the leader with SIGKILL while keys are being created through the other nodes.
    let leader = leader_of(&cu, 1).await.expect("a leader");
    let others: Vec<u32> = (1..=3).filter(|n| *n != leader).collect();
    let mut acknowledged = Vec::new();
    let mut refused = 0;
    let mut after_kill = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut i = 0;
    // Keys are created through the survivors, alternately; the leader dies after the fifth.
    while after_kill < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "writes did not resume after the election ({refused} refused)"
        );
        if i == 5 {
            cluster.kill(leader);
        }
        let node = others[i % 2];
        i += 1;
        match cu.call_on(node, new_key()).await {
            Ok(Reply::KeysCreated(h)) => {
                acknowledged.push(h[1]);
                if i > 5 {
                    after_kill += 1;
                }
            }
            Ok(other) => panic!("unexpected {other:?}"),
            // During the election a write is refused or interrupted, never silently lost.
            Err(e) => {
                assert!(
                    matches!(e.kind(), Some(ErrorKind::Unavailable))
                        || matches!(
                            e,
                            ClientError::Interrupted { .. } | ClientError::Timeout { .. }
                        ),
                    "{e}"
                );
                refused += 1;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    // A new leader among the survivors.
    let new_leader = leader_of(&cu, others[0]).await.expect("a new leader");
    assert_ne!(new_leader, leader);
    // Every acknowledged key exists on both survivors.
    for &h in &acknowledged {
        for &node in &others {
            let reply = cu.call_on(node, sign(h)).await;
            assert!(reply.is_ok(), "key {h} on node {node}: {reply:?}");
        }
    }

    // The killed node comes back and catches up.
    cluster.start(leader);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let last = *acknowledged.last().unwrap();
    loop {
        match cu.call_on(leader, sign(last)).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {leader} did not catch up: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    for &h in &acknowledged {
        assert!(
            cu.call_on(leader, sign(h)).await.is_ok(),
            "key {h} on node {leader}"
        );
    }
    cu.close().await;
    for id in 1..=3 {
        cluster.stop(id);
    }
}

#[test]
fn the_cli_activates_a_replicated_cluster_and_status_shows_one_leader() {
    let mut cluster = Cluster::init_replicated(3);
    cluster.start_all();
    cluster.activate();
    cluster.create_user("cu1", "cu", CU1_PASSWORD);
    // Every node applies the writes (a follower learns of the commit with the next message
    // from the leader: wait for it, bounded).
    let mut v = serde_json::Value::Null;
    support::wait_until(
        "every node has the three users",
        Duration::from_secs(10),
        || {
            v = cluster.sg_json(None, &["cluster", "status"]);
            v["data"]["nodes"]
                .as_array()
                .is_some_and(|nodes| nodes.iter().all(|n| n["info"]["users"] == 3))
        },
    );
    assert_eq!(v["ok"], true, "{v}");
    let nodes = v["data"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    let leaders: Vec<&serde_json::Value> = nodes.iter().map(|n| &n["health"]["leader"]).collect();
    assert!(leaders[0].is_u64(), "{v}");
    assert!(
        leaders.iter().all(|l| *l == leaders[0]),
        "one leader for all: {v}"
    );
    for n in nodes {
        assert_eq!(n["info"]["activated"], true, "{v}");
        assert!(n["lag"].is_u64(), "{v}");
    }
    let roles: Vec<&str> = nodes
        .iter()
        .map(|n| n["health"]["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "leader").count(), 1, "{v}");
    assert_eq!(roles.iter().filter(|r| **r == "follower").count(), 2, "{v}");
    let human = cluster.sg_ok(None, &["cluster", "status"]);
    assert_eq!(human.matches("  up    ").count(), 3, "{human}");
    for id in 1..=3 {
        cluster.stop(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_waits_for_the_clients_writes_and_says_when_it_cannot() {
    use sealgate_hsm_proto::{RequestFrame, ResponseFrame};
    let mut cluster = Cluster::init(1);
    let addr = cluster.start(1);
    let mut conn = support::raw::hello(&cluster.dir, addr).await;
    // An index the node has applied: answered at once, with the node's own index.
    let frame = RequestFrame {
        id: 2,
        min_index: 1,
        request: Request::Info,
    };
    support::raw::send_frame(&mut conn, &frame).await;
    let ResponseFrame { index, result, .. } = support::raw::recv(&mut conn).await.unwrap();
    assert!(matches!(result, Ok(Reply::Info(_))), "{result:?}");
    assert!(index >= 1, "answers carry the node's log index ({index})");
    // An index far ahead (a write this node never saw): it waits, then says so.
    let frame = RequestFrame {
        id: 3,
        min_index: index + 1_000,
        request: Request::Info,
    };
    support::raw::send_frame(&mut conn, &frame).await;
    let answer = support::raw::recv(&mut conn).await.unwrap();
    let error = answer.result.unwrap_err();
    assert_eq!(error.kind, ErrorKind::Unavailable);
    assert!(error.message.contains("not caught up"), "{error}");
    cluster.stop(1);
}
