//! The client against fake nodes on 127.0.0.1 (real mutual TLS, the real protocol): pipelining,
//! busy retries, failover, interrupted writes, health and reconnection, login strikes, sessions
//! ended by the node, close.

mod fake;

use crate::{
    Client, ClientConfig, ClientError, ClientFile, ClientSection, ConnectError, Credentials,
    ErrorKind, NodeSection, NodeStatus, Reply, Request, Secret,
};
use fake::{FakeNode, PASSWORD, Pki};
use sealgate_hsm_proto::{HashAlg, SignMechanism, WrapMechanism};
use std::future::Future;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// Every test finishes within this, or fails.
const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(LIMIT, future)
        .await
        .expect("test timed out")
}

async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let wait = async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .unwrap_or_else(|_| panic!("never happened: {what}"));
}

fn alice(password: &str) -> Option<Credentials> {
    Some(Credentials::new("alice", Secret::new(password.into())))
}

/// A digest the fake node answers after `delay` × 10 ms with `[node, delay, tag]`.
fn digest(delay: u8, tag: u8) -> Request {
    Request::Digest {
        hash: HashAlg::Sha256,
        data: vec![delay, tag],
    }
}

fn data(reply: Reply) -> Vec<u8> {
    match reply {
        Reply::Data(data) => data,
        other => panic!("expected data, got {other:?}"),
    }
}

fn status(client: &Client, id: u32) -> NodeStatus {
    client.nodes().into_iter().find(|n| n.id == id).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn callers_writing_at_once_on_threads_strand_no_frame() {
    // Callers write their own frames; whoever holds the writer writes the others' too. Many
    // callers on several threads at once: every request is written and answered (a stranded
    // frame would be a request that times out).
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        // No health checks, whose frames would carry a stranded one along.
        let mut config = pki.config(&[&node]);
        config.health_interval = Duration::from_secs(3600);
        let client = Client::connect(config, alice(PASSWORD)).await.unwrap();
        // Rounds of 8 callers sending one request each at the same moment, then nothing:
        // a frame queued behind another caller's write and left there would never be sent.
        for round in 0..100u32 {
            let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(8));
            let tasks: Vec<_> = (0..8u8)
                .map(|t| {
                    let (client, barrier) = (client.clone(), std::sync::Arc::clone(&barrier));
                    tokio::spawn(async move {
                        barrier.wait().await;
                        let tag = t.wrapping_add(round as u8);
                        let reply = client.call_on(1, digest(0, tag)).await.unwrap();
                        assert_eq!(data(reply), vec![1, 0, tag]);
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        }
        assert_eq!(node.ctl.count("digest"), 800);
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_out_of_order_on_one_connection() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        let (done_tx, mut done) = tokio::sync::mpsc::unbounded_channel();
        for (tag, delay) in [(1u8, 30u8), (2, 15), (3, 0)] {
            let client = client.clone();
            let done_tx = done_tx.clone();
            tokio::spawn(async move {
                let reply = client.call_on(1, digest(delay, tag)).await.unwrap();
                assert_eq!(
                    data(reply),
                    vec![1, delay, tag],
                    "answer matched to its request"
                );
                done_tx.send(tag).unwrap();
            });
            // Make the send order certain.
            eventually("request sent", || {
                node.ctl.count("digest") == usize::from(tag)
            })
            .await;
        }
        drop(done_tx);
        let mut order = Vec::new();
        while let Some(tag) = done.recv().await {
            order.push(tag);
        }
        assert_eq!(
            order,
            vec![3, 2, 1],
            "answers come back as the node finishes them"
        );

        // Many at once, all matched to the right request.
        let calls = (0..200u32).map(|i| {
            let client = client.clone();
            async move {
                let tag = (i % 256) as u8;
                let reply = client.call(digest((i % 3) as u8, tag)).await.unwrap();
                assert_eq!(data(reply), vec![1, (i % 3) as u8, tag]);
            }
        });
        futures_util::future::join_all(calls).await;
        assert_eq!(
            node.ctl.accepted.load(Ordering::SeqCst),
            1,
            "one connection"
        );
        let status = status(&client, 1);
        assert!(status.up);
        assert_eq!(status.sent, 1 + 3 + 200, "login, 3 pinned, 200 calls");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_retried_then_succeeds() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        node.ctl.busy.store(2, Ordering::SeqCst);
        let reply = client.call(Request::Random { len: 4 }).await.unwrap();
        assert_eq!(data(reply), vec![1; 4]);
        assert_eq!(node.ctl.count("random"), 3);
        assert_eq!(status(&client, 1).retries, 2);

        // call_on retries busy too (on the same node).
        node.ctl.busy.store(1, Ordering::SeqCst);
        client.call_on(1, Request::Random { len: 1 }).await.unwrap();
        assert_eq!(node.ctl.count("random"), 5);
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_after_every_retry_is_an_error_of_kind_busy() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        node.ctl.busy.store(100, Ordering::SeqCst);
        let error = client.call(Request::Random { len: 4 }).await.unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::Busy));
        assert_eq!(
            error.to_string(),
            "node is busy; retry later",
            "the node's message"
        );
        assert_eq!(
            node.ctl.count("random"),
            1 + 3,
            "first try and busy_retries = 3"
        );
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_is_retried_on_another_node() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        for _ in 0..20 {
            a.ctl.busy.store(1, Ordering::SeqCst);
            let reply = client.call(Request::Random { len: 1 }).await.unwrap();
            assert_eq!(data(reply), vec![2], "only node 2 answers");
        }
        assert_eq!(
            b.ctl.count("random"),
            20,
            "never a second try on the busy node"
        );
        assert!(
            a.ctl.count("random") >= 1,
            "node 1 was chosen at least once"
        );
        assert_eq!(status(&client, 1).retries as usize, a.ctl.count("random"));
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_fail_over_when_a_node_drops_the_connection() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        *a.ctl.drop_on.lock().unwrap() = Some("digest");
        let calls = (0..16u8).map(|tag| {
            let client = client.clone();
            async move {
                // 50 ms each, so several are in flight together and both nodes get some.
                let reply = client.call(digest(5, tag)).await.unwrap();
                let data = data(reply);
                assert_eq!(data[1..], [5, tag]);
                data[0]
            }
        });
        let answered_by = futures_util::future::join_all(calls).await;
        assert!(
            a.ctl.count("digest") >= 1,
            "node 1 got requests before it dropped"
        );
        assert_eq!(answered_by.len(), 16, "no request lost");
        let failovers = status(&client, 1).failovers;
        assert!(
            failovers >= 1,
            "requests in flight on node 1 went to node 2"
        );
        assert_eq!(
            b.ctl.count("digest"),
            answered_by.iter().filter(|n| **n == 2).count(),
            "every request node 2 saw was answered once"
        );
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_on_a_dying_node_is_interrupted_and_never_repeated() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        // Load node 2 so power of two choices picks node 1 for the write.
        let slow: Vec<_> = (0..3u8)
            .map(|tag| {
                let client = client.clone();
                tokio::spawn(async move { client.call_on(2, digest(50, tag)).await })
            })
            .collect();
        eventually("node 2 loaded", || status(&client, 2).outstanding >= 3).await;
        *a.ctl.drop_on.lock().unwrap() = Some("delete-key");
        let error = client
            .call(Request::DeleteKey { handle: 7 })
            .await
            .unwrap_err();
        assert!(
            matches!(
                error,
                ClientError::Interrupted {
                    node: 1,
                    request: "delete-key"
                }
            ),
            "{error:?}"
        );
        assert!(
            error
                .to_string()
                .contains("may or may not have been applied"),
            "{error}"
        );
        for task in slow {
            task.await.unwrap().unwrap();
        }
        assert_eq!(a.ctl.count("delete-key"), 1);
        assert_eq!(
            b.ctl.count("delete-key"),
            0,
            "never re-sent to another node"
        );
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_stalled_node_time_out_and_reads_fail_over() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let mut config = pki.config(&[&a, &b]);
        config.request_timeout = Duration::from_millis(300);
        config.health_interval = Duration::from_secs(60);
        let client = Client::connect(config, alice(PASSWORD)).await.unwrap();
        a.ctl.stall.store(true, Ordering::SeqCst);

        let error = client
            .call_on(1, Request::Random { len: 1 })
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::Timeout { node: 1 }),
            "{error:?}"
        );
        let error = client
            .call_on(1, Request::DeleteKey { handle: 1 })
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::Interrupted { node: 1, .. }),
            "{error:?}"
        );

        for _ in 0..6 {
            let reply = client.call(Request::Random { len: 1 }).await.unwrap();
            assert_eq!(data(reply), vec![2]);
        }
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_health_check_marks_the_node_down_until_it_recovers() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let mut config = pki.config(&[&a, &b]);
        config.request_timeout = Duration::from_millis(300);
        let client = Client::connect(config, alice(PASSWORD)).await.unwrap();
        a.ctl.stall.store(true, Ordering::SeqCst);
        eventually("node 1 down", || !status(&client, 1).up).await;
        let last_error = status(&client, 1).last_error.unwrap();
        assert!(last_error.contains("health check"), "{last_error}");
        a.ctl.stall.store(false, Ordering::SeqCst);
        eventually("node 1 up again", || status(&client, 1).up).await;
        client.call_on(1, Request::Random { len: 1 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_comes_back_is_logged_in_and_used_again() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        a.set_down(true);
        eventually("node 1 down", || !status(&client, 1).up).await;
        let before = a.ctl.count("random");
        for _ in 0..10 {
            let reply = client.call(Request::Random { len: 1 }).await.unwrap();
            assert_eq!(data(reply), vec![2]);
        }
        assert_eq!(a.ctl.count("random"), before);
        let error = client
            .call_on(1, Request::Random { len: 1 })
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::NodeDown { node: 1 }),
            "{error:?}"
        );

        a.set_down(false);
        eventually("node 1 up again", || status(&client, 1).up).await;
        assert_eq!(
            a.ctl.count("login"),
            2,
            "logged in again after reconnecting"
        );
        let mut served = 0;
        for _ in 0..50 {
            let reply = client.call(Request::Random { len: 1 }).await.unwrap();
            served += usize::from(data(reply) == vec![1]);
        }
        assert!(served >= 1, "node 1 serves requests again");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_down_at_connect_join_later() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        b.set_down(true);
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        let node2 = status(&client, 2);
        assert!(!node2.up);
        assert!(node2.last_error.is_some());
        b.set_down(false);
        eventually("node 2 up", || status(&client, 2).up).await;
        assert_eq!(b.ctl.count("login"), 1);
        client.call_on(2, Request::Random { len: 1 }).await.unwrap();
        client.close().await;

        // All nodes down: connect fails and says why.
        a.set_down(true);
        let error = Client::connect(pki.config(&[&a]), None).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Connect { node: 1, .. }),
            "{error:?}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_costs_one_login_attempt_across_three_nodes() {
    within(async {
        let pki = Pki::new();
        let nodes = [
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
            FakeNode::start(3, &pki).await,
        ];
        let config = pki.config(&[&nodes[0], &nodes[1], &nodes[2]]);
        let error = Client::connect(config, alice("wrong password"))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::LoginFailed));
        assert_eq!(error.to_string(), "wrong user name or password");
        tokio::time::sleep(Duration::from_millis(300)).await;
        let logins: usize = nodes.iter().map(|n| n.ctl.count("login")).sum();
        assert_eq!(logins, 1);
        for node in &nodes {
            eventually("connections closed", || {
                node.ctl.open.load(Ordering::SeqCst) == 0
            })
            .await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_relogin_keeps_the_node_down_without_retrying() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        a.set_down(true);
        *a.ctl.password.lock().unwrap() = "changed meanwhile".into();
        eventually("node 1 down", || !status(&client, 1).up).await;
        a.set_down(false);
        eventually("re-login tried", || a.ctl.count("login") == 2).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(a.ctl.count("login"), 2, "no second guess");
        let node1 = status(&client, 1);
        assert!(!node1.up);
        assert!(node1.parked, "parked, for the operator to see");
        assert!(!status(&client, 2).parked);
        let last_error = node1.last_error.unwrap();
        assert!(last_error.contains("login refused"), "{last_error}");
        assert!(!last_error.contains(PASSWORD) && !last_error.contains("changed"));
        client.call(Request::Random { len: 1 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_ends_the_session_is_logged_in_again_and_the_read_succeeds() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        // The password was reset (say): the node ends the session, the connection stays.
        node.end_sessions();
        let reply = client.call(Request::Random { len: 2 }).await.unwrap();
        assert_eq!(data(reply), vec![1, 1]);
        assert_eq!(
            node.ctl.count("random"),
            2,
            "refused once, sent again after login"
        );
        assert_eq!(node.ctl.count("login"), 2, "logged in again");
        assert_eq!(node.ctl.accepted.load(Ordering::SeqCst), 2, "reconnected");
        eventually("old connection closed", || {
            node.ctl.open.load(Ordering::SeqCst) == 1
        })
        .await;
        let node1 = status(&client, 1);
        assert!(node1.up && !node1.parked, "{node1:?}");
        assert_eq!((node1.retries, node1.failovers), (1, 0));
        let last_error = node1.last_error.unwrap();
        assert!(
            last_error.contains("ended the session") && last_error.contains("not-logged-in"),
            "{last_error}"
        );

        // Pinned to the node, the same.
        node.end_sessions();
        let reply = client.call_on(1, Request::Random { len: 1 }).await.unwrap();
        assert_eq!(data(reply), vec![1]);
        assert_eq!(node.ctl.count("random"), 4);
        assert_eq!(node.ctl.count("login"), 3);
        assert!(status(&client, 1).up);
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answered_not_logged_in_goes_to_another_node_while_the_node_logs_in_again() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        a.end_sessions();
        // Until node 1 gets one (power of two choices picks it half the time).
        for _ in 0..50 {
            client.call(Request::Random { len: 1 }).await.unwrap();
            if a.ctl.count("random") > 0 {
                break;
            }
        }
        assert_eq!(a.ctl.count("random"), 1, "refused, and sent elsewhere");
        eventually("node 1 up again", || status(&client, 1).up).await;
        assert_eq!(a.ctl.count("login"), 2, "node 1 logged in again");
        assert_eq!(a.ctl.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(b.ctl.count("login"), 1, "node 2 untouched");
        assert_eq!(b.ctl.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(status(&client, 1).retries, 1);
        let reply = client.call_on(1, Request::Random { len: 1 }).await.unwrap();
        assert_eq!(data(reply), vec![1], "node 1 serves again");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_not_logged_in_is_returned_and_never_sent_again() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        // Both nodes ended the session: whichever gets the write refuses it.
        a.end_sessions();
        b.end_sessions();
        let error = client
            .call(Request::DeleteKey { handle: 7 })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
        assert!(matches!(error, ClientError::Node { .. }), "{error:?}");
        let (got, other) = match error.node() {
            Some(1) => (&a, &b),
            Some(2) => (&b, &a),
            node => panic!("{node:?}"),
        };
        eventually("the node logged in again", || {
            status(&client, got.id).up && got.ctl.count("login") == 2
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(got.ctl.count("delete-key"), 1);
        assert_eq!(other.ctl.count("delete-key"), 0, "never sent elsewhere");
        assert_eq!(other.ctl.count("login"), 1);

        // Pinned to the other node: returned too, and not sent again there.
        let error = client
            .call_on(other.id, Request::DeleteKey { handle: 7 })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
        eventually("the other node logged in again", || {
            status(&client, other.id).up && other.ctl.count("login") == 2
        })
        .await;
        assert_eq!(other.ctl.count("delete-key"), 1);

        // A session key ends with its session: a read naming one is not sent again either.
        a.end_sessions();
        let sign = Request::Sign {
            handle: (1u64 << 63) | 3,
            mechanism: SignMechanism::Ed25519,
            data: vec![1],
        };
        let error = client.call_on(1, sign).await.unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
        assert_eq!(a.ctl.count("sign"), 1);
        assert_eq!(status(&client, 1).retries + status(&client, 2).retries, 0);

        eventually("both up", || status(&client, 1).up && status(&client, 2).up).await;
        client.call(Request::DeleteKey { handle: 7 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_credentials_not_logged_in_is_just_an_answer() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), None).await.unwrap();
        for request in [Request::Random { len: 1 }, Request::DeleteKey { handle: 7 }] {
            a.ctl.not_logged_in.store(1, Ordering::SeqCst);
            b.ctl.not_logged_in.store(1, Ordering::SeqCst);
            let name = request.name();
            let error = client.call(request).await.unwrap_err();
            assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
            assert!(matches!(error, ClientError::Node { .. }), "{error:?}");
            assert_eq!(a.ctl.count(name) + b.ctl.count(name), 1, "sent once");
        }
        a.ctl.not_logged_in.store(1, Ordering::SeqCst);
        let error = client
            .call_on(1, Request::Random { len: 1 })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
        for node in [&a, &b] {
            let status = status(&client, node.id);
            assert!(status.up && status.last_error.is_none(), "{status:?}");
            assert_eq!((status.retries, status.failovers), (0, 0));
            assert_eq!(node.ctl.accepted.load(Ordering::SeqCst), 1, "no reconnect");
            assert_eq!(node.ctl.count("login"), 0);
        }
        a.ctl.not_logged_in.store(0, Ordering::SeqCst);
        b.ctl.not_logged_in.store(0, Ordering::SeqCst);
        client.call(Request::Random { len: 1 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_ended_then_a_refused_login_parks_the_node_after_one_strike() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        // A crypto officer reset the password: sessions end, the old password is refused.
        *node.ctl.password.lock().unwrap() = "reset by the officer".into();
        node.end_sessions();
        let started = std::time::Instant::now();
        let error = client.call(Request::Random { len: 1 }).await.unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
        assert!(
            started.elapsed() < Duration::from_millis(1500),
            "no wait for a parked node: {:?}",
            started.elapsed()
        );
        eventually("node 1 parked", || status(&client, 1).parked).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(node.ctl.count("login"), 2, "one strike");
        assert_eq!(node.ctl.accepted.load(Ordering::SeqCst), 2);
        assert_eq!(node.ctl.count("random"), 1);
        let node1 = status(&client, 1);
        assert!(!node1.up);
        assert!(node1.last_error.unwrap().contains("login refused"));
        let error = client.call(Request::Random { len: 1 }).await.unwrap_err();
        assert!(matches!(error, ClientError::NoNodeAvailable), "{error:?}");
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_keeps_ending_the_session_is_logged_in_again_with_growing_waits() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        node.ctl.not_logged_in.store(1_000, Ordering::SeqCst);
        let started = std::time::Instant::now();
        let error = client.call(Request::Random { len: 1 }).await.unwrap_err();
        let took = started.elapsed();
        assert_eq!(error.kind(), Some(ErrorKind::NotLoggedIn), "{error:?}");
        assert_eq!(
            node.ctl.count("random"),
            1 + 3,
            "first try and busy_retries = 3"
        );
        // Logins after 100, 200 and 400 ms, not 3 × 100 ms.
        assert!(took >= Duration::from_millis(650), "{took:?}");
        // The last refusal ends the session too: one more login, then no more.
        eventually("logged in again", || {
            status(&client, 1).up && node.ctl.count("login") == 5
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(node.ctl.count("login"), 5, "no loop");
        node.ctl.not_logged_in.store(0, Ordering::SeqCst);
        client.call(Request::Random { len: 1 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_logs_out_and_ends_every_connection() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        let other = client.clone();
        client.close().await;
        assert_eq!((a.ctl.count("logout"), b.ctl.count("logout")), (1, 1));
        for node in [&a, &b] {
            eventually("connection closed", || {
                node.ctl.open.load(Ordering::SeqCst) == 0
            })
            .await;
        }
        let error = other.call(Request::Random { len: 1 }).await.unwrap_err();
        assert!(matches!(error, ClientError::Closed), "{error:?}");
        assert!(other.nodes().iter().all(|n| !n.up));
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_last_clone_ends_connections_and_tasks() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), None).await.unwrap();
        let clone = client.clone();
        drop(client);
        clone.call(Request::Random { len: 1 }).await.unwrap();
        drop(clone);
        for node in [&a, &b] {
            eventually("connection closed", || {
                node.ctl.open.load(Ordering::SeqCst) == 0
            })
            .await;
        }
        // No background task reconnects or checks health any more.
        let health = a.ctl.count("health");
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(a.ctl.accepted.load(Ordering::SeqCst), 1);
        assert_eq!(a.ctl.count("health"), health);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_certificate_from_another_ca_is_refused() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let mut config = pki.config(&[&node]);
        config.ca = pki.write_other_ca();
        let error = Client::connect(config, None).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Connect { node: 1, .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("certificate"), "{error}");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_requests_and_unknown_nodes_are_refused_locally() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), None).await.unwrap();
        let login = Request::Login {
            user: "alice".into(),
            password: Secret::new(PASSWORD.into()),
        };
        let error = client.call(login).await.unwrap_err();
        assert!(
            matches!(error, ClientError::Managed { request: "login" }),
            "{error:?}"
        );
        let error = client.call_on(9, Request::Health).await.unwrap_err();
        assert!(
            matches!(error, ClientError::UnknownNode { node: 9 }),
            "{error:?}"
        );
        let huge = Request::Digest {
            hash: HashAlg::Sha256,
            data: vec![0; sealgate_hsm_proto::MAX_FRAME_LEN],
        };
        let error = client.call(huge).await.unwrap_err();
        assert!(
            matches!(error, ClientError::RequestTooLarge { .. }),
            "{error:?}"
        );
        assert_eq!(node.ctl.count("login") + node.ctl.count("digest"), 0);
        assert!(matches!(
            client.call(Request::Health).await.unwrap(),
            Reply::Health(_)
        ));
        client.close().await;
    })
    .await;
}

#[test]
fn client_is_send_sync_and_its_futures_are_send() {
    fn send_sync<T: Send + Sync + Clone + 'static>() {}
    fn send<T: Send>(_: &T) {}
    send_sync::<Client>();
    let pki = Pki::new();
    let config = pki.config(&[]);
    send(&Client::connect(config, None));
}

#[test]
fn credentials_never_print_the_password() {
    let printed = format!("{:?}", alice(PASSWORD));
    assert!(
        printed.contains("alice") && !printed.contains(PASSWORD),
        "{printed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_answered_unavailable_is_never_sent_to_another_node() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        for round in 1..=10 {
            // Whichever node gets the write answers unavailable (its store failed after the
            // write was applied in memory); the other node must never see it.
            a.ctl.unavailable.store(1, Ordering::SeqCst);
            b.ctl.unavailable.store(1, Ordering::SeqCst);
            let error = client
                .call(Request::DeleteKey { handle: 7 })
                .await
                .unwrap_err();
            assert_eq!(error.kind(), Some(ErrorKind::Unavailable), "{error:?}");
            assert!(
                matches!(error, ClientError::Node { .. }),
                "the node's answer: {error:?}"
            );
            assert!(error.to_string().contains("may or may not"), "{error}");
            assert_eq!(
                a.ctl.count("delete-key") + b.ctl.count("delete-key"),
                round,
                "sent once, to one node"
            );
        }
        // Node 1 alone: no retry on the same node either.
        b.set_down(true);
        eventually("node 2 down", || !status(&client, 2).up).await;
        a.ctl.unavailable.store(1, Ordering::SeqCst);
        let before = a.ctl.count("delete-key");
        let error = client
            .call_on(1, Request::DeleteKey { handle: 7 })
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::Unavailable), "{error:?}");
        assert_eq!(a.ctl.count("delete-key"), before + 1);
        assert_eq!(status(&client, 1).retries + status(&client, 2).retries, 0);
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_answered_unavailable_is_retried_on_another_node() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        for _ in 0..20 {
            a.ctl.unavailable.store(1, Ordering::SeqCst);
            let reply = client.call(Request::Random { len: 1 }).await.unwrap();
            assert_eq!(data(reply), vec![2], "only node 2 answers");
        }
        assert!(
            a.ctl.count("random") >= 1,
            "node 1 was chosen at least once"
        );
        assert_eq!(status(&client, 1).retries as usize, a.ctl.count("random"));
        // Pinned to one node, a read is retried there.
        a.ctl.unavailable.store(1, Ordering::SeqCst);
        let reply = client.call_on(1, Request::Random { len: 1 }).await.unwrap();
        assert_eq!(data(reply), vec![1]);
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_user_parks_the_node() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        *a.ctl.login_error.lock().unwrap() = Some(ErrorKind::UserLocked);
        a.kill_connections();
        eventually("re-login tried", || a.ctl.count("login") == 2).await;
        eventually("node 1 parked", || status(&client, 1).parked).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(a.ctl.count("login"), 2, "a lockout is not fed");
        assert_eq!(a.ctl.accepted.load(Ordering::SeqCst), 2, "no reconnect");
        let node1 = status(&client, 1);
        assert!(!node1.up);
        let last_error = node1.last_error.unwrap();
        assert!(last_error.contains("user-locked"), "{last_error}");
        assert!(!status(&client, 2).parked);
        client.call(Request::Random { len: 1 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_login_errors_keep_reconnecting_until_the_node_accepts() {
    within(async {
        let pki = Pki::new();
        let kinds = [
            ErrorKind::LimitReached,
            ErrorKind::WrongClusterState,
            ErrorKind::Failed,
            ErrorKind::Unavailable,
            ErrorKind::Busy,
        ];
        let mut nodes = Vec::new();
        for id in 1..=kinds.len() as u32 {
            nodes.push(FakeNode::start(id, &pki).await);
        }
        let all: Vec<&FakeNode> = nodes.iter().collect();
        let client = Client::connect(pki.config(&all), alice(PASSWORD))
            .await
            .unwrap();
        for (node, kind) in nodes.iter().zip(kinds) {
            *node.ctl.login_error.lock().unwrap() = Some(kind);
            node.kill_connections();
        }
        for (node, kind) in nodes.iter().zip(kinds) {
            // The first connection and at least two refused reconnects.
            eventually("reconnects go on", || {
                node.ctl.accepted.load(Ordering::SeqCst) >= 3
            })
            .await;
            let status = status(&client, node.id);
            assert!(!status.up && !status.parked, "{kind}: {status:?}");
            let last_error = status.last_error.unwrap();
            assert!(last_error.contains(kind.as_str()), "{kind}: {last_error}");
        }
        for node in &nodes {
            *node.ctl.login_error.lock().unwrap() = None;
        }
        for node in &nodes {
            eventually("node up again", || status(&client, node.id).up).await;
            client
                .call_on(node.id, Request::Random { len: 1 })
                .await
                .unwrap();
        }
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tries_the_next_node_when_a_login_is_not_refused() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        *a.ctl.login_error.lock().unwrap() = Some(ErrorKind::LimitReached);
        // Alone, node 1's answer is the error.
        let error = Client::connect(pki.config(&[&a]), alice(PASSWORD))
            .await
            .unwrap_err();
        assert_eq!(error.kind(), Some(ErrorKind::LimitReached), "{error:?}");
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        assert!(status(&client, 2).up);
        assert!(!status(&client, 1).parked);
        *a.ctl.login_error.lock().unwrap() = None;
        eventually("node 1 up", || status(&client, 1).up).await;
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_session_keys_need_call_on() {
    within(async {
        let pki = Pki::new();
        let (a, b) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
        );
        let client = Client::connect(pki.config(&[&a, &b]), alice(PASSWORD))
            .await
            .unwrap();
        let session = (1u64 << 63) | 3;
        let sign = |handle| Request::Sign {
            handle,
            mechanism: SignMechanism::Ed25519,
            data: vec![1, 2, 3],
        };
        let error = client.call(sign(session)).await.unwrap_err();
        assert!(
            matches!(error, ClientError::SessionKeyNeedsNode { handle, request: "sign" } if handle == session),
            "{error:?}"
        );
        let message = error.to_string();
        assert!(
            message.contains("call_on") && message.contains("0x8000000000000003"),
            "{message}"
        );
        // A token key wrapped under a session key: refused too.
        let wrap = Request::WrapKey {
            wrapping: session,
            mechanism: WrapMechanism::AesKeyWrapPad,
            handle: 9,
        };
        let error = client.call(wrap).await.unwrap_err();
        assert!(
            matches!(error, ClientError::SessionKeyNeedsNode { handle, .. } if handle == session),
            "{error:?}"
        );
        assert_eq!(a.ctl.count("sign") + b.ctl.count("sign"), 0, "nothing sent");
        assert_eq!(a.ctl.count("wrap-key") + b.ctl.count("wrap-key"), 0);
        // Token keys are load-balanced; session keys go to their node with call_on.
        client.call(sign(3)).await.unwrap();
        client.call_on(2, sign(session)).await.unwrap();
        assert_eq!(b.ctl.count("sign"), 1 + usize::from(a.ctl.count("sign") == 0));
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_of_another_cluster_are_refused_before_login() {
    within(async {
        let pki = Pki::new();
        let (a, b, c) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
            FakeNode::start(3, &pki).await,
        );
        *a.ctl.cluster_id.lock().unwrap() = "0a1b".into();
        *b.ctl.cluster_id.lock().unwrap() = "ffff".into();
        // Node 3 is not initialized yet: no cluster id, accepted.
        c.ctl.cluster_id.lock().unwrap().clear();

        let mut config = pki.config(&[&b]);
        config.cluster_id = Some("0A1B".into());
        let error = Client::connect(config, alice(PASSWORD)).await.unwrap_err();
        match &error {
            ClientError::Connect {
                node: 2,
                source: ConnectError::WrongCluster { expected, found },
                ..
            } => assert_eq!((expected.as_str(), found.as_str()), ("0A1B", "ffff")),
            other => panic!("{other:?}"),
        }
        assert!(
            error
                .to_string()
                .contains("cluster ffff, not to cluster 0A1B"),
            "{error}"
        );

        let mut config = pki.config(&[&a, &b, &c]);
        config.cluster_id = Some("0A1B".into());
        let client = Client::connect(config, alice(PASSWORD)).await.unwrap();
        assert!(status(&client, 1).up && status(&client, 3).up);
        // The background task keeps trying node 2, and keeps refusing it.
        eventually("node 2 retried", || {
            b.ctl.accepted.load(Ordering::SeqCst) >= 3
        })
        .await;
        let node2 = status(&client, 2);
        assert!(!node2.up);
        let last_error = node2.last_error.unwrap();
        assert!(last_error.contains("cluster ffff"), "{last_error}");
        assert_eq!(
            b.ctl.seen.lock().unwrap().len(),
            0,
            "no login, nothing sent"
        );
        client.close().await;

        // Without cluster_id in the configuration, any cluster is accepted.
        let client = Client::connect(pki.config(&[&b]), alice(PASSWORD))
            .await
            .unwrap();
        client.close().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_list_larger_than_a_request_frame_is_received() {
    within(async {
        let pki = Pki::new();
        let node = FakeNode::start(1, &pki).await;
        let client = Client::connect(pki.config(&[&node]), alice(PASSWORD))
            .await
            .unwrap();
        node.ctl.keys.store(8_000, Ordering::SeqCst);
        let reply = client
            .call(Request::ListKeys { filter: Vec::new() })
            .await
            .unwrap();
        let encoded = sealgate_hsm_proto::encode(&reply).len();
        assert!(encoded > 4 << 20, "{encoded} bytes");
        match reply {
            Reply::Keys(keys) => {
                assert_eq!(keys.len(), 8_000);
                assert!(keys.iter().enumerate().all(|(i, k)| k.handle == i as u64));
            }
            other => panic!("{other:?}"),
        }
        assert!(status(&client, 1).up, "the connection survived");
        client.call(Request::Random { len: 1 }).await.unwrap();
        client.close().await;
    })
    .await;
}

#[test]
fn timeouts_over_an_hour_are_refused_naming_the_key() {
    let file = |client: ClientSection| ClientFile {
        cluster_id: None,
        ca: "ca.pem".into(),
        cert: "client.pem".into(),
        key: "client-key.pem".into(),
        client,
        nodes: vec![NodeSection {
            id: 1,
            address: "127.0.0.1:2225".into(),
            server_name: None,
        }],
    };
    let check = |client: ClientSection| {
        ClientConfig::from_file(file(client), Path::new("/etc/sg"), Path::new("client.toml"))
    };
    let hour = 3_600_000;
    let config = check(ClientSection {
        request_timeout_ms: hour,
        connect_timeout_ms: hour,
        health_interval_ms: hour,
        busy_retries: 3,
    })
    .expect("an hour is accepted");
    assert_eq!(config.request_timeout, Duration::from_secs(3600));
    for key in [
        "request_timeout_ms",
        "connect_timeout_ms",
        "health_interval_ms",
    ] {
        for value in [hour + 1, u64::MAX] {
            let mut section = ClientSection::default();
            match key {
                "request_timeout_ms" => section.request_timeout_ms = value,
                "connect_timeout_ms" => section.connect_timeout_ms = value,
                _ => section.health_interval_ms = value,
            }
            let error = check(section).unwrap_err().to_string();
            assert!(
                error.contains(&format!("client.toml: client.{key}"))
                    && error.contains("at most 3600000"),
                "{key}: {error}"
            );
        }
    }
}

fn members(nodes: &[&FakeNode]) -> Vec<sealgate_hsm_proto::Member> {
    nodes
        .iter()
        .map(|n| sealgate_hsm_proto::Member {
            id: n.id,
            address: n.addr.to_string(),
            voter: true,
        })
        .collect()
}

fn ids(client: &Client) -> Vec<u32> {
    client.nodes().iter().map(|n| n.id).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_nodes_added_and_removed() {
    within(async {
        let pki = Pki::new();
        let (a, b, c) = (
            FakeNode::start(1, &pki).await,
            FakeNode::start(2, &pki).await,
            FakeNode::start(3, &pki).await,
        );
        // The configuration names node 1 only; the cluster has nodes 1 and 2.
        *a.ctl.membership.lock().unwrap() = (members(&[&a, &b]), 5);
        let client = Client::connect(pki.config(&[&a]), alice(PASSWORD))
            .await
            .unwrap();
        assert_eq!(ids(&client), [1, 2]);
        assert!(status(&client, 2).up, "connected and logged in at once");
        client.call_on(2, Request::Random { len: 1 }).await.unwrap();

        // Node 3 joins: the next health check brings it.
        *a.ctl.membership.lock().unwrap() = (members(&[&a, &b, &c]), 7);
        eventually("node 3 up", || {
            ids(&client) == [1, 2, 3] && status(&client, 3).up
        })
        .await;
        client.call_on(3, Request::Random { len: 1 }).await.unwrap();
        assert_eq!(c.ctl.count("login"), 1);

        // An older membership (a node that missed the change) does not undo it.
        *b.ctl.membership.lock().unwrap() = (members(&[&a, &b]), 6);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(ids(&client), [1, 2, 3]);

        // Node 2 is removed: the client drops it and closes its connection.
        for node in [&a, &b, &c] {
            *node.ctl.membership.lock().unwrap() = (members(&[&a, &c]), 9);
        }
        eventually("node 2 dropped", || ids(&client) == [1, 3]).await;
        eventually("node 2's connection closed", || {
            b.ctl.open.load(Ordering::SeqCst) == 0
        })
        .await;
        let error = client
            .call_on(2, Request::Random { len: 1 })
            .await
            .unwrap_err();
        assert!(
            matches!(error, ClientError::UnknownNode { node: 2 }),
            "{error:?}"
        );
        for _ in 0..20 {
            client.call(Request::Random { len: 1 }).await.unwrap();
        }
        client.close().await;
    })
    .await;
}
