//! A real node holding thousands of concurrent client connections, and refusing connections
//! beyond its configured maximum with one log line.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_proto::{Reply, Request};
use std::time::Duration;
use support::raw;
use support::{Cluster, log_lines, wait_until};

const CONNECTIONS: usize = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_connections_at_once_are_all_served() {
    let mut cluster = Cluster::init(1);
    let addr = cluster.start(1);
    let dir = cluster.dir.clone();

    // Open them 250 at a time (the listen backlog is finite), keep every one open.
    let mut open = Vec::with_capacity(CONNECTIONS);
    for _ in 0..CONNECTIONS / 250 {
        let wave: Vec<_> = (0..250)
            .map(|_| {
                let dir = dir.clone();
                tokio::spawn(async move { raw::hello(&dir, addr).await })
            })
            .collect();
        for conn in wave {
            open.push(
                tokio::time::timeout(Duration::from_secs(60), conn)
                    .await
                    .expect("connected in time")
                    .unwrap(),
            );
        }
    }
    // Every one of them is answered, concurrently.
    let checks: Vec<_> = open
        .into_iter()
        .enumerate()
        .map(|(i, mut conn)| {
            tokio::spawn(async move {
                assert!(
                    raw::healthy(&mut conn, 10 + i as u64).await,
                    "connection {i}"
                );
                conn
            })
        })
        .collect();
    let mut open = Vec::with_capacity(CONNECTIONS);
    for c in checks {
        open.push(c.await.unwrap());
    }
    // The node counts them.
    raw::send(&mut open[0], 99, Request::Health).await;
    let Some(answer) = raw::recv(&mut open[0]).await else {
        panic!("health answered");
    };
    let Ok(Reply::Health(health)) = answer.result else {
        panic!("{answer:?}");
    };
    assert!(health.connections as usize >= CONNECTIONS, "{health:?}");
    drop(open);
    assert_eq!(cluster.stop(1).code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_maximum_are_refused_and_logged() {
    let mut cluster = Cluster::init(1);
    cluster.set_limits(1, |l| l.max_connections = 3);
    let addr = cluster.start(1);
    let dir = cluster.dir.clone();
    let mut first = Vec::new();
    for _ in 0..3 {
        first.push(raw::hello(&dir, addr).await);
    }
    let config = raw::client_config(
        &dir.join("ca.pem"),
        Some((&dir.join("client.pem"), &dir.join("client-key.pem"))),
    );
    // The fourth is closed at once: the TLS handshake or the first read fails.
    if let Ok(mut conn) = raw::connect(addr, config).await {
        raw::send(&mut conn, 1, Request::Health).await;
        assert!(raw::recv(&mut conn).await.is_none());
    }
    let log = cluster.node_log(1);
    wait_until("refusal logged", Duration::from_secs(5), || {
        log_lines(&log, "connections open (limit)").len() == 1
    });
    // The three keep working; after one closes, a new one is accepted.
    for (i, conn) in first.iter_mut().enumerate() {
        assert!(raw::healthy(conn, 50 + i as u64).await);
    }
    drop(first.pop());
    let mut again = None;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let config = raw::client_config(
            &dir.join("ca.pem"),
            Some((&dir.join("client.pem"), &dir.join("client-key.pem"))),
        );
        if let Ok(mut conn) = raw::connect(addr, config).await {
            raw::send(
                &mut conn,
                1,
                Request::Hello(sealgate_hsm_proto::Hello::current("t")),
            )
            .await;
            if raw::recv(&mut conn).await.is_some() {
                again = Some(conn);
                break;
            }
        }
    }
    assert!(
        again.is_some(),
        "a slot freed by a closed connection is used again"
    );
    cluster.stop(1);
}
