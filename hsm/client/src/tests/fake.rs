//! A fake HSM node for the client's tests: a real mutual-TLS 1.3 server on 127.0.0.1 that
//! speaks the protocol (hello, login, health, digest, random, list-keys, and writes that just
//! answer done) and can be told to answer busy, unavailable or not-logged-in, end sessions,
//! refuse logins, drop the connection, stall, go down, or claim another cluster.

use crate::{ClientConfig, NodeEndpoint};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use sealgate_hsm_proto::{
    self as proto, AttributeValue, Error, ErrorKind, Health, KeyInfo, MAX_FRAME_LEN,
    MAX_RESPONSE_LEN, Member, Reply, Request, RequestFrame, ResponseFrame, Role, Welcome,
};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;
use tokio_util::codec::Framed;

pub(crate) const PASSWORD: &str = "correct horse";

/// A test CA, a node certificate for `localhost`, and client files on disk.
pub(crate) struct Pki {
    dir: tempfile::TempDir,
    server: Arc<rustls::ServerConfig>,
}

fn ca() -> (CertificateParams, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(DnType::CommonName, "sealgate test CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    (params, key)
}

fn leaf(
    name: &str,
    usage: ExtendedKeyUsagePurpose,
    issuer: &Issuer<'_, KeyPair>,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    // Nodes answer to "localhost" and to 127.0.0.1 (the address a membership names).
    let sans = if usage == ExtendedKeyUsagePurpose::ServerAuth {
        vec![name.to_owned(), "127.0.0.1".to_owned()]
    } else {
        vec![name.to_owned()]
    };
    let mut params = CertificateParams::new(sans).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![usage];
    (params.signed_by(&key, issuer).unwrap(), key)
}

impl Pki {
    pub(crate) fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let (ca_params, ca_key) = ca();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let (node_cert, node_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth, &issuer);
        let (client_cert, client_key) =
            leaf("client", ExtendedKeyUsagePurpose::ClientAuth, &issuer);
        std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
        std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
        std::fs::write(
            dir.path().join("client-key.pem"),
            client_key.serialize_pem(),
        )
        .unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![node_cert.der().clone()],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node_key.serialize_der())),
            )
            .unwrap();
        Self {
            dir,
            server: Arc::new(server),
        }
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A client configuration for `nodes` with short timeouts.
    pub(crate) fn config(&self, nodes: &[&FakeNode]) -> ClientConfig {
        ClientConfig {
            cluster_id: None,
            ca: self.path("ca.pem"),
            cert: self.path("client.pem"),
            key: self.path("client-key.pem"),
            nodes: nodes
                .iter()
                .map(|node| NodeEndpoint {
                    id: node.id,
                    address: node.addr,
                    server_name: "localhost".into(),
                })
                .collect(),
            request_timeout: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(2),
            health_interval: Duration::from_millis(100),
            busy_retries: 3,
        }
    }

    /// Writes the certificate of another CA as `other-ca.pem`.
    pub(crate) fn write_other_ca(&self) -> PathBuf {
        let (params, key) = ca();
        let cert = params.self_signed(&key).unwrap();
        let path = self.path("other-ca.pem");
        std::fs::write(&path, cert.pem()).unwrap();
        path
    }
}

/// What a test can tell a fake node to do, and what it saw.
#[derive(Default)]
pub(crate) struct Control {
    /// The password that logs in.
    pub(crate) password: Mutex<String>,
    /// Answer busy to this many of the next requests (not hello, login, health, logout).
    pub(crate) busy: AtomicU32,
    /// Answer unavailable to this many of the next requests (not hello, login, health,
    /// logout), after running them (as a node whose store failed).
    pub(crate) unavailable: AtomicU32,
    /// Answer not-logged-in to this many of the next requests (not hello, login, health,
    /// logout), whether the connection logged in or not.
    pub(crate) not_logged_in: AtomicU32,
    /// Bumped by [`FakeNode::end_sessions`]: a connection that logged in before answers
    /// not-logged-in (not to hello, login, health, logout) until it logs in again.
    pub(crate) sessions_ended: AtomicU64,
    /// Answer every login with this error (instead of checking the password).
    pub(crate) login_error: Mutex<Option<ErrorKind>>,
    /// The cluster id the welcome gives.
    pub(crate) cluster_id: Mutex<String>,
    /// How many keys list-keys answers (each with a few attributes).
    pub(crate) keys: AtomicU32,
    /// Drop the connection, without answering, when a request of this name arrives (once).
    pub(crate) drop_on: Mutex<Option<&'static str>>,
    /// Leave requests unanswered (health included).
    pub(crate) stall: AtomicBool,
    /// Refuse connections (after accepting TCP).
    pub(crate) down: AtomicBool,
    /// Every request received after hello, by name.
    pub(crate) seen: Mutex<Vec<&'static str>>,
    /// Connections open now.
    pub(crate) open: AtomicU32,
    /// Connections accepted (TLS done).
    pub(crate) accepted: AtomicU32,
    /// The membership health answers report, and its log index.
    pub(crate) membership: Mutex<(Vec<Member>, u64)>,
}

impl Control {
    pub(crate) fn count(&self, name: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|n| **n == name)
            .count()
    }
}

/// A running fake node.
pub(crate) struct FakeNode {
    pub(crate) id: u32,
    pub(crate) addr: SocketAddr,
    pub(crate) ctl: Arc<Control>,
    /// Bumping it drops every open connection.
    kill: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.task.abort();
        self.kill.send_modify(|g| *g += 1);
    }
}

impl FakeNode {
    pub(crate) async fn start(id: u32, pki: &Pki) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let ctl = Arc::new(Control {
            password: Mutex::new(PASSWORD.to_owned()),
            cluster_id: Mutex::new("test".to_owned()),
            ..Control::default()
        });
        let (kill, _) = watch::channel(0u64);
        let acceptor = TlsAcceptor::from(Arc::clone(&pki.server));
        let task = tokio::spawn(accept(
            listener,
            acceptor,
            id,
            Arc::clone(&ctl),
            kill.clone(),
        ));
        Self {
            id,
            addr,
            ctl,
            kill,
            task,
        }
    }

    /// Drops every open connection.
    pub(crate) fn kill_connections(&self) {
        self.kill.send_modify(|g| *g += 1);
    }

    /// Ends the session of every connection logged in now, as a node does when a crypto
    /// officer resets the user's password; the connections stay open.
    pub(crate) fn end_sessions(&self) {
        self.ctl.sessions_ended.fetch_add(1, Ordering::SeqCst);
    }

    /// Goes down (drops connections, refuses new ones) or comes back.
    pub(crate) fn set_down(&self, down: bool) {
        self.ctl.down.store(down, Ordering::SeqCst);
        if down {
            self.kill_connections();
        }
    }
}

async fn accept(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    id: u32,
    ctl: Arc<Control>,
    kill: watch::Sender<u64>,
) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        if ctl.down.load(Ordering::SeqCst) {
            drop(tcp);
            continue;
        }
        let acceptor = acceptor.clone();
        let ctl = Arc::clone(&ctl);
        let killed = kill.subscribe();
        tokio::spawn(async move {
            let Ok(stream) = acceptor.accept(tcp).await else {
                return;
            };
            ctl.accepted.fetch_add(1, Ordering::SeqCst);
            ctl.open.fetch_add(1, Ordering::SeqCst);
            serve(stream, id, &ctl, killed).await;
            ctl.open.fetch_sub(1, Ordering::SeqCst);
        });
    }
}

/// A key's metadata of some 600 bytes.
fn fake_key(handle: u64, owner: u32) -> KeyInfo {
    KeyInfo {
        handle,
        uid: format!("{handle:064x}"),
        owner,
        owner_name: "alice".into(),
        shared_with: vec!["bob".into(), "carol".into()],
        attributes: [
            "label",
            "id",
            "class",
            "key-type",
            "token",
            "sign",
            "verify",
            "encrypt",
            "decrypt",
            "wrap",
            "unwrap",
            "extractable",
        ]
        .iter()
        .map(|name| AttributeValue::new(*name, format!("value of {name} for key {handle:032x}")))
        .collect(),
    }
}

fn respond(id: u64, result: Result<Reply, Error>) -> Bytes {
    Bytes::from(proto::encode(&ResponseFrame::new(id, result)))
}

async fn serve(
    stream: tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
    node_id: u32,
    ctl: &Arc<Control>,
    mut killed: watch::Receiver<u64>,
) {
    // Answers may be as large as the protocol allows (a long key list).
    let (mut sink, mut frames) = Framed::new(stream, proto::length_codec(MAX_RESPONSE_LEN)).split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = tokio::spawn(async move {
        while let Some(frame) = rx.recv().await {
            if sink.send(frame).await.is_err() {
                return;
            }
        }
    });
    let mut welcomed = false;
    // The value of `sessions_ended` when this connection logged in, if it did.
    let mut session: Option<u64> = None;
    loop {
        let frame = tokio::select! {
            _ = killed.changed() => break,
            frame = frames.next() => frame,
        };
        let Some(Ok(bytes)) = frame else { break };
        let Ok(RequestFrame { id, request, .. }) = proto::decode_request(&bytes) else {
            break;
        };
        if !welcomed {
            let Request::Hello(_) = request else { break };
            welcomed = true;
            let welcome = Welcome {
                version: proto::VERSION,
                node_id,
                cluster_id: ctl.cluster_id.lock().unwrap().clone(),
                max_frame_len: MAX_FRAME_LEN as u32,
                max_in_flight: 64,
            };
            let _ = tx.send(respond(id, Ok(Reply::Welcome(welcome))));
            continue;
        }
        ctl.seen.lock().unwrap().push(request.name());
        {
            let mut drop_on = ctl.drop_on.lock().unwrap();
            if *drop_on == Some(request.name()) {
                *drop_on = None;
                break;
            }
        }
        if ctl.stall.load(Ordering::SeqCst) {
            continue;
        }
        let needs_session = !matches!(
            request,
            Request::Login { .. } | Request::Logout | Request::Health
        );
        let ended = session.is_some_and(|at| at != ctl.sessions_ended.load(Ordering::SeqCst));
        if needs_session
            && (ended
                || ctl
                    .not_logged_in
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok())
        {
            let error = Error::new(ErrorKind::NotLoggedIn, "log in first");
            let _ = tx.send(respond(id, Err(error)));
            continue;
        }
        let result = match request {
            Request::Login { .. } if ctl.login_error.lock().unwrap().is_some() => {
                let kind = ctl.login_error.lock().unwrap().unwrap_or(ErrorKind::Failed);
                Err(Error::new(kind, format!("login refused: {kind}")))
            }
            Request::Login { password, .. } => {
                if password.expose() == *ctl.password.lock().unwrap() {
                    session = Some(ctl.sessions_ended.load(Ordering::SeqCst));
                    Ok(Reply::LoggedIn {
                        role: Role::CryptoUser,
                    })
                } else {
                    Err(Error::new(
                        ErrorKind::LoginFailed,
                        "wrong user name or password",
                    ))
                }
            }
            Request::Logout => Ok(Reply::Done),
            Request::Health => Ok(Reply::Health({
                let (members, membership_index) = ctl.membership.lock().unwrap().clone();
                Health {
                    node_id,
                    applied_index: 0,
                    sessions: 1,
                    connections: ctl.open.load(Ordering::SeqCst),
                    queued: 0,
                    writable: true,
                    leader: Some(node_id),
                    role: "leader".into(),
                    term: 1,
                    members,
                    membership_index,
                    signs: 0,
                }
            })),
            _ if ctl
                .busy
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok() =>
            {
                Err(Error::new(ErrorKind::Busy, "node is busy; retry later"))
            }
            _ if ctl
                .unavailable
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok() =>
            {
                Err(Error::new(
                    ErrorKind::Unavailable,
                    "the node could not store the change, which may or may not survive",
                ))
            }
            Request::ListKeys { .. } => Ok(Reply::Keys(
                (0..u64::from(ctl.keys.load(Ordering::SeqCst)))
                    .map(|handle| fake_key(handle, node_id))
                    .collect(),
            )),
            Request::Digest { data, .. } => {
                // Answers after data[0] × 10 ms, with the node's id in front of the data, so
                // tests see the order of answers and who answered.
                let delay = Duration::from_millis(u64::from(*data.first().unwrap_or(&0)) * 10);
                let tx = tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let mut out = vec![node_id as u8];
                    out.extend_from_slice(&data);
                    let _ = tx.send(respond(id, Ok(Reply::Data(out))));
                });
                continue;
            }
            Request::Random { len } => Ok(Reply::Data(vec![node_id as u8; len as usize])),
            _ => Ok(Reply::Done),
        };
        let _ = tx.send(respond(id, result));
    }
    writer.abort();
}
