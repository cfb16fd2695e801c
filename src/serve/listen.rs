//! The two ways in: HTTPS (TLS 1.3; the client's chain is checked after
//! the handshake so a refusal says why) and each session's unix socket
//! (the peer's credentials from the kernel; its process must be inside
//! that session's container).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::serve::{IncomingStream, Listener};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;

use super::x509::{CaDirectory, Verified};

/// Who is at the other end of a connection, before any request.
#[derive(Debug, Clone)]
pub enum Peer {
    Tls {
        addr: std::net::SocketAddr,
        /// None: no client certificate; Err: the chain's refusal.
        chain: Option<Result<Verified, String>>,
    },
    Socket {
        container_id: String,
        owner: String,
        uid: u32,
        pid: i32,
    },
}

/// A TLS handshake may take this long; a client that stalls is dropped.
const HANDSHAKE: Duration = Duration::from_secs(10);

/// HTTPS connections, handshakes done in their own tasks so one slow
/// client never holds up the others.
pub struct TlsListener {
    rx: mpsc::Receiver<(TlsStream<TcpStream>, Peer)>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    pub fn new(
        tcp: TcpListener,
        tls: Arc<rustls::ServerConfig>,
        ca: Option<Arc<CaDirectory>>,
    ) -> std::io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        tokio::spawn(async move {
            loop {
                let (sock, addr) = match tcp.accept().await {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!("accepting a connection: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let acceptor = acceptor.clone();
                let tx = tx.clone();
                let ca = ca.clone();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(HANDSHAKE, acceptor.accept(sock)).await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::info!("TLS handshake with {addr}: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::info!("TLS handshake with {addr}: timed out");
                            return;
                        }
                    };
                    let chain = stream.get_ref().1.peer_certificates().map(|certs| {
                        match &ca {
                            Some(ca) => ca
                                .verify_chain(certs, std::time::SystemTime::now())
                                .map_err(|e| e.to_string()),
                            None => Err("this service accepts no client certificates (serve.client_ca is not set)".to_string()),
                        }
                    });
                    let _ = tx.send((stream, Peer::Tls { addr, chain })).await;
                });
            }
        });
        Ok(TlsListener { rx, local })
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            if let Some(x) = self.rx.recv().await {
                return x;
            }
            // The acceptor task ended: nothing more will come.
            std::future::pending::<()>().await;
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer::Tls {
            addr: self.local,
            chain: None,
        })
    }
}

/// One session's socket.
pub struct SessionListener {
    pub unix: UnixListener,
    pub audit: Arc<super::audit::AuditLog>,
    pub path: PathBuf,
    pub container_id: String,
    pub owner: String,
}

/// Whether process `pid` runs in the container `id`: its cgroup path
/// names the container (cgroup v1 and v2, cgroupfs and systemd drivers).
pub fn in_container(pid: i32, id: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .map(|c| c.lines().any(|l| l.contains(id)))
        .unwrap_or(false)
}

impl SessionListener {
    /// Bind `DIR/gridship.sock`, replacing a stale one; mode 0666 because
    /// the session's user is not root: who may use it is decided per
    /// connection from the kernel's credentials.
    pub fn bind(
        dir: &Path,
        container_id: &str,
        owner: &str,
        audit: Arc<super::audit::AuditLog>,
    ) -> std::io::Result<SessionListener> {
        let path = dir.join(super::sessions::SOCKET_NAME);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let unix = UnixListener::bind(&path)?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(SessionListener {
            unix,
            audit,
            path,
            container_id: container_id.to_string(),
            owner: owner.to_string(),
        })
    }

    fn check(&self, s: &UnixStream) -> Result<(u32, i32), String> {
        let cred = s
            .peer_cred()
            .map_err(|e| format!("no peer credentials: {e}"))?;
        let pid = cred.pid().ok_or("the kernel gave no peer pid")?;
        if !in_container(pid, &self.container_id) {
            return Err(format!(
                "process {pid} (uid {}) is not inside the session's container",
                cred.uid()
            ));
        }
        Ok((cred.uid(), pid))
    }
}

impl Listener for SessionListener {
    type Io = UnixStream;
    type Addr = Peer;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let s = match self.unix.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!("accepting on {}: {e}", self.path.display());
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            match self.check(&s) {
                Ok((uid, pid)) => {
                    return (
                        s,
                        Peer::Socket {
                            container_id: self.container_id.clone(),
                            owner: self.owner.clone(),
                            uid,
                            pid,
                        },
                    );
                }
                Err(why) => {
                    tracing::warn!("refused a connection on {}: {why}", self.path.display());
                    self.audit.record(
                        "-",
                        &self.container_id,
                        "connect to the session socket",
                        &format!("refused: {why}"),
                        None,
                    );
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(Peer::Socket {
            container_id: self.container_id.clone(),
            owner: self.owner.clone(),
            uid: 0,
            pid: 0,
        })
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, TlsListener>) -> Self {
        stream.remote_addr().clone()
    }
}

impl axum::extract::connect_info::Connected<IncomingStream<'_, SessionListener>> for Peer {
    fn connect_info(stream: IncomingStream<'_, SessionListener>) -> Self {
        stream.remote_addr().clone()
    }
}
