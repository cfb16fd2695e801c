//! `gridship serve`: the development node's session service, the only
//! holder of engine access. Users reach it over HTTPS (grid certificates,
//! RFC 3820 proxies, WLCG bearer tokens) or, from inside their session,
//! over the session's own unix socket (SO_PEERCRED).

pub mod api;
pub mod audit;
pub mod client;
pub mod config;
pub mod identity;
pub mod listen;
pub mod ops;
pub mod service;
pub mod sessions;
pub mod token;
pub mod x509;

use std::sync::Arc;

use crate::error::{Error, Result};

/// Run the service until it is killed: the scheduler, the sockets'
/// keeper, and HTTPS when `listen` is set.
pub async fn run(cfg: config::ServeConfig) -> Result<()> {
    let tls = match (&cfg.listen, &cfg.tls) {
        (Some(listen), Some(tls)) => Some((listen.clone(), tls.clone())),
        _ => None,
    };
    let svc = service::Service::open(cfg).await?;
    tokio::spawn(svc.clone().schedule());
    tokio::spawn(svc.clone().housekeeping());
    tokio::spawn(svc.clone().measure_sizes());
    match tls {
        Some((listen, files)) => {
            let ca = svc
                .ca
                .clone()
                .unwrap_or_else(|| Arc::new(x509::CaDirectory::empty()));
            let config = x509::server_config(ca, &files.cert, &files.key)
                .map_err(|e| Error::bad_input("serve.tls", e.to_string()))?;
            let tcp = tokio::net::TcpListener::bind(&listen)
                .await
                .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
            let listener = listen::TlsListener::new(tcp, Arc::new(config), svc.ca.clone())
                .map_err(|e| Error::io(format!("listening on {listen}"), e))?;
            tracing::info!("serving HTTPS on {listen}");
            axum::serve(
                listener,
                api::router(svc.clone()).into_make_service_with_connect_info::<listen::Peer>(),
            )
            .await
            .map_err(|e| Error::io("serving HTTPS", e))
        }
        None => {
            std::future::pending::<()>().await;
            Ok(())
        }
    }
}
