//! Hostile input at a real node process: garbage frames, frames over the limit, clients
//! without a valid certificate, truncated and stalled TLS handshakes, too many requests in
//! flight, and a full work queue. Each is refused with one log line, and the node keeps
//! serving the connection that was open all along and new ones.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

mod support;

use sealgate_hsm_proto::{ErrorKind, Request, Secret};
use std::time::Duration;
use support::raw;
use support::{Cluster, log_lines, wait_until};
use tokio::io::AsyncWriteExt;

/// A login that costs the node an argon2 run (the user does not exist, so nothing is locked).
/// The node checks at most half as many passwords at once as it has crypto threads; the others
/// are answered busy at once.
fn slow_request() -> Request {
    Request::Login {
        user: "nobody".into(),
        password: Secret::new("not-a-real-password".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_frames_and_bad_clients_are_refused_and_others_keep_being_served() {
    let mut cluster = Cluster::init(1);
    cluster.set_limits(1, |l| {
        l.handshake_timeout_secs = 2;
        l.max_frame_len = 4096;
    });
    let addr = cluster.start(1);
    let log = cluster.node_log(1);
    let dir = cluster.dir.clone();

    // A well-behaved connection that stays open through everything below.
    let mut steady = raw::hello(&dir, addr).await;
    assert!(raw::healthy(&mut steady, 2).await);

    // 1. A frame that is not a protocol message: answered bad-request, connection closed.
    let mut conn = raw::hello(&dir, addr).await;
    raw::send_body(&mut conn, &[0x07, 0xff, 0xff, 0xff, 0xff, 0x13]).await;
    let answer = raw::recv(&mut conn)
        .await
        .expect("an answer before closing");
    assert_eq!(answer.result.unwrap_err().kind, ErrorKind::BadRequest);
    assert!(raw::recv(&mut conn).await.is_none(), "connection closed");
    assert_eq!(log_lines(&log, "malformed frame").len(), 1);

    // 2. A frame over the limit: frame-too-large, connection closed, nothing allocated.
    let mut conn = raw::hello(&dir, addr).await;
    raw::send_body(&mut conn, &vec![0u8; 8192]).await;
    let answer = raw::recv(&mut conn)
        .await
        .expect("an answer before closing");
    assert_eq!(answer.result.unwrap_err().kind, ErrorKind::FrameTooLarge);
    assert!(raw::recv(&mut conn).await.is_none(), "connection closed");
    assert_eq!(log_lines(&log, "frame over the size limit").len(), 1);

    // 3. A client without a certificate: the handshake fails; nothing is answered.
    let anonymous = raw::client_config(&dir.join("ca.pem"), None);
    if let Ok(mut conn) = raw::connect(addr, anonymous).await {
        raw::send(&mut conn, 1, Request::Health).await;
        assert!(
            raw::recv(&mut conn).await.is_none(),
            "no answer without a certificate"
        );
    }

    // 4. A client whose certificate another CA signed.
    let stranger = tempfile::tempdir().unwrap();
    let (cert, key) = foreign_identity(stranger.path());
    let forged = raw::client_config(&dir.join("ca.pem"), Some((&cert, &key)));
    if let Ok(mut conn) = raw::connect(addr, forged).await {
        raw::send(&mut conn, 1, Request::Health).await;
        assert!(
            raw::recv(&mut conn).await.is_none(),
            "no answer with a foreign certificate"
        );
    }
    wait_until(
        "two handshake failures logged",
        Duration::from_secs(5),
        || log_lines(&log, "TLS handshake failed").len() == 2,
    );

    // 5. A truncated handshake (the first bytes of a ClientHello, then close), and one that
    //    stalls until the node's handshake timeout.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00])
        .await
        .unwrap();
    drop(tcp);
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    wait_until("truncated handshake logged", Duration::from_secs(5), || {
        log_lines(&log, "TLS handshake failed").len() == 3
    });
    wait_until(
        "stalled handshake timed out",
        Duration::from_secs(10),
        || log_lines(&log, "no TLS handshake within").len() == 1,
    );
    drop(stalled);

    // 6. Garbage instead of TLS.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    drop(tcp);
    wait_until("garbage logged", Duration::from_secs(5), || {
        log_lines(&log, "TLS handshake failed").len() == 4
    });

    // The connection open all along, and a new one, are still served.
    assert!(raw::healthy(&mut steady, 3).await);
    let mut fresh = raw::hello(&dir, addr).await;
    assert!(raw::healthy(&mut fresh, 2).await);
    // Each refusal was one line.
    assert_eq!(
        log_lines(&log, "refused connection").len() + log_lines(&log, "closed connection").len(),
        7
    );
    assert_eq!(cluster.stop(1).code(), Some(0), "clean exit on SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_in_flight_is_answered_and_the_connection_stays_open() {
    let mut cluster = Cluster::init(1);
    cluster.set_limits(1, |l| l.max_in_flight = 2);
    let addr = cluster.start(1);
    let mut conn = raw::hello(&cluster.dir, addr).await;
    for id in 10..20 {
        raw::send(&mut conn, id, slow_request()).await;
    }
    let mut refused = 0;
    for _ in 10..20 {
        let answer = raw::recv(&mut conn).await.expect("answer");
        match answer.result {
            Err(e) if e.kind == ErrorKind::TooManyInFlight => refused += 1,
            // Logins beyond the node's concurrent password checks are answered busy.
            Err(e) => assert!(
                matches!(e.kind, ErrorKind::LoginFailed | ErrorKind::Busy),
                "{e}"
            ),
            Ok(r) => panic!("unexpected {r:?}"),
        }
    }
    assert!(
        refused >= 1,
        "some requests beyond 2 in flight were refused"
    );
    assert!(
        raw::healthy(&mut conn, 99).await,
        "the connection stays open"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_busy_instead_of_queueing() {
    let mut cluster = Cluster::init(1);
    cluster.set_limits(1, |l| {
        l.crypto_threads = 1;
        l.max_queued = 2;
    });
    let addr = cluster.start(1);
    let mut conn = raw::hello(&cluster.dir, addr).await;
    for id in 10..30 {
        raw::send(&mut conn, id, slow_request()).await;
    }
    let mut busy = 0;
    for _ in 10..30 {
        let answer = raw::recv(&mut conn).await.expect("answer");
        match answer.result {
            Err(e) if e.kind == ErrorKind::Busy => busy += 1,
            Err(e) => assert_eq!(e.kind, ErrorKind::LoginFailed, "{e}"),
            Ok(r) => panic!("unexpected {r:?}"),
        }
    }
    assert!(
        busy >= 10,
        "requests beyond the queue were answered busy ({busy})"
    );
    assert!(
        raw::healthy(&mut conn, 99).await,
        "health is answered even when busy"
    );
}

/// A client certificate and key signed by a CA that is not the cluster's.
fn foreign_identity(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["client".to_owned()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
    let cert = params.signed_by(&key, &issuer).unwrap();
    let cert_path = dir.join("stranger.pem");
    let key_path = dir.join("stranger-key.pem");
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_disconnected_and_others_are_served() {
    use futures_util::SinkExt;
    let mut cluster = Cluster::init(1);
    cluster.set_limits(1, |l| l.write_timeout_secs = 2);
    let addr = cluster.start(1);
    let log = cluster.node_log(1);
    let dir = cluster.dir.clone();
    let mut steady = raw::hello(&dir, addr).await;

    // Send health requests as fast as possible and never read an answer: the node's answers
    // fill the socket buffers, its writes stall, and after 2 s it closes the connection.
    let mut greedy = raw::hello(&dir, addr).await;
    let frame = bytes::Bytes::from(sealgate_hsm_proto::encode(
        &sealgate_hsm_proto::RequestFrame::new(7, Request::Health),
    ));
    let flood = async {
        loop {
            for _ in 0..1000 {
                if SinkExt::<bytes::Bytes>::feed(&mut greedy, frame.clone())
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if SinkExt::<bytes::Bytes>::flush(&mut greedy).await.is_err() {
                return;
            }
        }
    };
    // The flood ends when the node closes the connection (or stops reading it).
    let _ = tokio::time::timeout(Duration::from_secs(30), flood).await;
    wait_until(
        "the stalled connection closed",
        Duration::from_secs(20),
        || log_lines(&log, "answers unread").len() == 1,
    );
    assert!(
        raw::healthy(&mut steady, 3).await,
        "others are still served"
    );
    assert_eq!(cluster.stop(1).code(), Some(0));
}
