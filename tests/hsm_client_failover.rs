//! The client SDK against real node processes: load spread over three nodes, a node killed
//! with SIGKILL mid-load without losing a retryable request, `busy` answers retried on another
//! node, and a restarted node used again.
//!
//! The nodes replicate (openraft): the users and the key are made once and used on every node.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_client::{Client, NodeStatus};
use sealgate_hsm_proto::{
    AttributeValue, Curve, HashAlg, KeySpec, Reply, Request, Secret, SignMechanism,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use support::{CO_PASSWORD, CU1_PASSWORD, Cluster};

use support::sdk::connect;

async fn write(client: &Client, request: Request) -> Reply {
    support::sdk::write(client, None, request).await
}

/// Starts every node of a replicating cluster and sets it up (activate, a CU, a P-256 key).
/// Returns the private key's handle.
async fn replicated_nodes(cluster: &mut Cluster) -> u64 {
    cluster.start_all();
    let all = cluster.client_toml();
    let preco = connect(&all, "admin", &cluster.preco_password()).await;
    write(
        &preco,
        Request::Activate {
            new_password: Secret::new(CO_PASSWORD.into()),
        },
    )
    .await;
    preco.close().await;
    let co = connect(&all, "admin", CO_PASSWORD).await;
    write(
        &co,
        Request::CreateUser {
            name: "cu1".into(),
            role: sealgate_hsm_proto::Role::CryptoUser,
            password: Secret::new(CU1_PASSWORD.into()),
        },
    )
    .await;
    co.close().await;
    let cu = connect(&all, "cu1", CU1_PASSWORD).await;
    let Reply::KeysCreated(handles) = write(
        &cu,
        Request::GenerateKeyPair {
            spec: KeySpec::Ec(Curve::P256),
            public: vec![AttributeValue::new("verify", "true")],
            private: vec![
                AttributeValue::new("sign", "true"),
                AttributeValue::new("label", "web"),
            ],
        },
    )
    .await
    else {
        panic!("expected handles");
    };
    cu.close().await;
    handles[1]
}

fn sign(handle: u64) -> Request {
    Request::Sign {
        handle,
        mechanism: SignMechanism::Ecdsa(HashAlg::Sha256),
        data: b"failover".to_vec(),
    }
}

fn status(client: &Client, id: u32) -> NodeStatus {
    client.nodes().into_iter().find(|n| n.id == id).unwrap()
}

async fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Keeps `workers` tasks signing until `stop`; counts successes and failures.
fn load(
    client: &Client,
    handle: u64,
    workers: usize,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicU64>,
    failed: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Vec<String>>> {
    (0..workers)
        .map(|_| {
            let (client, stop, ok, failed) = (
                client.clone(),
                Arc::clone(stop),
                Arc::clone(ok),
                Arc::clone(failed),
            );
            tokio::spawn(async move {
                let mut errors = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match client.call(sign(handle)).await {
                        Ok(Reply::Data(sig)) if !sig.is_empty() => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.push(format!("{other:?}"));
                        }
                    }
                }
                errors
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_node_mid_load_loses_no_request_and_a_restarted_node_is_used_again() {
    let mut cluster = Cluster::init_replicated(3);
    let handle = replicated_nodes(&mut cluster).await;
    let client = connect(&cluster.client_toml(), "cu1", CU1_PASSWORD).await;
    wait_for("all three nodes up", Duration::from_secs(15), || {
        client.nodes().iter().all(|n| n.up)
    })
    .await;

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let workers = load(&client, handle, 16, &stop, &ok, &failed);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let before_kill = ok.load(Ordering::Relaxed);
    assert!(before_kill > 0, "load is running");
    for id in 1..=3 {
        assert!(
            status(&client, id).sent > 0,
            "node {id} took part in the load"
        );
    }

    // SIGKILL node 2 in the middle of the load.
    cluster.kill(2);
    wait_for("node 2 marked down", Duration::from_secs(15), || {
        !status(&client, 2).up
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        ok.load(Ordering::Relaxed) > before_kill,
        "the others carry the load"
    );

    // Restart it: the client reconnects, logs in again and uses it.
    cluster.start(2);
    wait_for("node 2 back up", Duration::from_secs(20), || {
        status(&client, 2).up
    })
    .await;
    let sent_after_restart = status(&client, 2).sent;
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.unwrap());
    }
    assert!(
        status(&client, 2).sent > sent_after_restart,
        "the restarted node is used again"
    );
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "lost requests: {errors:?}"
    );
    assert!(
        status(&client, 2).failovers > 0,
        "requests in flight on node 2 were re-sent elsewhere: {:?}",
        client.nodes()
    );
    client.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_answers_are_retried_on_another_node() {
    let mut cluster = Cluster::init_replicated(2);
    // Node 2 has one crypto thread and room for one queued request: under load it answers
    // busy most of the time.
    cluster.set_limits(2, |l| {
        l.crypto_threads = 1;
        l.max_queued = 1;
    });
    replicated_nodes(&mut cluster).await;

    // Digests are cheap; 32 concurrent callers overflow node 2's queue.
    let client = connect(&cluster.client_toml(), "cu1", CU1_PASSWORD).await;
    wait_for("both nodes up", Duration::from_secs(15), || {
        client.nodes().iter().all(|n| n.up)
    })
    .await;
    let mut tasks = Vec::new();
    for i in 0..32u32 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut failures = 0;
            for j in 0..50u32 {
                let request = Request::Digest {
                    hash: HashAlg::Sha256,
                    data: format!("{i}-{j}").into_bytes(),
                };
                if client.call(request).await.is_err() {
                    failures += 1;
                }
            }
            failures
        }));
    }
    let mut failures = 0;
    for t in tasks {
        failures += t.await.unwrap();
    }
    let node2 = status(&client, 2);
    assert!(
        node2.retries > 0,
        "node 2 answered busy and it was retried: {node2:?}"
    );
    assert_eq!(failures, 0, "every busy answer was retried to success");
    client.close().await;
}
