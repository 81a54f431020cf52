//! The built-in demo upstream of `sealgate serve --dev`: a plain HTTP/1.1 server on 127.0.0.1
//! that answers every request with a short page saying what reached it (method, path, and the
//! forwarding headers the proxy added).

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Longest time spent reading a request body nobody needs.
const DRAIN_FOR: Duration = Duration::from_secs(30);

/// Reads a request body to its end (within [`DRAIN_FOR`]) and throws it away.
async fn drain(mut body: Incoming) {
    let _ = tokio::time::timeout(DRAIN_FOR, async {
        while let Some(Ok(_)) = body.frame().await {}
    })
    .await;
}

fn page(req: &Request<Incoming>) -> String {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    format!(
        "Hello from sealgate's demo upstream.\n\
         You reached it through sealgate: TLS terminated by the proxy, the handshake signed by \
         the HSM cluster.\n\n\
         request            {} {} {:?}\n\
         host               {}\n\
         x-forwarded-for    {}\n\
         x-forwarded-proto  {}\n\
         forwarded          {}\n",
        req.method(),
        req.uri(),
        req.version(),
        header("host"),
        header("x-forwarded-for"),
        header("x-forwarded-proto"),
        header("forwarded"),
    )
}

/// Binds `addr` and serves the demo page until `stop`; returns the bound address.
pub async fn serve(addr: SocketAddr, stop: CancellationToken) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = stop.cancelled() => return,
                a = listener.accept() => a,
            };
            let Ok((tcp, _)) = accepted else { continue };
            tokio::spawn(async move {
                let service = service_fn(|req: Request<Incoming>| async move {
                    let body = page(&req);
                    // The answer goes at once; the body (the page needs none of it) is read
                    // and dropped on a task of its own, as a server that lingers does. A
                    // connection closed with a body unread would be reset, and an answer still
                    // on its way to the proxy lost with it.
                    tokio::spawn(drain(req.into_body()));
                    let mut response = Response::new(Full::new(Bytes::from(body)));
                    response.headers_mut().insert(
                        header::CONTENT_TYPE,
                        header::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                    Ok::<_, std::convert::Infallible>(response)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), service)
                    .await;
            });
        }
    });
    Ok(local)
}
