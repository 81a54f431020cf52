//! Growing and shrinking a running cluster, as real processes through the CLI: a fourth node
//! added with `sealgate cluster add-node` gets the domain key over mutual TLS, receives the
//! cluster's state, serves signatures with the keys made before it joined, and is removed
//! with `cluster remove-node`; `cluster status` and the client SDK follow both changes with
//! client.toml unchanged. A cluster of one grows to three and keeps its quorum when a node
//! stops. Only members get the domain key.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_client::Client;
use sealgate_hsm_proto::{
    AttributeValue, Curve, ErrorKind, HashAlg, KeySpec, RaftRpc, Reply, Request, SignMechanism,
};
use std::time::Duration;
use support::{CO_PASSWORD, CU1_PASSWORD, Cluster};

const DATA: &[u8] = b"signed by a node that joined later";

fn sign(handle: u64) -> Request {
    Request::Sign {
        handle,
        mechanism: SignMechanism::Ecdsa(HashAlg::Sha256),
        data: DATA.to_vec(),
    }
}

fn new_key() -> Request {
    Request::GenerateKeyPair {
        spec: KeySpec::Ec(Curve::P256),
        public: vec![AttributeValue::new("verify", "true")],
        private: vec![AttributeValue::new("sign", "true")],
    }
}

/// `cluster status` in JSON once `cond` holds for it (bounded).
fn status_when(
    cluster: &Cluster,
    what: &str,
    cond: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let mut v = serde_json::Value::Null;
    support::wait_until(what, Duration::from_secs(30), || {
        v = cluster.sg_json(None, &["cluster", "status"]);
        cond(&v)
    });
    v
}

fn nodes(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["data"]["nodes"].as_array().cloned().unwrap_or_default()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    nodes(v).iter().filter_map(|n| n["id"].as_u64()).collect()
}

/// Keeps calling until node `id` signs with `handle` (bounded), and returns the signature.
/// The JSON lines of `path` (none if it does not exist).
fn jsonl(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

/// The management events named `name` that nodes 1 to 3 recorded, oldest first.
fn events(cluster: &Cluster, name: &str) -> Vec<serde_json::Value> {
    let mut all: Vec<serde_json::Value> = (1..=3)
        .flat_map(|id| {
            jsonl(
                &cluster
                    .dir
                    .join(format!("node-{id}/management-events.jsonl")),
            )
        })
        .filter(|e| e["eventName"] == name)
        .collect();
    all.sort_by(|a, b| a["eventTime"].as_str().cmp(&b["eventTime"].as_str()));
    all
}

async fn signature_from(client: &Client, id: u32, handle: u64) -> Vec<u8> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match client.call_on(id, sign(handle)).await {
            Ok(Reply::Data(sig)) => return sig,
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node {id} never signed with key {handle}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fourth_node_joins_signs_with_existing_keys_and_is_removed() {
    let mut cluster = Cluster::init_replicated(3);
    cluster.start_all();
    cluster.activate();
    cluster.create_user("cu1", "cu", CU1_PASSWORD);
    // The node that served the creation audited it; the other two audit it as they apply it,
    // naming the node it came from.
    let creations = |id: u32| {
        jsonl(&cluster.dir.join(format!("node-{id}/audit.jsonl")))
            .into_iter()
            .filter(|r| r["opcode"] == "CN_CREATE_USER" && r["user_name"] == "cu1")
            .collect::<Vec<_>>()
    };
    support::wait_until(
        "every node audits cu1's creation",
        Duration::from_secs(10),
        || (1..=3).all(|id| creations(id).len() == 1),
    );
    let served: Vec<u32> = (1..=3)
        .filter(|&id| creations(id)[0]["origin_node"].is_null())
        .collect();
    assert_eq!(served.len(), 1, "{served:?}");
    for id in 1..=3 {
        let r = &creations(id)[0];
        assert_eq!(r["actor_name"], "admin", "{r}");
        assert_eq!(r["actor_type"], "CN_CRYPTO_OFFICER", "{r}");
        assert_eq!(r["user_type"], "CN_CRYPTO_USER", "{r}");
        assert_eq!(r["response"], "SUCCESS", "{r}");
        if id != served[0] {
            assert_eq!(r["origin_node"], served[0], "{r}");
            assert!(r["session"].is_null(), "{r}");
        }
    }
    let cu = support::sdk::connect(&cluster.client_toml(), "cu1", CU1_PASSWORD).await;
    let Reply::KeysCreated(handles) = support::sdk::write(&cu, None, new_key()).await else {
        panic!("expected handles");
    };
    let (public, private) = (handles[0], handles[1]);

    // Only a crypto officer changes the membership; a refusal leaves no files behind.
    let refused = cluster.sg_json(Some(("cu1", CU1_PASSWORD)), &["cluster", "add-node"]);
    assert_eq!(refused["ok"], false, "{refused}");
    assert_eq!(refused["error"]["kind"], "permission-denied", "{refused}");
    assert!(!cluster.dir.join("node-4.toml").exists());
    assert!(!cluster.dir.join("node-4").exists());
    let client_toml = std::fs::read(cluster.client_toml()).unwrap();
    // The refusal is a management event with its error code, and an audit record.
    let denied = events(&cluster, "AddNode");
    assert_eq!(denied.len(), 1, "{denied:?}");
    assert_eq!(denied[0]["errorCode"], "permission-denied", "{}", denied[0]);
    assert_eq!(
        denied[0]["userIdentity"]["userName"], "cu1",
        "{}",
        denied[0]
    );
    assert_eq!(
        denied[0]["userIdentity"]["type"], "CryptoUser",
        "{}",
        denied[0]
    );
    assert_eq!(denied[0]["sourceIPAddress"], "127.0.0.1", "{}", denied[0]);
    assert!(denied[0]["responseElements"].is_null(), "{}", denied[0]);

    // Node 4 is added, then started with no domain key and no store of its own.
    let id = cluster.add_node();
    assert_eq!(id, 4);
    let added = events(&cluster, "AddNode");
    assert_eq!(added.len(), 2, "{added:?}");
    let added = &added[1];
    assert!(added["errorCode"].is_null(), "{added}");
    assert_eq!(added["userIdentity"]["userName"], "admin", "{added}");
    assert_eq!(added["userIdentity"]["type"], "CryptoOfficer", "{added}");
    assert_eq!(added["requestParameters"]["hsmId"], 4, "{added}");
    let members = added["responseElements"]["members"].as_array().unwrap();
    assert!(members.iter().any(|m| m["id"] == 4), "{added}");
    assert_eq!(added["clusterId"].as_str().unwrap().len(), 32, "{added}");
    assert!(!cluster.dir.join("node-4/master.key").exists());
    assert!(!cluster.dir.join("node-4/store.redb").exists());
    cluster.start(4);
    let v = status_when(&cluster, "node 4 is a caught-up voter", |v| {
        nodes(v)
            .iter()
            .any(|n| n["id"] == 4 && n["health"]["role"] == "follower" && n["lag"] == 0)
    });
    let all = nodes(&v);
    assert_eq!(ids(&v), [1, 2, 3, 4], "{v}");
    for n in &all {
        assert_eq!(n["info"]["keys"], all[0]["info"]["keys"], "{v}");
        assert_eq!(n["info"]["users"], 3, "{v}");
    }
    // Its audit stream starts with its start and the cluster state it received (a clone).
    let four = jsonl(&cluster.dir.join("node-4/audit.jsonl"));
    let opcodes: Vec<&str> = four.iter().map(|r| r["opcode"].as_str().unwrap()).collect();
    assert_eq!(
        opcodes[..2],
        ["CN_NODE_START", "CN_CLONE_TARGET_INIT"],
        "{four:?}"
    );
    // It received the domain key from a member, and keeps it like the others.
    assert_eq!(
        std::fs::read(cluster.dir.join("node-4/master.key")).unwrap(),
        std::fs::read(cluster.dir.join("node-1/master.key")).unwrap()
    );

    // The SDK learned of node 4 from the nodes: it signs with the key made before it joined.
    let signature = signature_from(&cu, 4, private).await;
    let verified = cu
        .call_on(
            1,
            Request::Verify {
                handle: public,
                mechanism: SignMechanism::Ecdsa(HashAlg::Sha256),
                data: DATA.to_vec(),
                signature,
            },
        )
        .await
        .unwrap();
    assert_eq!(verified, Reply::Verified);
    // A key made now (through any node) is usable on node 4 at once.
    let Reply::KeysCreated(later) = support::sdk::write(&cu, Some(2), new_key()).await else {
        panic!("expected handles");
    };
    assert!(matches!(
        cu.call_on(4, sign(later[1])).await,
        Ok(Reply::Data(_))
    ));
    assert_eq!(std::fs::read(cluster.client_toml()).unwrap(), client_toml);

    // Removing an unknown node is refused; removing node 4 shrinks the cluster to three.
    let unknown = cluster.sg_json(
        Some(("admin", CO_PASSWORD)),
        &["cluster", "remove-node", "--id", "9"],
    );
    assert_eq!(unknown["error"]["kind"], "not-found", "{unknown}");
    let removed = cluster.sg_json(
        Some(("admin", CO_PASSWORD)),
        &["cluster", "remove-node", "--id", "4"],
    );
    assert_eq!(removed["ok"], true, "{removed}");
    assert_eq!(removed["data"]["members"].as_array().unwrap().len(), 3);
    let v = status_when(&cluster, "status shows three nodes", |v| {
        ids(v) == [1, 2, 3]
    });
    assert!(
        nodes(&v).iter().all(|n| n["health"]["role"] != "removed"),
        "{v}"
    );
    support::wait_until("the SDK drops node 4", Duration::from_secs(10), || {
        cu.nodes().iter().all(|n| n.id != 4)
    });
    for _ in 0..10 {
        assert!(matches!(cu.call(sign(private)).await, Ok(Reply::Data(_))));
    }
    // The removed node finds out (the leader no longer talks to it), stops replicating and
    // refuses every request but hello and health; its health answer reports the membership
    // without it, so a client that only knows it finds the members.
    let addr = cluster.node(4).addr;
    let mut conn = support::raw::hello(&cluster.dir, addr).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut n = 10;
    let error = loop {
        n += 1;
        support::raw::send(&mut conn, n, Request::Info).await;
        match support::raw::recv(&mut conn).await.unwrap().result {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "node 4 still serves clients after its removal"
                );
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    };
    assert_eq!(error.kind, ErrorKind::Unavailable, "{error}");
    assert!(error.message.contains("removed"), "{error}");
    let mut file: sealgate_hsm_client::ClientFile =
        toml::from_str(&std::fs::read_to_string(cluster.client_toml()).unwrap()).unwrap();
    file.nodes.retain(|n| n.id == 1);
    file.nodes[0].id = 4;
    file.nodes[0].address = addr.to_string();
    let only_four = cluster.dir.join("only-node-4.toml");
    std::fs::write(&only_four, toml::to_string(&file).unwrap()).unwrap();
    let status = cluster.sg_json(
        None,
        &[
            "--cluster",
            only_four.to_str().unwrap(),
            "cluster",
            "status",
        ],
    );
    assert_eq!(ids(&status), [1, 2, 3], "{status}");
    cu.close().await;
    for id in 1..=4 {
        cluster.stop(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_node_cluster_grows_to_three_and_keeps_its_quorum() {
    let mut cluster = Cluster::init(1);
    cluster.start(1);
    cluster.activate();
    cluster.create_user("cu1", "cu", CU1_PASSWORD);
    for expected in [2, 3] {
        let id = cluster.add_node();
        assert_eq!(id, expected);
        cluster.start(id);
    }
    let v = status_when(&cluster, "three voters", |v| {
        let roles: Vec<String> = nodes(v)
            .iter()
            .filter_map(|n| n["health"]["role"].as_str().map(str::to_owned))
            .collect();
        roles.iter().filter(|r| **r == "leader").count() == 1
            && roles.iter().filter(|r| **r == "follower").count() == 2
    });
    assert_eq!(ids(&v), [1, 2, 3], "{v}");

    // Node 1, the first leader, stops: nodes 2 and 3 are a quorum and take writes.
    let cu = support::sdk::connect(&cluster.client_toml(), "cu1", CU1_PASSWORD).await;
    cluster.stop(1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let handle = loop {
        match cu.call_on(2, new_key()).await {
            Ok(Reply::KeysCreated(h)) => break h[1],
            other => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "nodes 2 and 3 took no write: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    for id in [2, 3] {
        signature_from(&cu, id, handle).await;
    }
    // Node 1 comes back (its configuration still says it was alone) and follows.
    cluster.start(1);
    signature_from(&cu, 1, handle).await;
    cu.close().await;
    for id in 1..=3 {
        cluster.stop(id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_members_get_the_domain_key() {
    let mut cluster = Cluster::init(1);
    let addr = cluster.start(1);
    // A node certificate from the cluster CA for node 7, which is not a member.
    let outsider =
        sealgate_hsm_node::init::add_node_files(&sealgate_hsm_node::init::AddNodeOptions {
            dir: cluster.dir.clone(),
            members: vec![(1, addr.to_string())],
            id: Some(7),
            host: None,
            port: None,
        })
        .unwrap();
    let ask = |cert: &str, key: &str| {
        let ca = cluster.dir.join("ca.pem");
        let (cert, key) = (cluster.dir.join(cert), cluster.dir.join(key));
        async move {
            let config = support::raw::client_config(&ca, Some((&cert, &key)));
            let mut conn = support::raw::connect(addr, config).await.unwrap();
            support::raw::send(
                &mut conn,
                1,
                Request::Hello(sealgate_hsm_proto::Hello::current("e2e")),
            )
            .await;
            support::raw::recv(&mut conn).await.unwrap();
            support::raw::send(
                &mut conn,
                2,
                Request::Raft {
                    rpc: RaftRpc::DomainKey,
                    payload: Vec::new(),
                },
            )
            .await;
            support::raw::recv(&mut conn).await.unwrap().result
        }
    };
    let error = ask("node-7/node.pem", "node-7/node-key.pem")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::PermissionDenied, "{error}");
    assert!(error.message.contains("not a member"), "{error}");
    let error = ask("client.pem", "client-key.pem").await.unwrap_err();
    assert_eq!(error.kind, ErrorKind::PermissionDenied, "{error}");
    // Node 1 itself (its own certificate) is not given the key either.
    let error = ask("node-1/node.pem", "node-1/node-key.pem")
        .await
        .unwrap_err();
    assert_eq!(error.kind, ErrorKind::PermissionDenied, "{error}");
    drop(outsider);
    assert!(
        !cluster.dir.join("node-7").exists(),
        "files removed when not kept"
    );
    cluster.stop(1);
}
