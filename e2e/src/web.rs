//! A plain HTTP client for the workers' HTTP API (issue 21), as programs use it: JSON requests
//! with a bearer token, and a Server-Sent Events reader that records every event with its id,
//! so tests check what a standard SSE client would see (and resume with `Last-Event-ID`).
//! HTTP/1.1 over one TCP connection per request (hyper's client connection), nothing cached.

use bytes::Bytes;
use chatfeed_common::testing::DEADLINE;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// One answer: status, headers, body.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body as JSON (panics, showing it, when it is not).
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?}", self.status, self.body))
    }

    /// The header `name`, as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts an error answer: `status`, and the JSON body's `code`; returns its message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(
            (self.status, self.header("content-type")),
            (status, Some("application/json")),
            "expected {status} {code}, got {self:?}"
        );
        let v = self.json();
        assert_eq!(v["code"], code, "{self:?}");
        let msg = v["error"].as_str().unwrap_or_default().to_string();
        assert!(
            !msg.is_empty(),
            "an error body says what was wrong: {self:?}"
        );
        msg
    }
}

/// A request to send: method, `http://host:port` base and path, headers, body.
pub struct Call {
    req: http::request::Builder,
    body: Bytes,
    /// `https://`: the CA (PEM file) that verifies the server's certificate.
    https: bool,
    ca: Option<std::path::PathBuf>,
}

/// A request to `base` + `path` (`base` as the workers report it, `http://127.0.0.1:8080`).
pub fn call(method: &str, base: &str, path: &str) -> Call {
    let uri: http::Uri = format!("{base}{path}").parse().expect("a URL");
    let host = uri.authority().expect("a host").to_string();
    Call {
        req: http::Request::builder()
            .method(method)
            .uri(uri.path_and_query().map_or("/", |p| p.as_str()).to_string())
            .header("host", host),
        body: Bytes::new(),
        https: uri.scheme_str() == Some("https"),
        ca: None,
    }
}

impl Call {
    pub fn header(mut self, name: &str, value: &str) -> Call {
        self.req = self.req.header(name, value);
        self
    }

    /// `Authorization: Bearer <token>`.
    pub fn token(self, token: &str) -> Call {
        self.header("authorization", &format!("Bearer {token}"))
    }

    /// A JSON body (`Content-Type: application/json`).
    pub fn json(self, v: &Value) -> Call {
        self.header("content-type", "application/json")
            .raw(v.to_string().into_bytes())
    }

    /// For `https://`: verify the server with the CA certificate in `ca` (PEM).
    pub fn ca(mut self, ca: &std::path::Path) -> Call {
        self.ca = Some(ca.to_owned());
        self
    }

    /// A body as given, with no content type added.
    pub fn raw(mut self, body: Vec<u8>) -> Call {
        self.body = Bytes::from(body);
        self
    }

    /// Sends it; the whole answer (within `DEADLINE`), or why there is none.
    pub async fn send(self) -> Result<Reply, String> {
        let res = tokio::time::timeout(DEADLINE, async {
            let res = self.open().await?;
            let status = res.status().as_u16();
            let headers = res.headers().clone();
            let body = res
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("reading the body: {e}"))?
                .to_bytes();
            Ok(Reply {
                status,
                headers,
                body: String::from_utf8_lossy(&body).into_owned(),
            })
        })
        .await;
        res.unwrap_or_else(|_| Err("no answer within DEADLINE".into()))
    }

    /// `send`, which must succeed.
    pub async fn ok(self) -> Reply {
        self.send().await.expect("an HTTP answer")
    }

    /// Sends it and returns the answer with its body unread (for event streams).
    pub async fn open(self) -> Result<http::Response<Incoming>, String> {
        let req = self
            .req
            .body(Full::new(self.body))
            .map_err(|e| e.to_string())?;
        let host = req.headers()["host"].to_str().unwrap().to_string();
        let tcp = tokio::net::TcpStream::connect(&host)
            .await
            .map_err(|e| format!("connecting to {host}: {e}"))?;
        if !self.https {
            return send(tcp, req, &host).await;
        }
        let ca = self.ca.ok_or("an https:// call needs .ca(the CA file)")?;
        let name = http::Uri::try_from(format!("https://{host}"))
            .map_err(|e| e.to_string())?
            .host()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let name = rustls::pki_types::ServerName::try_from(name).map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(https_client(&ca)?)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {host}: {e}"))?;
        send(tls, req, &host).await
    }
}

/// Sends `req` on a new HTTP/1.1 connection over `io`.
async fn send<IO>(
    io: IO,
    req: http::Request<Full<Bytes>>,
    host: &str,
) -> Result<http::Response<Incoming>, String>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| format!("HTTP handshake with {host}: {e}"))?;
    tokio::spawn(conn);
    sender
        .send_request(req)
        .await
        .map_err(|e| format!("{host}: {e}"))
}

/// A TLS client trusting the CA certificates of the PEM file `ca`, speaking HTTP/1.1.
fn https_client(ca: &std::path::Path) -> Result<std::sync::Arc<rustls::ClientConfig>, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).map_err(|e| format!("{}: {e}", ca.display()))? {
        roots
            .add(cert.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(std::sync::Arc::new(config))
}

/// One Server-Sent Event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
}

impl Event {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.data)
            .unwrap_or_else(|e| panic!("event data not JSON ({e}): {self:?}"))
    }
}

/// An open event stream, read as the HTML standard's parser reads one (fields, blank-line
/// dispatch, comments ignored).
pub struct EventStream {
    body: Incoming,
    buf: String,
    /// Comments seen (keep-alives and the opening one).
    pub comments: usize,
}

impl EventStream {
    /// The stream of an answer that must be `200 text/event-stream`.
    pub fn of(res: http::Response<Incoming>) -> EventStream {
        let ctype = res
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            res.status() == 200 && ctype.starts_with("text/event-stream"),
            "not an event stream: {} {ctype}",
            res.status()
        );
        EventStream {
            body: res.into_body(),
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next event; `None` when the stream ended (or broke: a killed worker).
    pub async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event {
                    event: "message".into(),
                    ..Event::default()
                };
                let mut data = Vec::new();
                let mut any = false;
                for line in block.lines() {
                    if line.starts_with(':') {
                        self.comments += 1;
                        continue;
                    }
                    let (field, value) = line.split_once(':').unwrap_or((line, ""));
                    let value = value.strip_prefix(' ').unwrap_or(value);
                    match field {
                        "event" => (ev.event, any) = (value.to_string(), true),
                        "id" => (ev.id, any) = (Some(value.to_string()), true),
                        "data" => (data.push(value.to_string()), any = true).1,
                        _ => {}
                    }
                }
                if any && !data.is_empty() {
                    ev.data = data.join("\n");
                    return Some(ev);
                }
                continue;
            }
            match self.body.frame().await {
                Some(Ok(f)) => {
                    if let Ok(d) = f.into_data() {
                        self.buf.push_str(&String::from_utf8_lossy(&d));
                    }
                }
                _ => return None,
            }
        }
    }
}
